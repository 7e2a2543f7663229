// Run like a daemon: the relay started from an unrelated directory with a config of relative paths, the CLI from a third directory reaching the same quarantine through the running relay, and SIGHUP/`reload` under loopback load.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { sendMessage, message, eventually } from '../helpers/chain.js';

const TSX = import.meta.resolve('tsx');
const MAIN = resolve('src/cli/main.ts');
const IBAN_MAIL = readFileSync('fixtures/quoted-printable.eml', 'utf8');
const TOKEN = 'daemon-test-token-0123456789abcdef';

/** The test process's own DLP_RELAY_* variables must not leak into the children: only the config file speaks. */
function cleanEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('DLP_RELAY_')) env[k] = v;
  return { ...env, ...extra };
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

function cli(cwd: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, ['--import', TSX, MAIN, ...args], { cwd, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('error', rej);
    p.on('close', (code) => {
      clearTimeout(t);
      res({ code, stdout, stderr });
    });
  });
}

const configText = (adminPort: number, policy = '') =>
  [
    '# test relay: every path relative to this file',
    'listen: { host: 127.0.0.1, port: 0 }',
    `admin: { host: 127.0.0.1, port: ${adminPort} }`,
    'stateDir: state',
    'quarantine:',
    '  dir: held',
    policy,
  ].join('\n') + '\n';

describe('dlp-relay as a daemon', () => {
  let root: string;
  let relayCwd: string;
  let confDir: string;
  let cliCwd: string;
  let confFile: string;
  let adminPort = 0;
  let proc: ChildProcess;
  let port = 0;
  let out = '';
  let exited: Promise<number | null>;
  const cliEnv = () => ({ DLP_RELAY_CONFIG: '../conf/dlp-relay.yaml', DLP_RELAY_ADMIN_TOKEN: TOKEN });
  const logs = () =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const waitLog = async (pred: (l: Record<string, unknown>) => boolean, boundMs = 15_000) => {
    const until = Date.now() + boundMs;
    while (!logs().some(pred)) {
      if (Date.now() > until) throw new Error(`log line not seen within ${boundMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-daemon-'));
    [relayCwd, confDir, cliCwd] = ['relay-cwd', 'conf', 'cli-cwd'].map((d) => join(root, d)) as [string, string, string];
    for (const d of [relayCwd, confDir, cliCwd]) mkdirSync(d);
    confFile = join(confDir, 'dlp-relay.yaml');
    adminPort = await freePort();
    writeFileSync(confFile, configText(adminPort));
    proc = spawn(process.execPath, ['--import', TSX, MAIN, '--config', '../conf/dlp-relay.yaml', 'serve', '--grace', '2000'], {
      cwd: relayCwd,
      env: cleanEnv({ DLP_RELAY_ADMIN_TOKEN: TOKEN }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    exited = new Promise((r) => proc.on('close', r));
    proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    let banner = '';
    await new Promise<void>((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no banner: ${banner}`)), 30_000);
      proc.stderr!.on('data', (c: Buffer) => {
        banner += c.toString();
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(banner);
        if (m && banner.includes('admin:')) {
          port = Number(m[1]);
          clearTimeout(t);
          res();
        }
      });
      void exited.then(() => rej(new Error(`relay exited: ${banner}`)));
    });
    expect(banner).toContain(`config:     ${confFile} (--config); state in ${join(confDir, 'state')}`);
  });

  afterAll(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  });

  it('keeps its data beside the config file, and the CLI from a third directory finds it through the relay', async () => {
    const sent = await sendMessage(port, IBAN_MAIL);
    expect(sent.data).toMatch(/^250 .*held for review/);
    const id = /ref ([0-9a-f-]{36})/.exec(sent.data)![1]!;
    expect(readdirSync(join(confDir, 'held')).some((f) => f.startsWith(id))).toBe(true);

    const list = await cli(cliCwd, ['quarantine', 'list', '--json'], cliEnv());
    expect(list.code).toBe(0);
    expect(list.stderr).toContain(`relay: http://127.0.0.1:${adminPort} (config ${confFile})`);
    expect((JSON.parse(list.stdout) as { items: Array<{ id: string }> }).items.map((i) => i.id)).toContain(id);

    const show = await cli(cliCwd, ['quarantine', 'show', id.slice(0, 8)], cliEnv());
    expect(show.code).toBe(0);
    expect(show.stdout).toContain(`id:            ${id}`);

    const status = await cli(cliCwd, ['status', '--json'], cliEnv());
    const s = JSON.parse(status.stdout) as { version: string; held: number; configFile: string; sessions: number };
    expect(s).toMatchObject({ version: '0.1.0', held: 1, configFile: confFile });

    const dry = await cli(cliCwd, ['quarantine', 'purge', '--older-than-days', '0', '--dry-run', '--json'], cliEnv());
    expect(dry.code).toBe(0);
    expect((JSON.parse(dry.stdout) as { ids: string[] }).ids).toEqual([id]);
    expect(readdirSync(join(confDir, 'held')).some((f) => f.startsWith(id))).toBe(true);

    const deleted = await cli(cliCwd, ['quarantine', 'list', '--status', 'deleted'], cliEnv());
    expect(deleted.code).toBe(2);
    expect(deleted.stderr).toContain('quarantine audit --action delete');

    // Nothing appeared in the working directories of the relay or the CLI.
    expect(readdirSync(relayCwd)).toEqual([]);
    expect(readdirSync(cliCwd)).toEqual([]);
    expect(existsSync(join(confDir, 'state', 'outbox'))).toBe(true);
  });

  it('SIGHUP under load applies a new policy to the next message with no session error; an invalid file is refused and the old policy stays', async () => {
    let stop = false;
    const replies: string[] = [];
    // Bounded loopback load: 4 senders, at most 25 messages each, while the reload happens.
    const load = Array.from({ length: 4 }, async (_, i) => {
      for (let n = 0; n < 25 && !stop; n++) replies.push((await sendMessage(port, message(`load ${i}.${n}`))).data);
    });
    // The reload lands in the middle of the load: some replies before it, more after it (counts, not a timer).
    await eventually(() => replies.length >= 4, 20_000);
    writeFileSync(confFile, configText(adminPort, 'policy:\n  actions:\n    "6": { action: reject, code: 550, enhanced: "5.7.1" }'));
    proc.kill('SIGHUP');
    await waitLog((l) => l['event'] === 'reloaded');
    expect((await sendMessage(port, IBAN_MAIL)).data).toMatch(/^550 5\.7\.1 /);
    const atReload = replies.length;
    await eventually(() => replies.length >= Math.min(atReload + 4, 100), 20_000);
    stop = true;
    await Promise.all(load);
    expect(replies.length).toBeGreaterThan(4);
    for (const r of replies) expect(r).toMatch(/^250 /);
    expect(logs().find((l) => l['event'] === 'reloaded')).toMatchObject({ trigger: 'SIGHUP', applied: ['policy.actions.6'] });

    writeFileSync(confFile, configText(adminPort, 'policy:\n  onDlpError: explode'));
    proc.kill('SIGHUP');
    await waitLog((l) => l['event'] === 'reload-refused');
    expect(proc.exitCode).toBeNull();
    expect((await sendMessage(port, IBAN_MAIL)).data).toMatch(/^550 5\.7\.1 /);

    // Given address and token, the CLI needs no config of its own: the relay itself reports the bad file.
    writeFileSync(join(root, 'token'), TOKEN);
    const refused = await cli(cliCwd, ['reload', '--server', `127.0.0.1:${adminPort}`, '--token-file', '../token'], {});
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('the new configuration was refused; the relay keeps running on the old one');
    expect(refused.stderr).toContain(`policy.onDlpError`);
    expect(refused.stderr).toContain(`(set by ${confFile}:8)`);

    writeFileSync(confFile, configText(adminPort));
    const ok = await cli(cliCwd, ['reload'], cliEnv());
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('reloaded: policy.actions.6');
    expect((await sendMessage(port, IBAN_MAIL)).data).toMatch(/^250 .*held for review/);
  });

  it('stops on SIGTERM with exit code 0', async () => {
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
