// HAProxy in front of relays for tests: a real `haproxy` process (mode tcp, send-proxy-v2, httpchk on /readyz), free loopback ports, and an MTA-like client that retries 4xx.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { PeerClient } from './smtp-peer-client.js';
import { dotStuff } from './smtp-peer-wire.js';

export function haproxyAvailable(): boolean {
  return spawnSync('haproxy', ['-v'], { stdio: 'ignore' }).status === 0;
}

/** A port free right now on 127.0.0.1 (for processes that must come back on the same port after a restart). */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export interface Backend {
  name: string;
  smtpPort: number;
  adminPort: number;
}

/**
 * The configuration README "Running several relays" documents: TCP mode, PROXY v2 to each relay, a
 * health check on the relay's /readyz (admin port), redispatch when a relay refuses the connection.
 */
export function haproxyConfig(frontPort: number, backends: readonly Backend[], o: { interMs?: number; fall?: number; rise?: number } = {}): string {
  const inter = o.interMs ?? 300;
  return [
    'global',
    '  maxconn 2000',
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  retries 3',
    '  option redispatch 1',
    'frontend smtp',
    `  bind 127.0.0.1:${frontPort}`,
    '  default_backend relays',
    'backend relays',
    '  balance roundrobin',
    '  option httpchk GET /readyz',
    '  http-check expect status 200',
    ...backends.map(
      (b) => `  server ${b.name} 127.0.0.1:${b.smtpPort} send-proxy-v2 check port ${b.adminPort} inter ${inter} fall ${o.fall ?? 2} rise ${o.rise ?? 2}`,
    ),
    '',
  ].join('\n');
}

export interface Haproxy {
  proc: ChildProcess;
  stderr(): string;
  close(): Promise<void>;
}

export async function startHaproxy(dir: string, config: string): Promise<Haproxy> {
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  const check = spawnSync('haproxy', ['-c', '-f', file], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`haproxy rejects its configuration: ${check.stdout}${check.stderr}`);
  const proc = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<void>((r) => proc.on('close', () => r()));
  return {
    proc,
    stderr: () => err,
    async close() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    },
  };
}

/** One attempt's outcome, as an MTA sees it. `ambiguous`: deferred after the final dot went out (no reply, or a 4xx). */
export type Attempt = { kind: 'accepted' | 'rejected' | 'deferred'; reply: string; ambiguous: boolean };

/**
 * One SMTP transaction from `localAddress` (a loopback alias, so the PROXY header's address differs from
 * HAProxy's own). Any 4xx, timeout or lost connection is `deferred` (the caller retries, as an MTA does).
 */
export async function mtaAttempt(port: number, localAddress: string, from: string, to: string, data: string, stepMs = 15_000): Promise<Attempt> {
  let c: PeerClient | null = null;
  let dotSent = false;
  try {
    c = await PeerClient.open(port, { localAddress, encoding: 'latin1' });
    const s = c;
    /** The last line of the next reply; '' when none came (closed or timed out). */
    const reply = async (): Promise<string> => (await s.next(stepMs))?.split('\n').pop() ?? '';
    const step = async (line: string | Buffer | null, ok: RegExp): Promise<Attempt | null> => {
      if (line !== null) s.write(line);
      const r = await reply();
      if (ok.test(r)) return null;
      if (/^5/.test(r)) return { kind: 'rejected', reply: r, ambiguous: false };
      // After the final dot a deferral is SMTP's documented window: the relay may have relayed it already.
      return { kind: 'deferred', reply: r || '(no reply)', ambiguous: dotSent };
    };
    const steps: Array<[string | null, RegExp]> = [
      [null, /^220 /],
      ['EHLO mta.example.test\r\n', /^250 /],
      [`MAIL FROM:<${from}>\r\n`, /^250 /],
      [`RCPT TO:<${to}>\r\n`, /^250 /],
      ['DATA\r\n', /^354 /],
    ];
    for (const [line, ok] of steps) {
      const a = await step(line, ok);
      if (a) return a;
    }
    dotSent = true;
    const final = await step(Buffer.concat([dotStuff(data), Buffer.from('\r\n.\r\n')]), /^250 /);
    if (final) return final;
    s.write('QUIT\r\n');
    return { kind: 'accepted', reply: '250', ambiguous: false };
  } catch (err) {
    return { kind: 'deferred', reply: (err as Error).message, ambiguous: dotSent };
  } finally {
    c?.destroy();
  }
}
