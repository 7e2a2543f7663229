// Loads the configuration once: YAML file, then environment overrides, then secrets from env or files; validates all of it, lists every problem with its path and who set it, and freezes the result.
import { readFileSync } from 'node:fs';
import { resolve, dirname, join, isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configSchema, type Config, type FrozenConfig } from './schema.js';
import { maskDeep, maskSecrets } from '../util/mask.js';
import {
  findConfigFile,
  readConfigFile,
  resolvePathsIn,
  dropNullDefaults,
  defaultStateDir,
  fileBase,
  flatten,
  getPath,
  setPathIfPresent,
  Origins,
  PATH_KEYS,
  SYSTEM_CONFIG_FILE,
  type ConfigSource,
} from './sources.js';
import { DlpError } from '../errors.js';

export type { Config, FrozenConfig } from './schema.js';

/** Where the package lives, so `config/default.yaml` is found whatever the working directory. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEFAULT_CONFIG_FILE = join(PACKAGE_ROOT, 'config', 'default.yaml');

export interface ConfigProblem {
  path: string;
  message: string;
  /** Who set the bad value: "FILE:LINE" or an environment variable; absent for a built-in default. */
  origin?: string;
}

export class ConfigError extends DlpError {
  readonly errorCode = 'DLP_ERR_CONFIG' as const;
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    // Messages may quote a value (an env override, a URL): masked, since they go to stderr and logs.
    super(
      `invalid configuration:\n${problems.map((p) => `  - ${p.path}: ${maskSecrets(p.message)}${p.origin && p.origin !== p.path ? ` (set by ${p.origin})` : ''}`).join('\n')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

type Env = Record<string, string | undefined>;
type Raw = Record<string, unknown>;

/** Sets obj.a.b.c = value, creating objects on the way. */
function setPath(obj: Raw, path: string[], value: unknown): void {
  let cur = obj;
  for (const key of path.slice(0, -1)) {
    const next = cur[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) cur[key] = {};
    cur = cur[key] as Raw;
  }
  cur[path[path.length - 1]!] = value;
}

function parseHostPort(value: string): { host: string; port: number } | null {
  // [v6]:port or host:port
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(value) ?? /^([^:]+):(\d{1,5})$/.exec(value);
  if (!m) return null;
  const port = Number(m[2]);
  return port <= 65535 ? { host: m[1]!, port } : null;
}

/** An override that sets `<section>.host` and `<section>.port` from "host:port". */
function hostPortAt(section: string): (raw: Raw, v: string) => string | void {
  return (raw, v) => {
    const hp = parseHostPort(v);
    if (!hp) return 'expected host:port';
    setPath(raw, [section, 'host'], hp.host);
    setPath(raw, [section, 'port'], hp.port);
  };
}

/** "a, b,,c" → ['a', 'b', 'c']: the list form of an environment value. */
function commaList(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/**
 * Environment variables and the config path they override. Each entry parses its text; a parse
 * failure becomes a problem naming both the variable and the path.
 */
const ENV_OVERRIDES: Array<{ name: string; apply: (raw: Raw, v: string) => string | void }> = [
  { name: 'DLP_RELAY_LISTEN', apply: hostPortAt('listen') },
  { name: 'DLP_RELAY_NEXT_HOP', apply: hostPortAt('nextHop') },
  { name: 'DLP_RELAY_NEXT_HOP_USER', apply: (raw, v) => setPath(raw, ['nextHop', 'authUser'], v) },
  // Several UCWI servers from the environment: comma-separated, equal priority (shared).
  { name: 'DLP_RELAY_UCWI_URL', apply: (raw, v) => setPath(raw, ['ucwi', 'url'], v.includes(',') ? commaList(v) : v) },
  { name: 'DLP_RELAY_UCWI_TIMEOUT_MS', apply: (raw, v) => num(raw, ['ucwi', 'timeouts', 'deadlineMs'], v) },
  { name: 'DLP_RELAY_DRAIN_DELAY_MS', apply: (raw, v) => num(raw, ['limits', 'drainDelayMs'], v) },
  { name: 'DLP_RELAY_DATA_DEADLINE_MS', apply: (raw, v) => num(raw, ['limits', 'dataDeadlineMs'], v) },
  { name: 'DLP_RELAY_ON_DLP_ERROR', apply: (raw, v) => setPath(raw, ['policy', 'onDlpError'], v) },
  { name: 'DLP_RELAY_QUARANTINE_DIR', apply: (raw, v) => setPath(raw, ['quarantine', 'dir'], v) },
  { name: 'DLP_RELAY_QUARANTINE_URL', apply: (raw, v) => setPath(raw, ['quarantine', 'url'], v) },
  { name: 'DLP_RELAY_OUTBOX_DIR', apply: (raw, v) => setPath(raw, ['outbox', 'dir'], v) },
  { name: 'DLP_RELAY_SPOOL_DIR', apply: (raw, v) => setPath(raw, ['spool', 'dir'], v) },
  { name: 'DLP_RELAY_ALLOWED_CLIENTS', apply: (raw, v) => setPath(raw, ['smtp', 'allowedClients'], commaList(v)) },
  { name: 'DLP_RELAY_MAX_MESSAGE_BYTES', apply: (raw, v) => num(raw, ['smtp', 'maxMessageBytes'], v) },
  { name: 'DLP_RELAY_WORKERS', apply: (raw, v) => num(raw, ['smtp', 'workers'], v) },
  { name: 'DLP_RELAY_WORKER_BALANCING', apply: (raw, v) => setPath(raw, ['smtp', 'workerBalancing'], v) },
  { name: 'DLP_RELAY_ADMIN_LISTEN', apply: hostPortAt('admin') },
  { name: 'DLP_RELAY_CAS_URL', apply: (raw, v) => setPath(raw, ['cas', 'url'], v) },
  { name: 'DLP_RELAY_CAS_OUTBOX_DIR', apply: (raw, v) => setPath(raw, ['cas', 'outbox', 'dir'], v) },
  { name: 'DLP_RELAY_CAS_REGION', apply: (raw, v) => setPath(raw, ['cas', 'region'], v) },
  { name: 'DLP_RELAY_LOG_LEVEL', apply: (raw, v) => setPath(raw, ['log', 'level'], v) },
  { name: 'DLP_RELAY_LOG_FORMAT', apply: (raw, v) => setPath(raw, ['log', 'format'], v) },
  { name: 'DLP_RELAY_STATE_DIR', apply: (raw, v) => setPath(raw, ['stateDir'], v) },
];

function num(raw: Raw, path: string[], v: string): string | void {
  if (!/^\d+$/.test(v.trim())) return 'expected a whole number';
  setPath(raw, path, Number(v.trim()));
}

/** Secrets: env value, else env *_FILE, else the config's *File key. Never the YAML itself. */
const SECRETS: Array<{ key: keyof Config['secrets']; env: string; fileKey?: string[] }> = [
  { key: 'ucwiAccessKey', env: 'DLP_RELAY_UCWI_ACCESS_KEY', fileKey: ['ucwi', 'accessKeyFile'] },
  { key: 'ucwiSecretKey', env: 'DLP_RELAY_UCWI_SECRET_KEY', fileKey: ['ucwi', 'secretKeyFile'] },
  { key: 'nextHopPass', env: 'DLP_RELAY_NEXT_HOP_PASS', fileKey: ['nextHop', 'passFile'] },
  { key: 'adminToken', env: 'DLP_RELAY_ADMIN_TOKEN', fileKey: ['admin', 'tokenFile'] },
  { key: 'casToken', env: 'DLP_RELAY_CAS_TOKEN', fileKey: ['cas', 'tokenFile'] },
  { key: 'loopKey', env: 'DLP_RELAY_LOOP_KEY', fileKey: ['policy', 'loop', 'keyFile'] },
  { key: 'loopPreviousKey', env: 'DLP_RELAY_LOOP_PREVIOUS_KEY', fileKey: ['policy', 'loop', 'previousKeyFile'] },
];

export interface LoadOptions {
  /** Config file (--config); default DLP_RELAY_CONFIG, then /etc/dlp-relay/dlp-relay.yaml if it exists, then built-in defaults. */
  file?: string | undefined;
  /** The system file looked for last (tests point it elsewhere); null skips it. */
  systemFile?: string | null;
  /** Base of relative paths from the environment and overrides (default: process.cwd()). */
  cwd?: string;
  env?: Env;
  /** Extra values applied over the file and env (tests use this). */
  overrides?: Raw;
}

/** Deep merge of plain objects; arrays and scalars are replaced. */
export function deepMerge(base: Raw, over: Raw): Raw {
  const out: Raw = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? deepMerge(b as Raw, v as Raw) : v;
  }
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o as object)) deepFreeze(v);
  }
  return o;
}

export interface LoadedConfig {
  config: FrozenConfig;
  /** The file read, or undefined for the built-in defaults. */
  file: string | undefined;
  source: ConfigSource;
  origins: Origins;
}

export function loadConfig(opts: LoadOptions = {}): FrozenConfig {
  return loadConfigDetailed(opts).config;
}

/**
 * Resolves relative paths the schema filled in from its defaults: shipped files in the package, data
 * under the state directory (the schema's "var/spool" is <stateDir>/spool: var/ *is* the state dir of a checkout).
 */
function resolveDefaults(c: Config, stateDir: string): void {
  for (const k of PATH_KEYS) {
    const v = getPath(c, k.path);
    if (typeof v !== 'string' || isAbsolute(v)) continue;
    setPathIfPresent(c, k.path, k.base === 'state' ? resolve(stateDir, v.replace(/^var\//, '')) : resolve(PACKAGE_ROOT, v));
  }
}

export function loadConfigDetailed(opts: LoadOptions = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const problems: ConfigProblem[] = [];
  const found = findConfigFile(opts.file, env, opts.systemFile === undefined ? SYSTEM_CONFIG_FILE : opts.systemFile);
  const file = found.file;
  const origins = new Origins();

  let raw: Raw = {};
  if (file) {
    try {
      const text = readConfigFile(file);
      const parsed = text.value;
      if (parsed === null || parsed === undefined) raw = {};
      else if (typeof parsed !== 'object' || Array.isArray(parsed)) problems.push({ path: '(file)', message: `${file} must hold a mapping` });
      else {
        raw = parsed as Raw;
        dropNullDefaults(raw);
        origins.setFile(text);
        origins.recordFileLeaves(raw);
        // Relative paths in a file mean "next to this file", whoever runs the command and from wherever.
        resolvePathsIn(raw, fileBase(file));
        if (typeof raw['stateDir'] === 'string' && !isAbsolute(raw['stateDir'])) raw['stateDir'] = resolve(fileBase(file), raw['stateDir']);
      }
    } catch (err) {
      problems.push({ path: '(file)', message: `cannot read ${file}: ${(err as Error).message}` });
    }
  }
  if ('secrets' in raw) {
    problems.push({ path: 'secrets', message: 'secrets may not be set in the config file; use environment variables or *File keys' });
    delete raw['secrets'];
  }

  for (const o of ENV_OVERRIDES) {
    const v = env[o.name];
    if (v === undefined || v === '') continue;
    const before = flatten(raw);
    const err = o.apply(raw, v);
    if (err) problems.push({ path: o.name, message: `${err} (got "${v}")`, origin: o.name });
    for (const [p, x] of flatten(raw)) if (!before.has(p) || before.get(p) !== x) origins.record(p.split('.'), o.name);
  }
  if (opts.overrides) {
    for (const p of flatten(opts.overrides).keys()) if (!p.startsWith('secrets')) origins.record(p.split('.'), 'override');
    raw = deepMerge(raw, opts.overrides);
  }
  // Paths from the environment or overrides that are still relative were typed in a shell: its cwd.
  resolvePathsIn(raw, cwd, (path) => {
    const o = origins.of(path.join('.'));
    return o !== null && !o.includes(':');
  });
  if (typeof raw['stateDir'] === 'string' && !isAbsolute(raw['stateDir'])) raw['stateDir'] = resolve(cwd, raw['stateDir']);

  const secrets: Raw = {};
  for (const s of SECRETS) {
    const direct = env[s.env];
    const envFile = env[`${s.env}_FILE`];
    const cfgFile = s.fileKey ? (getPath(raw, s.fileKey) as string | undefined) : undefined;
    const f = envFile ? resolve(cwd, envFile) : cfgFile;
    if (direct) secrets[s.key] = direct;
    else if (f) {
      try {
        secrets[s.key] = readFileSync(f, 'utf8').trim();
      } catch (err) {
        problems.push({
          path: envFile ? `${s.env}_FILE` : s.fileKey!.join('.'),
          message: `cannot read secret file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        });
      }
    }
  }
  const overSecrets = (opts.overrides?.['secrets'] as Raw | undefined) ?? {};
  raw['secrets'] = { ...secrets, ...overSecrets };

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    for (const issue of result.error.issues) {
      const path = issue.path.map(String).join('.') || '(root)';
      const origin = origins.of(path);
      problems.push({ path, message: issue.message, ...(origin ? { origin } : {}) });
    }
  }
  if (result.success) {
    const c = result.data;
    c.stateDir = c.stateDir ?? defaultStateDir(PACKAGE_ROOT);
    resolveDefaults(c, c.stateDir);
    // Our own domains are never pushed to a tenant-wide block list unless the admin lists exemptions explicitly.
    // An empty list counts as unset (config/default.yaml spells it out as []).
    if (c.cas.exemptDomains.length === 0) c.cas.exemptDomains = [...c.policy.localDomains];
    if (c.cas.enabled && c.cas.push.sender && c.cas.exemptDomains.length === 0 && !c.cas.allowEmptyExemptions)
      problems.push({
        path: 'cas.exemptDomains',
        message:
          'CAS sender pushing (cas.push.sender) with no exempt domain would put our own users on the tenant-wide blocked-senders list: set policy.localDomains (or cas.exemptDomains), or cas.allowEmptyExemptions: true if that is really meant',
      });
    if (c.ucwi.url !== null && (!c.secrets.ucwiAccessKey || !c.secrets.ucwiSecretKey))
      problems.push({
        path: 'ucwi.url',
        message: 'a UCWI server needs DLP_RELAY_UCWI_ACCESS_KEY and DLP_RELAY_UCWI_SECRET_KEY (or their *_FILE / ucwi.*File)',
      });
    if (c.nextHop.authUser !== null && !c.secrets.nextHopPass)
      problems.push({ path: 'nextHop.authUser', message: 'AUTH needs DLP_RELAY_NEXT_HOP_PASS (or nextHop.passFile)' });
    if (c.smtp.auth.enabled && c.smtp.tls.certFile === null)
      problems.push({ path: 'smtp.auth.enabled', message: 'AUTH is offered only after STARTTLS: set smtp.tls.certFile and keyFile' });
    if (c.smtp.auth.enabled && c.smtp.auth.usersFile === null) problems.push({ path: 'smtp.auth.usersFile', message: 'AUTH needs a users file' });
    if (c.smtp.auth.required && !c.smtp.auth.enabled) problems.push({ path: 'smtp.auth.required', message: 'required needs enabled: true' });
    if (c.admin.enabled && c.secrets.adminToken !== null && c.secrets.adminToken.length < 16)
      problems.push({ path: 'DLP_RELAY_ADMIN_TOKEN', message: 'the admin token must be at least 16 characters' });
    // Cisco CVE-2025-20393 was a quarantine console reachable from outside: a non-loopback console is an explicit choice.
    if (c.console.enabled && !c.console.allowRemote && !/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(c.admin.host))
      problems.push({
        path: 'console.allowRemote',
        message: `the console would listen on ${c.admin.host}: keep admin.host on loopback behind an authenticating TLS proxy, or set console.allowRemote: true`,
      });
    if (c.console.digest.enabled && !c.console.enabled)
      problems.push({ path: 'console.digest.enabled', message: 'the digest links to the console: set console.enabled: true' });
    if (c.console.digest.enabled && c.console.digest.recipients.length === 0)
      problems.push({ path: 'console.digest.recipients', message: 'name at least one reviewer address' });
    if (c.console.enabled && !c.admin.enabled)
      problems.push({ path: 'console.enabled', message: 'the console is served by the admin listener: set admin.enabled: true' });
    if (c.cas.enabled && !c.secrets.casToken)
      problems.push({ path: 'cas.enabled', message: 'CAS needs a token: DLP_RELAY_CAS_TOKEN (or its _FILE, or cas.tokenFile)' });
    if (c.cas.enabled && !c.cas.url && !c.cas.region)
      problems.push({ path: 'cas.region', message: 'set cas.region (us, eu, jp, au, uk, ca, sg, in) or cas.url (DLP_RELAY_CAS_URL)' });
    if (c.cas.outbox.backend === 'pg' && !c.quarantine.url)
      problems.push({ path: 'cas.outbox.backend', message: 'the pg outbox lives in the quarantine database: set quarantine.url' });
    if (c.smtp.workers > 1 && c.cas.enabled && c.cas.outbox.backend !== 'pg')
      problems.push({
        path: 'smtp.workers',
        message: 'several workers share the CAS outbox only with cas.outbox.backend: pg (the fs journal admits one process)',
      });
    const loop = c.policy.loop;
    for (const [key, path] of [
      ['loopKey', 'policy.loop.keyFile'],
      ['loopPreviousKey', 'policy.loop.previousKeyFile'],
    ] as const)
      if (c.secrets[key] !== null && Buffer.byteLength(c.secrets[key]) < 16)
        problems.push({ path, message: 'a loop header key must be at least 16 bytes (32 random bytes, e.g. `openssl rand -base64 32`)' });
    if ((c.secrets.loopPreviousKey !== null) !== (loop.previousKeyUntil !== null))
      problems.push({
        path: 'policy.loop.previousKeyUntil',
        message: 'the previous loop key (policy.loop.previousKeyFile or DLP_RELAY_LOOP_PREVIOUS_KEY) and previousKeyUntil go together',
      });
    if (c.nextHop.host !== null && c.nextHop.endpoints.length > 0)
      problems.push({ path: 'nextHop.endpoints', message: 'list the next hops either as nextHop.host/port or as nextHop.endpoints, not both' });
    if (c.nextHop.backoff.maxMs < c.nextHop.backoff.initialMs) problems.push({ path: 'nextHop.backoff.maxMs', message: 'must be at least initialMs' });
    if (c.ucwi.backoff.maxMs < c.ucwi.backoff.initialMs) problems.push({ path: 'ucwi.backoff.maxMs', message: 'must be at least initialMs' });
    if (c.nextHop.secure && c.nextHop.starttls === 'required')
      problems.push({ path: 'nextHop.starttls', message: 'implicit TLS (secure: true) and STARTTLS exclude each other' });
  }
  for (const p of problems) {
    if (p.origin) continue;
    const origin = origins.of(p.path);
    if (origin) p.origin = origin;
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return { config: deepFreeze(result.data!), file, source: found.source, origins };
}

/**
 * `check-config --changed` (Postfix's `postconf -n`): every value that differs from the built-in
 * default, with the file line or environment variable that set it. Secrets are never listed.
 */
/**
 * For admin commands (status, quarantine, reload): a file with problems OUTSIDE admin.* still yields its admin
 * address and token, with each bad value put back to its default, because a broken file is exactly when an admin
 * needs `status`. Returns null when a problem touches the admin settings or a value has no default to fall back to.
 */
export function loadForAdmin(opts: LoadOptions, problems: readonly ConfigProblem[]): LoadedConfig | null {
  if (problems.some((p) => p.path.startsWith('admin') || p.path.startsWith('secrets'))) return null;
  const defaults: Raw = configSchema.parse({});
  const overrides: Raw = JSON.parse(JSON.stringify(opts.overrides ?? {})) as Raw;
  for (const p of problems) {
    const path = p.path.split('.');
    const value = getPath(defaults, path);
    if (value === undefined) return null;
    setPath(overrides, path, value);
  }
  try {
    return loadConfigDetailed({ ...opts, overrides });
  } catch {
    return null;
  }
}

export function changedValues(loaded: LoadedConfig): Array<{ path: string; value: unknown; origin: string }> {
  const defaults = configSchema.parse({});
  defaults.stateDir = loaded.config.stateDir;
  resolveDefaults(defaults, defaults.stateDir!);
  const base = flatten(defaults);
  const out: Array<{ path: string; value: unknown; origin: string }> = [];
  // The data directories are compared under the configured stateDir (so they are not all listed when it moves);
  // stateDir itself against the built-in one.
  if (loaded.config.stateDir !== defaultStateDir(PACKAGE_ROOT))
    out.push({ path: 'stateDir', value: loaded.config.stateDir, origin: loaded.origins.of('stateDir') ?? 'derived' });
  for (const [path, value] of flatten(loaded.config)) {
    if (path === 'stateDir') continue;
    if (path.startsWith('secrets.')) continue;
    if (JSON.stringify(base.get(path)) === JSON.stringify(value)) continue;
    out.push({ path, value, origin: loaded.origins.of(path) ?? 'derived' });
  }
  return out;
}

/** The effective config for printing: secrets and passwords inside URLs masked. */
export function maskedConfig(c: FrozenConfig): unknown {
  const copy = JSON.parse(JSON.stringify(c)) as Config;
  for (const k of Object.keys(copy.secrets) as Array<keyof Config['secrets']>) {
    if (copy.secrets[k]) copy.secrets[k] = '********';
  }
  // Every string, not a list of known URL keys: a password in any URL (ucwi.url, cas.url, quarantine.url…) is masked.
  return maskDeep(copy);
}
