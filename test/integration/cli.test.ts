// The CLI as a user runs it: serve on embedded defaults, send fixtures through it, check-config errors and masking, SIGTERM.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CLI = ['--import', 'tsx', 'src/cli/main.ts'];

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('dlp-relay serve on embedded defaults', () => {
  let proc: ChildProcess;
  let port = 0;
  let root: string;
  let stdout = '';
  let exited: Promise<number | null>;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-cli-'));
    proc = spawn(process.execPath, [...CLI, 'serve', '--grace', '2000'], {
      env: { ...process.env, DLP_RELAY_LISTEN: '127.0.0.1:0', DLP_RELAY_ADMIN_LISTEN: '127.0.0.1:0', DLP_RELAY_SPOOL_DIR: join(root, 'spool'), DLP_RELAY_OUTBOX_DIR: join(root, 'outbox'), DLP_RELAY_QUARANTINE_DIR: join(root, 'quarantine') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    exited = new Promise((r) => proc.on('close', r));
    proc.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    let banner = '';
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no banner: ${banner}`)), 20_000);
      proc.stderr!.on('data', (c: Buffer) => {
        banner += c.toString();
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(banner);
        if (m && banner.includes('WARNING')) {
          port = Number(m[1]);
          clearTimeout(t);
          resolve();
        }
      });
    });
    expect(banner).toContain('embedded engine at http://127.0.0.1:');
    expect(banner).toContain(`local outbox ${join(root, 'outbox')}`);
    expect(banner).toMatch(/WARNING: the embedded DLP engine is for trials only/);
  });

  afterAll(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  });

  it('send prints one line per fixture with the final reply and honours --expect', async () => {
    const ok = await run(['send', '--server', `127.0.0.1:${port}`, '--expect', 'reject', 'fixtures/card-in-body.eml', 'fixtures/card-in-attachment.eml', 'fixtures/cn-id-utf8.eml']);
    expect(ok.code).toBe(0);
    const lines = ok.stdout.trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(l).toMatch(/^reject fixtures\/\S+\.eml 550 5\.7\.1 Message rejected by data-loss-prevention policy \(ref [0-9a-f-]{36}\)$/);

    const mismatch = await run(['send', '--server', `127.0.0.1:${port}`, '--expect', 'reject', 'fixtures/clean.eml']);
    expect(mismatch.code).toBe(1);
    expect(mismatch.stdout).toMatch(/^accept fixtures\/clean\.eml 250 2\.0\.0 Ok: stored in local outbox/);
  });

  it('the whole corpus gets its documented verdicts', async () => {
    const r = await run(['send', '--server', `127.0.0.1:${port}`, 'fixtures/']);
    expect(r.code).toBe(0);
    const outcome = Object.fromEntries(r.stdout.trim().split('\n').filter((l) => !l.startsWith(' ')).map((l) => [l.split(' ')[1], l.split(' ').slice(2, 4).join(' ')]));
    expect(outcome).toMatchObject({
      'fixtures/clean.eml': '250 2.0.0',
      'fixtures/card-in-body.eml': '550 5.7.1',
      'fixtures/card-in-attachment.eml': '550 5.7.1',
      'fixtures/cn-id-utf8.eml': '550 5.7.1',
      'fixtures/quoted-printable.eml': '250 2.0.0',
      'fixtures/raw-8bit.eml': '250 2.0.0',
      'fixtures/many-recipients.eml': '250 2.0.0',
    });
    expect(r.stdout).toMatch(/quoted-printable\.eml 250 2\.0\.0 Ok: message held for review/);
    expect(readdirSync(join(root, 'quarantine')).filter((f) => f.endsWith('.eml')).length).toBeGreaterThanOrEqual(1);
  });

  it('logs one JSON summary line per message', () => {
    const summaries = stdout.split('\n').filter((l) => l.includes('"event":"message"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(summaries.length).toBeGreaterThanOrEqual(4);
    for (const s of summaries) expect(Object.keys(s)).toEqual(expect.arrayContaining(['queryId', 'sender', 'rcpts', 'size', 'actionCode', 'action', 'reply', 'dlpMs', 'relayMs']));
  });

  it('stops on SIGTERM with exit code 0', async () => {
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('dlp-relay check-config and usage errors', () => {
  it('prints the effective config with secrets masked', async () => {
    const r = await run(['check-config'], { DLP_RELAY_UCWI_URL: 'https://ucwi.example.test:5443', DLP_RELAY_UCWI_ACCESS_KEY: 'AK-visible', DLP_RELAY_UCWI_SECRET_KEY: 'SK-must-not-print' });
    expect(r.code).toBe(0);
    const cfg = JSON.parse(r.stdout) as { ucwi: { url: string }; secrets: Record<string, string> };
    expect(cfg.ucwi.url).toBe('https://ucwi.example.test:5443');
    expect(r.stdout).not.toContain('SK-must-not-print');
    expect(cfg.secrets['ucwiSecretKey']).toBe('********');
  });

  it('lists every config problem with its path and exits 2', async () => {
    const r = await run(['check-config'], { DLP_RELAY_LISTEN: 'nope', DLP_RELAY_ON_DLP_ERROR: 'explode', DLP_RELAY_ALLOWED_CLIENTS: '300.1.1.1' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('DLP_RELAY_LISTEN: expected host:port');
    expect(r.stderr).toContain('policy.onDlpError:');
    expect(r.stderr).toContain('smtp.allowedClients.0:');
  });

  it('send exits 2 for a missing file', async () => {
    const r = await run(['send', '--server', '127.0.0.1:9', 'no/such/file.eml']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('no/such/file.eml');
  });

  it('an unknown command exits 2', async () => {
    expect((await run(['frobnicate'])).code).toBe(2);
  });
});
