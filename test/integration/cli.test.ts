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
  let admin = '';
  const token = 't'.repeat(32);
  let root: string;
  let stdout = '';
  let exited: Promise<number | null>;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-cli-'));
    proc = spawn(process.execPath, [...CLI, 'serve', '--grace', '2000'], {
      env: {
        ...process.env,
        DLP_RELAY_LISTEN: '127.0.0.1:0',
        DLP_RELAY_ADMIN_LISTEN: '127.0.0.1:0',
        DLP_RELAY_SPOOL_DIR: join(root, 'spool'),
        DLP_RELAY_OUTBOX_DIR: join(root, 'outbox'),
        DLP_RELAY_QUARANTINE_DIR: join(root, 'quarantine'),
        DLP_RELAY_ADMIN_TOKEN: token,
      },
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
          admin = /admin: +http:\/\/(127\.0\.0\.1:\d+)/.exec(banner)![1]!;
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
    const ok = await run([
      'send',
      '--server',
      `127.0.0.1:${port}`,
      '--expect',
      'reject',
      'fixtures/card-in-body.eml',
      'fixtures/card-in-attachment.eml',
      'fixtures/cn-id-utf8.eml',
    ]);
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
    const outcome = Object.fromEntries(
      r.stdout
        .trim()
        .split('\n')
        .filter((l) => !l.startsWith(' '))
        .map((l) => [l.split(' ')[1], l.split(' ').slice(2, 4).join(' ')]),
    );
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
    const summaries = stdout
      .split('\n')
      .filter((l) => l.includes('"event":"message"'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(summaries.length).toBeGreaterThanOrEqual(4);
    for (const s of summaries) {
      expect(Object.keys(s)).toEqual(
        expect.arrayContaining([
          'event',
          'cid',
          'queryId',
          'client',
          'helo',
          'sender',
          'to',
          'messageId',
          'size',
          'actionCode',
          'action',
          'reply',
          'replyClass',
          'dlpMs',
          'relayMs',
          'totalMs',
        ]),
      );
      // The recipient count and refused list were replaced by one entry per recipient with the reply it got at RCPT.
      expect(s).not.toHaveProperty('rcpts');
      expect(s).not.toHaveProperty('refusedRecipients');
      const to = s['to'] as Array<Record<string, unknown>>;
      expect(to.length).toBeGreaterThan(0);
      for (const t of to) expect(t).toEqual({ address: expect.stringMatching(/@/), reply: expect.stringMatching(/^\d{3} \d\.\d{1,3}\.\d{1,3} /) });
    }
  });

  it('quarantine list, show and release work from the CLI through the relay; a second release does not deliver again', async () => {
    // No store or outbox variables in this shell: the relay's own store and delivery path are used.
    const env = { DLP_RELAY_ADMIN_LISTEN: admin, DLP_RELAY_ADMIN_TOKEN: token, DLP_RELAY_LOG_LEVEL: 'warn' };
    const sent = await run(['send', '--server', `127.0.0.1:${port}`, '--expect', 'accept', 'fixtures/quoted-printable.eml']);
    const id = /ref ([0-9a-f-]{36})/.exec(sent.stdout)![1]!;
    const list = await run(['quarantine', 'list', '--json'], env);
    expect(list.code).toBe(0);
    expect(list.stderr).toContain(`relay: http://${admin}`);
    const items = (JSON.parse(list.stdout) as { items: Array<{ id: string; actionCode: number }> }).items;
    expect(items.find((i) => i.id === id)).toMatchObject({ actionCode: 6 });
    const show = await run(['quarantine', 'show', id], env);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain('IBAN');
    const before = readdirSync(join(root, 'outbox')).filter((f) => f.endsWith('.eml')).length;
    const rel = await run(['quarantine', 'release', id.slice(0, 8)], env);
    expect(rel.code).toBe(0);
    expect(rel.stdout).toMatch(/^accepted {2}\S+@\S+ +250 /);
    expect(rel.stdout).toMatch(new RegExp(`(^|\\n)${id}: released completely\\n$`));
    expect(readdirSync(join(root, 'outbox')).filter((f) => f.endsWith('.eml')).length).toBe(before + 1);
    const again = await run(['quarantine', 'release', id], env);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(new RegExp(`(^|\\n)dlp-relay: quarantine: ${id}: already released at \\S+ by [^;]+; not delivered again\\n$`));
    expect(readdirSync(join(root, 'outbox')).filter((f) => f.endsWith('.eml')).length).toBe(before + 1);
    const unknown = await run(['quarantine', 'show', '00000000-0000-4000-8000-000000000000'], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('dlp-relay: quarantine: no quarantined message with id "00000000-0000-4000-8000-000000000000"\n');
    // README: an unknown id exits 1, even one that is not shaped like an id.
    const nonexistent = await run(['quarantine', 'show', 'nonexistent'], env);
    expect(nonexistent.code).toBe(1);
    expect(nonexistent.stderr).toContain('dlp-relay: quarantine: no quarantined message with id "nonexistent" (ids are UUIDs)\n');
    const traversal = await run(['quarantine', 'show', '../../etc/passwd'], env);
    expect(traversal.code).toBe(1);
    expect(traversal.stderr).toContain('dlp-relay: quarantine: no quarantined message with id "../../etc/passwd"');
  }, 90_000); // seven CLI processes, each a cold tsx start: slow on a loaded machine

  it('stops on SIGTERM with exit code 0', async () => {
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('dlp-relay cas', () => {
  it('block pushes to the CAS blocked lists and refuses bad values with exit 2', async () => {
    const { startCasSim } = await import('../sim/cas/server.js');
    const token = 'c'.repeat(40);
    const sim = await startCasSim({ token });
    try {
      const env = { DLP_RELAY_CAS_URL: sim.url, DLP_RELAY_CAS_TOKEN: token };
      const ok = await run(['cas', 'block', '--sender', 'leaker@example.test', '--sha256', 'a'.repeat(64)], env);
      expect(ok.code).toBe(0);
      expect(sim.list('senders')).toContain('leaker@example.test');
      const bad = await run(['cas', 'block', '--sender', 'not-an-address', '--sha1', 'xyz'], env);
      expect(bad.code).toBe(2);
      expect(bad.stdout + bad.stderr).toContain('not-an-address');
      expect(bad.stdout + bad.stderr).toContain('xyz');
      const noToken = await run(['cas', 'list'], { DLP_RELAY_CAS_URL: sim.url });
      expect(noToken.code).toBe(2);
      expect(noToken.stderr).toContain('DLP_RELAY_CAS_TOKEN');
      const invalid = await run(
        ['cas', 'mitigate', '--action', 'MAIL_RESTORE', '--service', 'gmail', '--mailbox', 'a@example.test', '--message-id', '<x@y>'],
        env,
      );
      expect(invalid.code).toBe(2);
    } finally {
      await sim.close();
    }
  });
});

describe('dlp-relay check-config and usage errors', () => {
  it('prints the effective config with secrets masked', async () => {
    const r = await run(['check-config'], {
      DLP_RELAY_UCWI_URL: 'https://ucwi.example.test:5443',
      DLP_RELAY_UCWI_ACCESS_KEY: 'AK-visible',
      DLP_RELAY_UCWI_SECRET_KEY: 'SK-must-not-print',
    });
    expect(r.code).toBe(0);
    const cfg = JSON.parse(r.stdout) as { ucwi: { url: string }; secrets: Record<string, string> };
    expect(cfg.ucwi.url).toBe('https://ucwi.example.test:5443');
    expect(r.stdout).not.toContain('SK-must-not-print');
    expect(cfg.secrets['ucwiSecretKey']).toBe('********');
  });

  it('lists every config problem with its path and who set it, and exits 1', async () => {
    const r = await run(['check-config'], { DLP_RELAY_LISTEN: 'nope', DLP_RELAY_ON_DLP_ERROR: 'explode', DLP_RELAY_ALLOWED_CLIENTS: '300.1.1.1' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^dlp-relay: invalid configuration:/);
    expect(r.stderr).toContain('(set by DLP_RELAY_ON_DLP_ERROR)');
    expect(r.stderr).toContain('DLP_RELAY_LISTEN: expected host:port');
    expect(r.stderr).toContain('policy.onDlpError:');
    expect(r.stderr).toContain('smtp.allowedClients.0:');
  });

  it('send exits 2 for a missing file', async () => {
    const r = await run(['send', '--server', '127.0.0.1:9', 'no/such/file.eml']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/(^|\n)dlp-relay: send: .*no\/such\/file\.eml/);
  });

  it('an unknown command or option exits 2, in the common error style', async () => {
    const cmd = await run(['frobnicate']);
    expect(cmd.code).toBe(2);
    expect(cmd.stderr).toMatch(/^dlp-relay: unknown command 'frobnicate'/);
    const opt = await run(['quarantine', 'list', '--no-such-option']);
    expect(opt.code).toBe(2);
    expect(opt.stderr).toMatch(/^dlp-relay: unknown option '--no-such-option'/);
  });
});
