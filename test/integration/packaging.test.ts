// Packaging for a host: the systemd unit passes systemd-analyze verify, the container health check asks the configured admin address, --version and LICENSE match package.json.
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string; license: string };
const hasAnalyze = spawnSync('systemd-analyze', ['--version'], { timeout: 10_000 }).status === 0;

describe('packaging', () => {
  // .ci/run installs Debian's systemd package for this; elsewhere the test says why it did not run.
  it.runIf(hasAnalyze)('systemd-analyze verify accepts the unit', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dlp-unit-'));
    try {
      // verify insists that ExecStart exists: point it at a stub, the rest of the unit unchanged.
      const stub = join(dir, 'dlp-relay');
      writeFileSync(stub, '#!/bin/sh\n');
      chmodSync(stub, 0o755);
      const unit = readFileSync('deploy/systemd/dlp-relay.service', 'utf8').replaceAll('/usr/bin/dlp-relay', stub);
      expect(unit).toMatch(/^Restart=on-failure$/m);
      expect(unit).toMatch(/^ProtectSystem=strict$/m);
      expect(unit).toMatch(/^ReadWritePaths=\/var\/lib\/dlp-relay$/m);
      expect(unit).toMatch(/^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
      writeFileSync(join(dir, 'dlp-relay.service'), unit);
      const r = spawnSync('systemd-analyze', ['verify', join(dir, 'dlp-relay.service')], { encoding: 'utf8', timeout: 30_000 });
      expect(r.stderr.split('\n').filter((l) => l.includes('dlp-relay.service'))).toEqual([]);
      expect(r.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the Docker HEALTHCHECK asks `dlp-relay health`, which reads the configured admin address', () => {
    const docker = readFileSync('Dockerfile', 'utf8');
    expect(docker).toContain('CMD ["node", "dist/cli/main.js", "health"');
    expect(docker).not.toContain('127.0.0.1:8025');
  });

  it('--version prints the package version; LICENSE is the Apache-2.0 text package.json names', () => {
    const out = execFileSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--version'], { encoding: 'utf8', timeout: 30_000 });
    expect(out.trim()).toBe(pkg.version);
    expect(pkg.license).toBe('Apache-2.0');
    expect(readFileSync('LICENSE', 'utf8')).toContain('Apache License\n                           Version 2.0, January 2004');
  });
});
