// Runs `dlp-relay serve` as a real child process (for SIGKILL and SIGTERM tests), waits for its banner and keeps its JSON log lines.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { SIM_KEYS } from './chain.js';

const CLI = ['--import', 'tsx', 'src/cli/main.ts'];

export interface CliRelay {
  proc: ChildProcess;
  /** SMTP port read from the banner. */
  port: number;
  /** Resolves with how the process ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
  /** Parsed JSON log lines written so far (stdout). */
  logs(): Array<Record<string, unknown>>;
  /** SIGKILL if still running; safe to call twice. */
  kill(signal?: NodeJS.Signals): void;
}

/** Environment for a relay process: loopback port 0 for SMTP and admin, directories under `root`, the given next hop and UCWI simulator. */
export function relayEnv(root: string, sinkPort: number, ucwiUrl: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    DLP_RELAY_LISTEN: '127.0.0.1:0',
    DLP_RELAY_ADMIN_LISTEN: '127.0.0.1:0',
    DLP_RELAY_NEXT_HOP: `127.0.0.1:${sinkPort}`,
    DLP_RELAY_UCWI_URL: ucwiUrl,
    DLP_RELAY_UCWI_ACCESS_KEY: SIM_KEYS.accessKey,
    DLP_RELAY_UCWI_SECRET_KEY: SIM_KEYS.secretKey,
    DLP_RELAY_SPOOL_DIR: join(root, 'spool'),
    DLP_RELAY_QUARANTINE_DIR: join(root, 'quarantine'),
    DLP_RELAY_OUTBOX_DIR: join(root, 'outbox'),
    ...extra,
  };
}

/** Starts the relay with these environment variables (over the test process's own) and waits for "listening on". */
export async function spawnRelay(env: Record<string, string>, args: string[] = [], bootMs = 30_000): Promise<CliRelay> {
  const proc = spawn(process.execPath, [...CLI, 'serve', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('close', (code, signal) => resolve({ code, signal })),
  );
  const kill = (signal: NodeJS.Signals = 'SIGKILL'): void => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
  };
  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => {
      kill();
      reject(new Error(`relay did not start within ${bootMs} ms; stderr: ${err}`));
    }, bootMs);
    const check = (): void => {
      const m = /dlp-relay listening on 127\.0\.0\.1:(\d+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      }
    };
    proc.stderr.on('data', check);
    void exited.then((e) => {
      clearTimeout(t);
      reject(new Error(`relay exited during start (${e.code ?? e.signal}); stderr: ${err}`));
    });
  });
  return {
    proc,
    port,
    exited,
    stdout: () => out,
    stderr: () => err,
    logs: () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => {
          try {
            return JSON.parse(l) as Record<string, unknown>;
          } catch {
            return { unparsed: l };
          }
        }),
    kill,
  };
}
