// Installs what the benchmark needs when missing: Postfix's smtp-source/smtp-sink (Debian package, daemon left stopped), Haraka in a cached temp dir, and a fresh build of the relay.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from './proc.js';

export const SMTP_SOURCE = '/usr/sbin/smtp-source';
export const SMTP_SINK = '/usr/sbin/smtp-sink';

/** Haraka's version, pinned so runs compare; the overrides are what this registry can serve. */
export const HARAKA_VERSION = '3.3.4';
export const HARAKA_OVERRIDES = { 'encoding-japanese': '2.4.0', libqp: '2.1.2', '@zone-eu/mailsplit': '5.4.19' } as const;
export const HARAKA_DIR = join(tmpdir(), 'dlp-relay-bench-haraka');

type Log = (msg: string) => void;

/** smtp-source and smtp-sink from Debian's postfix package; the Postfix daemon itself is never started. */
export async function ensurePostfixTools(log: Log): Promise<void> {
  if (existsSync(SMTP_SOURCE) && existsSync(SMTP_SINK)) return;
  if (process.getuid?.() !== 0) throw new Error(`${SMTP_SOURCE} is missing and installing postfix needs root: apt-get install postfix`);
  log('installing postfix (for smtp-source and smtp-sink only)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const preseed = await runCommand('debconf-set-selections', [], { maxSeconds: 30, env, input: 'postfix postfix/main_mailer_type select No configuration\n' });
  if (preseed.code !== 0) throw new Error(`debconf-set-selections failed: ${preseed.stderr}`);
  const update = await runCommand('apt-get', ['update', '-qq'], { maxSeconds: 180, env });
  if (update.code !== 0) log(`apt-get update exited ${update.code}: ${update.stderr.slice(-500)}`);
  const install = await runCommand('apt-get', ['install', '-y', '-q', '--no-install-recommends', 'postfix'], { maxSeconds: 300, env });
  if (install.code !== 0 || !existsSync(SMTP_SOURCE)) throw new Error(`apt-get install postfix failed:\n${install.stderr.slice(-2000)}`);
}

/** `script` (util-linux) gives smtp-sink a terminal so its running counter is flushed as it changes. */
export function ensureScript(): void {
  if (!existsSync('/usr/bin/script')) throw new Error('/usr/bin/script (util-linux) is needed to read smtp-sink counters');
}

/** Haraka installed into HARAKA_DIR (not a dependency of ours); reused between runs. Returns its bin/haraka. */
export async function ensureHaraka(log: Log): Promise<{ bin: string; version: string }> {
  const bin = join(HARAKA_DIR, 'node_modules', 'Haraka', 'bin', 'haraka');
  const pkgFile = join(HARAKA_DIR, 'package.json');
  const wanted = {
    name: 'dlp-relay-bench-haraka',
    private: true,
    version: '0.0.0',
    description: 'Haraka for dlp-relay benchmarks (created by bench/run.ts)',
    dependencies: { Haraka: HARAKA_VERSION },
    overrides: HARAKA_OVERRIDES,
  };
  const current = existsSync(pkgFile) ? readFileSync(pkgFile, 'utf8') : '';
  if (!existsSync(bin) || current !== JSON.stringify(wanted, null, 2)) {
    log(`installing Haraka ${HARAKA_VERSION} into ${HARAKA_DIR}`);
    mkdirSync(HARAKA_DIR, { recursive: true });
    writeFileSync(pkgFile, JSON.stringify(wanted, null, 2));
    // --ignore-scripts: the only install script is an optional native syslog module we do not use.
    const r = await runCommand('npm', ['install', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error'], { maxSeconds: 300, cwd: HARAKA_DIR });
    if (r.code !== 0 || !existsSync(bin)) throw new Error(`npm install Haraka failed:\n${r.stderr.slice(-2000)}`);
  }
  const version = (JSON.parse(readFileSync(join(HARAKA_DIR, 'node_modules', 'Haraka', 'package.json'), 'utf8')) as { version: string }).version;
  return { bin, version };
}

/**
 * Writes a Haraka config dir: listen on loopback, accept mail for example.test (rcpt_to.in_host_list)
 * and forward it with queue/smtp_forward to the sink, no TLS, log level warn, `nodes` worker processes.
 * `nodes` is Haraka's cluster setting (smtp.ini [main], docs/CoreConfig.md: "Number of worker processes to
 * fork"); any value makes Haraka fork that many workers from a master, so nodes=1 is master + one worker.
 * `haraka -i` lays down the full default tree first (Haraka reads connection.ini etc. from it).
 */
export async function writeHarakaConfig(bin: string, dir: string, listenPort: number, sinkPort: number, domain: string, nodes: number): Promise<void> {
  if (!existsSync(join(dir, 'config', 'connection.ini'))) {
    const r = await runCommand('node', [bin, '-i', dir], { maxSeconds: 60 });
    if (r.code !== 0) throw new Error(`haraka -i failed:\n${r.stderr}${r.stdout}`);
  }
  const c = (name: string, text: string) => writeFileSync(join(dir, 'config', name), text);
  c('smtp.ini', `listen=127.0.0.1:${listenPort}\nnodes=${nodes}\n`);
  c('log.ini', '[main]\nlevel=warn\n');
  c('plugins', 'rcpt_to.in_host_list\nqueue/smtp_forward\n');
  c('host_list', `${domain}\n`);
  c('smtp_forward.ini', `host=127.0.0.1\nport=${sinkPort}\nenable_tls=false\n`);
  c('me', 'haraka.bench.example.test\n');
}

/** `npm run build` into dist/; on failure (someone's half-done edit), the caller falls back to tsx. */
export async function buildRelay(root: string, log: Log): Promise<{ ok: boolean; detail: string }> {
  log('building the relay (npm run build)');
  const r = await runCommand('npm', ['run', 'build', '--silent'], { maxSeconds: 240, cwd: root });
  return { ok: r.code === 0 && existsSync(join(root, 'dist', 'cli', 'main.js')), detail: (r.stdout + r.stderr).slice(-2000) };
}
