// Config discovery and provenance: one file found the same way by every command, relative paths anchored to their file (or the state directory), and every problem or changed value naming who set it.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, loadConfigDetailed, loadForAdmin, changedValues, ConfigError, PACKAGE_ROOT } from '../../src/config/load.js';

const root = mkdtempSync(join(tmpdir(), 'dlp-cfgsrc-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function problemsOf(fn: () => unknown): ConfigError['problems'] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('config discovery', () => {
  const etc = join(root, 'etc', 'dlp-relay.yaml');
  mkdirSync(join(root, 'etc'));
  writeFileSync(etc, 'smtp:\n  hostname: from-system-file\n');

  it('--config beats DLP_RELAY_CONFIG, which beats the system file, which beats the built-in defaults', () => {
    const named = join(root, 'named.yaml');
    writeFileSync(named, 'smtp:\n  hostname: from-named-file\n');
    const env = join(root, 'env.yaml');
    writeFileSync(env, 'smtp:\n  hostname: from-env-file\n');
    expect(loadConfigDetailed({ file: named, env: { DLP_RELAY_CONFIG: env }, systemFile: etc })).toMatchObject({ file: named, source: '--config' });
    expect(loadConfigDetailed({ env: { DLP_RELAY_CONFIG: env }, systemFile: etc })).toMatchObject({ file: env, source: 'DLP_RELAY_CONFIG' });
    expect(loadConfigDetailed({ env: {}, systemFile: etc }).config.smtp.hostname).toBe('from-system-file');
    const none = loadConfigDetailed({ env: {}, systemFile: join(root, 'missing.yaml') });
    expect(none.source).toBe('built-in');
    expect(none.config.smtp.hostname).toBe('dlp-relay.localdomain');
  });

  it('relative paths in a file resolve against its directory, whatever the cwd', () => {
    const dir = join(root, 'site');
    mkdirSync(dir);
    writeFileSync(join(dir, 'dlp.yaml'), 'quarantine:\n  dir: data/q\nembeddedDlp:\n  policiesFile: policies.yaml\n');
    const c = loadConfig({ file: join(dir, 'dlp.yaml'), env: {}, cwd: '/nowhere' });
    expect(c.quarantine.dir).toBe(join(dir, 'data/q'));
    expect(c.embeddedDlp.policiesFile).toBe(join(dir, 'policies.yaml'));
  });

  it('defaults resolve against the state directory (data) and the package (shipped files), never the cwd', () => {
    const c = loadConfig({ file: '/dev/null', env: { DLP_RELAY_STATE_DIR: '/srv/dlp' }, cwd: '/nowhere' });
    expect(c.stateDir).toBe('/srv/dlp');
    expect(c.spool.dir).toBe('/srv/dlp/spool');
    expect(c.quarantine.dir).toBe('/srv/dlp/quarantine');
    expect(c.cas.outbox.dir).toBe('/srv/dlp/cas-outbox');
    expect(c.embeddedDlp.policiesFile).toBe(join(PACKAGE_ROOT, 'config', 'detectors.yaml'));
    // From a checkout the state directory is the package's var/.
    expect(loadConfig({ file: '/dev/null', env: {} }).spool.dir).toBe(join(PACKAGE_ROOT, 'var', 'spool'));
  });

  it('relative paths from the environment resolve against the cwd of the command that set them', () => {
    expect(loadConfig({ file: '/dev/null', env: { DLP_RELAY_SPOOL_DIR: 'sp' }, cwd: '/work/x' }).spool.dir).toBe('/work/x/sp');
  });
});

describe('config provenance', () => {
  it('a bad value names the environment variable that set it, with a hint about the URL scheme', () => {
    const [p] = problemsOf(() =>
      loadConfig({ file: '/dev/null', env: { DLP_RELAY_UCWI_URL: 'host:5443', DLP_RELAY_UCWI_ACCESS_KEY: 'a', DLP_RELAY_UCWI_SECRET_KEY: 'b' } }),
    );
    expect(p).toMatchObject({ path: 'ucwi.url', origin: 'DLP_RELAY_UCWI_URL' });
    expect(p!.message).toContain('https://');
    try {
      loadConfig({ file: '/dev/null', env: { DLP_RELAY_UCWI_URL: 'host:5443' } });
    } catch (err) {
      expect((err as Error).message).toContain('ucwi.url: must be an http:// or https:// URL');
      expect((err as Error).message).toContain('(set by DLP_RELAY_UCWI_URL)');
    }
  });

  it('a bad value in a file names the file and line', () => {
    const f = join(root, 'bad.yaml');
    writeFileSync(f, '# comment\nsmtp:\n  hostname: ok\n  maxClients: -5\n');
    const [p] = problemsOf(() => loadConfig({ file: f, env: {} }));
    expect(p).toMatchObject({ path: 'smtp.maxClients', origin: `${f}:4` });
  });

  it('check-config --changed lists only non-default values with their origin', () => {
    const f = join(root, 'changed.yaml');
    writeFileSync(f, 'smtp:\n  hostname: mx.example.test\n  maxClients: 200\n');
    const changed = changedValues(loadConfigDetailed({ file: f, env: { DLP_RELAY_LISTEN: '0.0.0.0:25' } }));
    expect(changed).toEqual(
      expect.arrayContaining([
        { path: 'smtp.hostname', value: 'mx.example.test', origin: `${f}:2` },
        { path: 'listen.host', value: '0.0.0.0', origin: 'DLP_RELAY_LISTEN' },
        { path: 'listen.port', value: 25, origin: 'DLP_RELAY_LISTEN' },
      ]),
    );
    // maxClients: 200 is the default, so it is not "changed" even though the file sets it.
    expect(changed.map((c) => c.path)).not.toContain('smtp.maxClients');
    expect(changed.map((c) => c.path)).not.toContain('spool.dir');
  });

  it('check-config --changed names a moved stateDir and who moved it, and not every directory under it', () => {
    const changed = changedValues(loadConfigDetailed({ file: '/dev/null', env: { DLP_RELAY_STATE_DIR: join(root, 'elsewhere') } }));
    expect(changed).toEqual([{ path: 'stateDir', value: join(root, 'elsewhere'), origin: 'DLP_RELAY_STATE_DIR' }]);
  });

  it('admin commands still get the admin address from a file whose other values are broken, never when admin.* is', () => {
    const f = join(root, 'broken.yaml');
    writeFileSync(f, 'policy:\n  onDlpError: maybe\nadmin:\n  port: 9911\n');
    let problems: ConfigError['problems'] = [];
    try {
      loadConfigDetailed({ file: f });
    } catch (e) {
      problems = (e as ConfigError).problems;
    }
    expect(problems.map((p) => p.path)).toEqual(['policy.onDlpError']);
    const lenient = loadForAdmin({ file: f }, problems);
    expect(lenient?.config.admin.port).toBe(9911);
    expect(lenient?.config.policy.onDlpError).toBe('tempfail');
    writeFileSync(f, 'admin:\n  port: nine\n');
    try {
      loadConfigDetailed({ file: f });
    } catch (e) {
      problems = (e as ConfigError).problems;
    }
    expect(loadForAdmin({ file: f }, problems)).toBeNull();
  });
});
