// Config loading: defaults, env overrides, secrets only from env/files, every problem listed with its path, frozen result.
import { describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testTempDir } from '../helpers/tmp.js';
import { loadConfig, maskedConfig, ConfigError, DEFAULT_CONFIG_FILE } from '../../src/config/load.js';

function problemsOf(fn: () => unknown): Array<{ path: string; message: string }> {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('config/default.yaml is valid and equals the built-in defaults', () => {
    const fromFile = loadConfig({ file: DEFAULT_CONFIG_FILE, env: {} });
    const builtIn = loadConfig({ file: '/dev/null', env: {} });
    expect(fromFile).toEqual(builtIn);
    expect(fromFile.listen).toEqual({ host: '127.0.0.1', port: 2525 });
    expect(fromFile.ucwi.url).toBeNull();
    expect(fromFile.nextHop.host).toBeNull();
  });

  it('config/default.yaml lists every key the schema knows (every key documented)', async () => {
    const { parse } = await import('yaml');
    const { readFileSync } = await import('node:fs');
    const keys = (o: Record<string, unknown>, p = ''): string[] =>
      Object.entries(o).flatMap(([k, v]) => {
        const q = p ? `${p}.${k}` : k;
        return v && typeof v === 'object' && !Array.isArray(v) && q !== 'policy.actions' ? keys(v as Record<string, unknown>, q) : [q];
      });
    const inFile = new Set(keys(parse(readFileSync(DEFAULT_CONFIG_FILE, 'utf8')) as Record<string, unknown>));
    const known = keys(loadConfig({ file: '/dev/null', env: {} }) as unknown as Record<string, unknown>).filter((k) => !k.startsWith('secrets.'));
    expect(known.filter((k) => !inFile.has(k))).toEqual([]);
  });

  it('applies every documented environment variable', () => {
    const c = loadConfig({
      file: '/dev/null',
      env: {
        DLP_RELAY_LISTEN: '0.0.0.0:25',
        DLP_RELAY_NEXT_HOP: 'mx.example.test:2526',
        DLP_RELAY_UCWI_URL: 'https://ucwi.example.test:5443',
        DLP_RELAY_UCWI_ACCESS_KEY: 'ak',
        DLP_RELAY_UCWI_SECRET_KEY: 'sk',
        DLP_RELAY_UCWI_TIMEOUT_MS: '1500',
        DLP_RELAY_ON_DLP_ERROR: 'quarantine',
        DLP_RELAY_QUARANTINE_DIR: '/q',
        DLP_RELAY_OUTBOX_DIR: '/o',
        DLP_RELAY_ALLOWED_CLIENTS: '10.0.0.0/8, 192.0.2.7',
        DLP_RELAY_MAX_MESSAGE_BYTES: '1048576',
      },
    });
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 25 });
    expect(c.nextHop).toMatchObject({ host: 'mx.example.test', port: 2526 });
    expect(c.ucwi.url).toBe('https://ucwi.example.test:5443');
    expect(c.secrets).toMatchObject({ ucwiAccessKey: 'ak', ucwiSecretKey: 'sk' });
    expect(c.ucwi.timeouts.deadlineMs).toBe(1500);
    expect(c.policy.onDlpError).toBe('quarantine');
    expect(c.quarantine.dir).toBe('/q');
    expect(c.outbox.dir).toBe('/o');
    expect(c.smtp.allowedClients).toEqual(['10.0.0.0/8', '192.0.2.7']);
    expect(c.smtp.maxMessageBytes).toBe(1048576);
  });

  it('reads secrets from *_FILE variables', () => {
    const dir = testTempDir('cfg-');
    writeFileSync(join(dir, 'sk'), 'from-file\n');
    const c = loadConfig({
      file: '/dev/null',
      env: { DLP_RELAY_UCWI_URL: 'http://127.0.0.1:1', DLP_RELAY_UCWI_ACCESS_KEY: 'ak', DLP_RELAY_UCWI_SECRET_KEY_FILE: join(dir, 'sk') },
    });
    expect(c.secrets.ucwiSecretKey).toBe('from-file');
  });

  it('lists every problem with its path', () => {
    const dir = testTempDir('cfg-');
    const file = join(dir, 'bad.yaml');
    writeFileSync(
      file,
      [
        'listen: { host: "", port: 70000 }',
        'smtp: { maxClients: 0, allowedClients: ["10.0.0.0/33", "not-an-ip"], tls: { require: true } }',
        'policy: { onDlpError: explode, actions: { "2": { action: reject, code: 451 } }, verdictHeaders: { queryId: "Bad Header" } }',
        'ucwi: { url: "ftp://x", timeouts: { deadlineMs: -1 } }',
        'typo: 1',
        'secrets: { ucwiSecretKey: "in-the-file" }',
      ].join('\n'),
    );
    const paths = problemsOf(() => loadConfig({ file, env: { DLP_RELAY_LISTEN: 'nonsense' } })).map((p) => p.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'secrets',
        'DLP_RELAY_LISTEN',
        'listen.host',
        'listen.port',
        'smtp.maxClients',
        'smtp.tls.require',
        'policy.onDlpError',
        'policy.actions.2.code',
        'policy.verdictHeaders.queryId',
        'ucwi.url',
        'ucwi.timeouts.deadlineMs',
        '(root)',
      ]),
    );
  });

  it('checks CIDRs after the schema', () => {
    const problems = problemsOf(() => loadConfig({ file: '/dev/null', env: { DLP_RELAY_ALLOWED_CLIENTS: '10.0.0.0/8,10.0.0.0/33,foo' } }));
    expect(problems.map((p) => p.path)).toEqual(['smtp.allowedClients.1', 'smtp.allowedClients.2']);
  });

  it('requires keys for a real UCWI server', () => {
    const problems = problemsOf(() => loadConfig({ file: '/dev/null', env: { DLP_RELAY_UCWI_URL: 'https://ucwi.example.test' } }));
    expect(problems).toEqual([{ path: 'ucwi.url', origin: 'DLP_RELAY_UCWI_URL', message: expect.stringContaining('DLP_RELAY_UCWI_ACCESS_KEY') }]);
  });

  it('smtp.workers: DLP_RELAY_WORKERS sets it; with CAS it needs the pg outbox, and 0 is refused', () => {
    expect(loadConfig({ file: '/dev/null', env: { DLP_RELAY_WORKERS: '4' } }).smtp.workers).toBe(4);
    expect(loadConfig({ file: '/dev/null', env: {} }).smtp.workers).toBe(1);
    const cas = { DLP_RELAY_WORKERS: '2', DLP_RELAY_CAS_TOKEN: 't', DLP_RELAY_CAS_URL: 'http://127.0.0.1:1' };
    const file = join(testTempDir('cfg-'), 'c.yaml');
    writeFileSync(file, 'cas:\n  enabled: true\n  exemptDomains: [ourcorp.test]\n');
    expect(problemsOf(() => loadConfig({ file, env: cas }))).toEqual([
      { path: 'smtp.workers', origin: 'DLP_RELAY_WORKERS', message: expect.stringContaining('cas.outbox.backend: pg') },
    ]);
    expect(problemsOf(() => loadConfig({ file: '/dev/null', env: { DLP_RELAY_WORKERS: '0' } })).map((p) => p.path)).toEqual(['smtp.workers']);
  });

  it('freezes the result and masks secrets for printing', () => {
    const c = loadConfig({
      file: '/dev/null',
      env: {
        DLP_RELAY_UCWI_URL: 'http://127.0.0.1:1',
        DLP_RELAY_UCWI_ACCESS_KEY: 'ak',
        DLP_RELAY_UCWI_SECRET_KEY: 'very-secret',
        DLP_RELAY_QUARANTINE_URL: 'postgres://u:pw@db/x',
      },
    });
    expect(Object.isFrozen(c.smtp.allowedClients)).toBe(true);
    expect(() => {
      (c.listen as { port: number }).port = 1;
    }).toThrow();
    const printed = JSON.stringify(maskedConfig(c));
    expect(printed).not.toContain('very-secret');
    expect(printed).not.toContain(':pw@');
    expect(printed).toContain('postgres://u:********@db/x');
  });

  it('reviewer digests need the console and at least one recipient', () => {
    const overrides = { console: { digest: { enabled: true } } };
    expect(problemsOf(() => loadConfig({ file: '/dev/null', env: {}, overrides })).map((p) => p.path)).toEqual([
      'console.digest.enabled',
      'console.digest.recipients',
    ]);
    const ok = loadConfig({
      file: '/dev/null',
      env: {},
      overrides: { console: { enabled: true, digest: { enabled: true, interval: 'hourly', recipients: ['rita@corp.example'] } } },
    });
    expect(ok.console.digest).toMatchObject({
      enabled: true,
      interval: 'hourly',
      dailyHourUtc: 7,
      recipients: ['rita@corp.example'],
      publicUrl: null,
      maxItems: 200,
    });
    expect(
      problemsOf(() => loadConfig({ file: '/dev/null', env: {}, overrides: { console: { digest: { recipients: ['not an address'] } } } })).map((p) => p.path),
    ).toEqual(['console.digest.recipients.0']);
  });
});
