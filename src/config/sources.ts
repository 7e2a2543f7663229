// Where configuration comes from: which file (same discovery for every command), which file line or environment variable set each value, and the base directory every relative path resolves against.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { LineCounter, parseDocument, isNode } from 'yaml';

/** The system-wide config an installed relay (and every admin command on that host) uses when nothing else is named. */
export const SYSTEM_CONFIG_FILE = '/etc/dlp-relay/dlp-relay.yaml';
/** The state directory of an installed relay (systemd StateDirectory=dlp-relay, the Docker volume). */
export const SYSTEM_STATE_DIR = '/var/lib/dlp-relay';

export type ConfigSource = '--config' | 'DLP_RELAY_CONFIG' | 'system' | 'built-in';

export interface FoundConfig {
  file: string | undefined;
  source: ConfigSource;
}

/**
 * One discovery rule for `serve` and every admin command: --config FILE, then DLP_RELAY_CONFIG, then the
 * system file when it exists, then the built-in defaults. Never a file in the working directory.
 */
export function findConfigFile(
  explicit: string | undefined,
  env: Record<string, string | undefined>,
  systemFile: string | null = SYSTEM_CONFIG_FILE,
): FoundConfig {
  if (explicit) return { file: resolve(explicit), source: '--config' };
  const fromEnv = env['DLP_RELAY_CONFIG'];
  if (fromEnv) return { file: resolve(fromEnv), source: 'DLP_RELAY_CONFIG' };
  if (systemFile && existsSync(systemFile)) return { file: systemFile, source: 'system' };
  return { file: undefined, source: 'built-in' };
}

/**
 * Default state directory: the package's var/ when run from a checkout (its sources are beside it),
 * /var/lib/dlp-relay when installed (a built package or container image has no src/).
 */
export function defaultStateDir(packageRoot: string): string {
  return existsSync(join(packageRoot, 'src', 'cli')) ? join(packageRoot, 'var') : SYSTEM_STATE_DIR;
}

/**
 * Config keys that hold paths. `base` says what a relative *default* resolves against: the state
 * directory for data, the package for the files it ships. A relative value in a config file always
 * resolves against that file's directory; one from the environment or the command line against the
 * working directory of the command that set it.
 */
export const PATH_KEYS: ReadonlyArray<{ path: readonly string[]; base: 'state' | 'package'; hasDefault?: true }> = [
  { path: ['spool', 'dir'], base: 'state', hasDefault: true },
  { path: ['outbox', 'dir'], base: 'state', hasDefault: true },
  { path: ['quarantine', 'dir'], base: 'state', hasDefault: true },
  { path: ['console', 'usersFile'], base: 'state', hasDefault: true },
  { path: ['console', 'confirm', 'linkKeyFile'], base: 'state', hasDefault: true },
  { path: ['cas', 'outbox', 'dir'], base: 'state', hasDefault: true },
  { path: ['embeddedDlp', 'policiesFile'], base: 'package', hasDefault: true },
  { path: ['quarantine', 'notifications', 'templateDir'], base: 'package', hasDefault: true },
  { path: ['smtp', 'tls', 'certFile'], base: 'state' },
  { path: ['smtp', 'tls', 'keyFile'], base: 'state' },
  { path: ['smtp', 'auth', 'usersFile'], base: 'state' },
  { path: ['ucwi', 'accessKeyFile'], base: 'state' },
  { path: ['ucwi', 'secretKeyFile'], base: 'state' },
  { path: ['ucwi', 'tls', 'caFile'], base: 'state' },
  { path: ['nextHop', 'tls', 'caFile'], base: 'state' },
  { path: ['nextHop', 'passFile'], base: 'state' },
  { path: ['admin', 'tokenFile'], base: 'state' },
  { path: ['cas', 'tokenFile'], base: 'state' },
  { path: ['policy', 'loop', 'keyFile'], base: 'state' },
  { path: ['policy', 'loop', 'previousKeyFile'], base: 'state' },
];

type Raw = Record<string, unknown>;

export function getPath(obj: unknown, path: readonly string[]): unknown {
  let cur: unknown = obj;
  for (const k of path) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur)) return undefined;
    cur = (cur as Raw)[k];
  }
  return cur;
}

export function setPathIfPresent(obj: unknown, path: readonly string[], value: unknown): void {
  const parent = getPath(obj, path.slice(0, -1));
  if (typeof parent === 'object' && parent !== null && !Array.isArray(parent)) (parent as Raw)[path[path.length - 1]!] = value;
}

/** `null` for a path that has a default means "the default" (config/default.yaml documents them that way). */
export function dropNullDefaults(obj: unknown): void {
  for (const k of PATH_KEYS) {
    if (!k.hasDefault || getPath(obj, k.path) !== null) continue;
    const parent = getPath(obj, k.path.slice(0, -1)) as Raw;
    delete parent[k.path[k.path.length - 1]!];
  }
}

/** Resolves every relative path key present in `obj` against `base` (in place). */
export function resolvePathsIn(obj: unknown, base: string, only?: (path: readonly string[]) => boolean): void {
  for (const k of PATH_KEYS) {
    if (only && !only(k.path)) continue;
    const v = getPath(obj, k.path);
    if (typeof v === 'string' && v !== '' && !isAbsolute(v)) setPathIfPresent(obj, k.path, resolve(base, v));
  }
}

/** A YAML config file read with line numbers, so a problem can name the line that set the value. */
export interface ConfigFileText {
  file: string;
  value: unknown;
  /** 1-based line of the node at this key path (or of its nearest ancestor), or null. */
  lineOf(path: readonly (string | number)[]): number | null;
}

export function readConfigFile(file: string): ConfigFileText {
  const text = readFileSync(file, 'utf8');
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = e.linePos?.[0]?.line;
    throw new Error(`${line ? `line ${line}: ` : ''}${e.message.split('\n')[0]}`);
  }
  return {
    file,
    value: doc.toJS() as unknown,
    lineOf(path) {
      for (let n = path.length; n > 0; n--) {
        const node = doc.getIn(path.slice(0, n), true);
        if (isNode(node) && node.range) return lineCounter.linePos(node.range[0]).line;
      }
      return null;
    },
  };
}

/**
 * Who set each value: "FILE:LINE", "DLP_RELAY_…" or "override". Keys are dotted paths; a lookup walks
 * up to the nearest recorded ancestor, so a problem deep inside an env-set list still names the variable.
 */
export class Origins {
  private readonly byPath = new Map<string, string>();
  private fileText: ConfigFileText | null = null;

  setFile(f: ConfigFileText): void {
    this.fileText = f;
  }

  record(path: readonly string[], origin: string): void {
    this.byPath.set(path.join('.'), origin);
  }

  /** Every leaf path the file sets, recorded with its line. */
  recordFileLeaves(value: unknown, prefix: string[] = []): void {
    if (!this.fileText) return;
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value as Raw)) this.recordFileLeaves(v, [...prefix, k]);
      return;
    }
    if (prefix.length === 0) return;
    const line = this.fileText.lineOf(prefix);
    this.record(prefix, line ? `${this.fileText.file}:${line}` : this.fileText.file);
  }

  /** Origin of the value at `path` (dotted, may be deeper than what was recorded), or null for a built-in default. */
  of(path: string): string | null {
    const parts = path.split('.');
    for (let n = parts.length; n > 0; n--) {
      const hit = this.byPath.get(parts.slice(0, n).join('.'));
      if (hit) return hit;
    }
    // A problem on a map key the file sets but deeper than its leaves (e.g. "(file)").
    if (this.fileText && parts.length > 0) {
      const line = this.fileText.lineOf(parts);
      if (line) return `${this.fileText.file}:${line}`;
    }
    return null;
  }
}

/** Leaf values of a plain object as dotted paths; arrays and `policy.actions` entries count as leaves. */
export function flatten(o: unknown, prefix = ''): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const walk = (v: unknown, p: string): void => {
    if (v && typeof v === 'object' && !Array.isArray(v) && !/^policy\.actions\.\d$/.test(p)) {
      for (const [k, x] of Object.entries(v as Raw)) walk(x, p ? `${p}.${k}` : k);
    } else out.set(p, v);
  };
  walk(o, prefix);
  return out;
}

/** Directory a relative path in `file` resolves against. */
export function fileBase(file: string): string {
  return dirname(resolve(file));
}
