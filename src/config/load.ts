// Loads the configuration once: YAML file, then environment overrides, then secrets from env or files; validates all of it, lists every problem with its path, and freezes the result.
import { readFileSync, existsSync } from 'node:fs';
import { resolve, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { configSchema, type Config, type FrozenConfig } from './schema.js';
import { effectiveActions } from '../policy/policy.js';
import { maskDeep, maskSecrets } from '../util/mask.js';

export type { Config, FrozenConfig } from './schema.js';

/** Where the package lives, so `config/default.yaml` is found whatever the working directory. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEFAULT_CONFIG_FILE = join(PACKAGE_ROOT, 'config', 'default.yaml');

export interface ConfigProblem {
  path: string;
  message: string;
}

export class ConfigError extends Error {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    // Messages may quote a value (an env override, a URL): masked, since they go to stderr and logs.
    super(`invalid configuration:\n${problems.map((p) => `  - ${p.path}: ${maskSecrets(p.message)}`).join('\n')}`);
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

/**
 * Environment variables and the config path they override. Each entry parses its text; a parse
 * failure becomes a problem naming both the variable and the path.
 */
const ENV_OVERRIDES: Array<{ name: string; apply: (raw: Raw, v: string) => string | void }> = [
  { name: 'DLP_RELAY_LISTEN', apply: hostPortAt('listen') },
  { name: 'DLP_RELAY_NEXT_HOP', apply: hostPortAt('nextHop') },
  { name: 'DLP_RELAY_NEXT_HOP_USER', apply: (raw, v) => setPath(raw, ['nextHop', 'authUser'], v) },
  { name: 'DLP_RELAY_UCWI_URL', apply: (raw, v) => setPath(raw, ['ucwi', 'url'], v) },
  { name: 'DLP_RELAY_UCWI_TIMEOUT_MS', apply: (raw, v) => num(raw, ['ucwi', 'timeouts', 'deadlineMs'], v) },
  { name: 'DLP_RELAY_DATA_DEADLINE_MS', apply: (raw, v) => num(raw, ['limits', 'dataDeadlineMs'], v) },
  { name: 'DLP_RELAY_ON_DLP_ERROR', apply: (raw, v) => setPath(raw, ['policy', 'onDlpError'], v) },
  { name: 'DLP_RELAY_QUARANTINE_DIR', apply: (raw, v) => setPath(raw, ['quarantine', 'dir'], v) },
  { name: 'DLP_RELAY_QUARANTINE_URL', apply: (raw, v) => setPath(raw, ['quarantine', 'url'], v) },
  { name: 'DLP_RELAY_OUTBOX_DIR', apply: (raw, v) => setPath(raw, ['outbox', 'dir'], v) },
  { name: 'DLP_RELAY_SPOOL_DIR', apply: (raw, v) => setPath(raw, ['spool', 'dir'], v) },
  {
    name: 'DLP_RELAY_ALLOWED_CLIENTS',
    apply: (raw, v) =>
      setPath(
        raw,
        ['smtp', 'allowedClients'],
        v.split(',').map((s) => s.trim()).filter(Boolean),
      ),
  },
  { name: 'DLP_RELAY_MAX_MESSAGE_BYTES', apply: (raw, v) => num(raw, ['smtp', 'maxMessageBytes'], v) },
  { name: 'DLP_RELAY_WORKERS', apply: (raw, v) => num(raw, ['smtp', 'workers'], v) },
  { name: 'DLP_RELAY_ADMIN_LISTEN', apply: hostPortAt('admin') },
  { name: 'DLP_RELAY_CAS_URL', apply: (raw, v) => setPath(raw, ['cas', 'url'], v) },
  { name: 'DLP_RELAY_CAS_OUTBOX_DIR', apply: (raw, v) => setPath(raw, ['cas', 'outbox', 'dir'], v) },
  { name: 'DLP_RELAY_CAS_REGION', apply: (raw, v) => setPath(raw, ['cas', 'region'], v) },
  { name: 'DLP_RELAY_LOG_LEVEL', apply: (raw, v) => setPath(raw, ['log', 'level'], v) },
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

/** raw.a.b.c, or undefined when any step is missing. */
function getPath(obj: Raw, path: string[]): unknown {
  let cur: unknown = obj;
  for (const k of path) cur = cur && typeof cur === 'object' && !Array.isArray(cur) ? (cur as Raw)[k] : undefined;
  return cur;
}

export interface LoadOptions {
  /** Config file; default config/default.yaml beside the package (skipped silently if absent). */
  file?: string | undefined;
  env?: Env;
  /** Extra values applied over the file and env (tests use this). */
  overrides?: Raw;
}

/** Deep merge of plain objects; arrays and scalars are replaced. */
export function deepMerge(base: Raw, over: Raw): Raw {
  const out: Raw = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b)
        ? deepMerge(b as Raw, v as Raw)
        : v;
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

export function loadConfig(opts: LoadOptions = {}): FrozenConfig {
  const env = opts.env ?? process.env;
  const problems: ConfigProblem[] = [];
  const file = opts.file ?? env['DLP_RELAY_CONFIG'] ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);

  let raw: Raw = {};
  if (file) {
    try {
      const parsed: unknown = parseYaml(readFileSync(file, 'utf8'));
      if (parsed === null || parsed === undefined) raw = {};
      else if (typeof parsed !== 'object' || Array.isArray(parsed)) problems.push({ path: '(file)', message: `${file} must hold a mapping` });
      else raw = parsed as Raw;
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
    const err = o.apply(raw, v);
    if (err) problems.push({ path: o.name, message: `${err} (got "${v}")` });
  }
  if (opts.overrides) raw = deepMerge(raw, opts.overrides);

  const secrets: Raw = {};
  for (const s of SECRETS) {
    const direct = env[s.env];
    const envFile = env[`${s.env}_FILE`];
    const cfgFile = s.fileKey ? (getPath(raw, s.fileKey) as string | undefined) : undefined;
    const f = envFile || cfgFile;
    if (direct) secrets[s.key] = direct;
    else if (f) {
      try {
        secrets[s.key] = readFileSync(f, 'utf8').trim();
      } catch (err) {
        problems.push({ path: envFile ? `${s.env}_FILE` : s.fileKey!.join('.'), message: `cannot read secret file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
      }
    }
  }
  const overSecrets = (opts.overrides?.['secrets'] as Raw | undefined) ?? {};
  raw['secrets'] = { ...secrets, ...overSecrets };

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    for (const issue of result.error.issues) {
      problems.push({ path: issue.path.map(String).join('.') || '(root)', message: issue.message });
    }
  }
  if (result.success) {
    const c = result.data;
    // Codes the file does not mention keep their defaults; the effective table is what check-config prints.
    c.policy.actions = effectiveActions(c.policy.actions);
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
    if (c.smtp.auth.enabled && c.smtp.auth.usersFile === null)
      problems.push({ path: 'smtp.auth.usersFile', message: 'AUTH needs a users file' });
    if (c.smtp.auth.required && !c.smtp.auth.enabled)
      problems.push({ path: 'smtp.auth.required', message: 'required needs enabled: true' });
    if (c.admin.enabled && c.secrets.adminToken !== null && c.secrets.adminToken.length < 16)
      problems.push({ path: 'DLP_RELAY_ADMIN_TOKEN', message: 'the admin token must be at least 16 characters' });
    if (c.cas.enabled && !c.secrets.casToken)
      problems.push({ path: 'cas.enabled', message: 'CAS needs a token: DLP_RELAY_CAS_TOKEN (or its _FILE, or cas.tokenFile)' });
    if (c.cas.enabled && !c.cas.url && !c.cas.region)
      problems.push({ path: 'cas.region', message: 'set cas.region (us, eu, jp, au, uk, ca, sg, in) or cas.url (DLP_RELAY_CAS_URL)' });
    if (c.cas.outbox.backend === 'pg' && !c.quarantine.url)
      problems.push({ path: 'cas.outbox.backend', message: 'the pg outbox lives in the quarantine database: set quarantine.url' });
    if (c.smtp.workers > 1 && c.cas.enabled && c.cas.outbox.backend !== 'pg')
      problems.push({ path: 'smtp.workers', message: 'several workers share the CAS outbox only with cas.outbox.backend: pg (the fs journal admits one process)' });
    const loop = c.policy.loop;
    for (const [key, path] of [['loopKey', 'policy.loop.keyFile'], ['loopPreviousKey', 'policy.loop.previousKeyFile']] as const)
      if (c.secrets[key] !== null && Buffer.byteLength(c.secrets[key]) < 16) problems.push({ path, message: 'a loop header key must be at least 16 bytes (32 random bytes, e.g. `openssl rand -base64 32`)' });
    if ((c.secrets.loopPreviousKey !== null) !== (loop.previousKeyUntil !== null))
      problems.push({ path: 'policy.loop.previousKeyUntil', message: 'the previous loop key (policy.loop.previousKeyFile or DLP_RELAY_LOOP_PREVIOUS_KEY) and previousKeyUntil go together' });
    if (c.nextHop.secure && c.nextHop.starttls === 'required')
      problems.push({ path: 'nextHop.starttls', message: 'implicit TLS (secure: true) and STARTTLS exclude each other' });
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze(result.data!) as FrozenConfig;
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
