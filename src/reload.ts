// Configuration reload (SIGHUP, `dlp-relay reload`): re-read and validate, apply what can change while running, keep everything old when anything is wrong, and name what needs a restart.
import type { Logger } from 'pino';
import { ConfigError, type ConfigProblem, type FrozenConfig } from './config/load.js';
import { flatten } from './config/sources.js';

/** Settings a running relay can take over; anything else that changed is named as needing a restart. */
export const RELOADABLE: readonly string[] = [
  'policy.',
  'smtp.allowedClients',
  'smtp.tls.certFile',
  'smtp.tls.keyFile',
  'log.level',
  'quarantine.notifications.',
  'cas.',
];

export interface ReloadReport {
  ok: boolean;
  at: string;
  /** "SIGHUP" or "admin-api". */
  trigger: string;
  /** Changed settings now in force. */
  applied: string[];
  /** Changed settings that take effect only after a restart (listen addresses, workers, stores, ...). */
  restartNeeded: string[];
  /** Why the new configuration was refused (ok false); the old one stays in force. */
  problems: ConfigProblem[];
}

/** The running parts a reload touches; `apply` either applies everything or throws having changed nothing it cannot undo. */
export interface ReloadTarget {
  /** Returns extra settings that turned out to need a restart (e.g. STARTTLS switched on). */
  apply(next: FrozenConfig, prev: FrozenConfig, changed: readonly string[]): Promise<string[]>;
}

export function changedPaths(a: FrozenConfig, b: FrozenConfig): string[] {
  const fa = flatten(a);
  const fb = flatten(b);
  const keys = new Set([...fa.keys(), ...fb.keys()]);
  return [...keys].filter((k) => JSON.stringify(fa.get(k)) !== JSON.stringify(fb.get(k))).sort();
}

const reloadable = (path: string): boolean => RELOADABLE.some((p) => (p.endsWith('.') ? path.startsWith(p) : path === p || path.startsWith(`${p}.`)));

export class Reloader {
  private running: Promise<ReloadReport> = Promise.resolve({ ok: true, at: '', trigger: '', applied: [], restartNeeded: [], problems: [] });
  private last: ReloadReport | null = null;
  /** What the process started with: a setting that needs a restart stays pending until it is back to this value or the process restarts. */
  private readonly started: FrozenConfig;
  /** Restart-only changes the target reported (TLS switched on or off, CAS on or off), since start. */
  private readonly pendingExtra = new Set<string>();

  constructor(
    private current: FrozenConfig,
    private readonly load: () => FrozenConfig,
    private readonly target: ReloadTarget,
    private readonly logger: Logger,
  ) {
    this.started = current;
  }

  get config(): FrozenConfig {
    return this.current;
  }

  get lastReport(): ReloadReport | null {
    return this.last;
  }

  /** One reload at a time: a second SIGHUP while one runs waits for it, then reads the file again. */
  reload(trigger: string): Promise<ReloadReport> {
    this.running = this.running.then(() => this.run(trigger));
    return this.running;
  }

  private async run(trigger: string): Promise<ReloadReport> {
    const at = new Date().toISOString();
    const report = (r: Omit<ReloadReport, 'at' | 'trigger'>): ReloadReport => (this.last = { at, trigger, ...r });
    let next: FrozenConfig;
    try {
      next = this.load();
    } catch (err) {
      const problems: ConfigProblem[] = err instanceof ConfigError ? err.problems : [{ path: '(reload)', message: (err as Error).message }];
      for (const p of problems)
        this.logger.error(
          { event: 'reload-refused', trigger, path: p.path, problem: p.message, ...(p.origin ? { origin: p.origin } : {}) },
          `reload refused: ${p.path}: ${p.message}`,
        );
      this.logger.warn({ event: 'reload-refused', trigger, problems: problems.length }, 'reload refused: the running configuration stays in force');
      return report({ ok: false, applied: [], restartNeeded: [], problems });
    }
    const changed = changedPaths(this.current, next).filter((p) => !p.startsWith('secrets.'));
    let extra: string[];
    try {
      extra = await this.target.apply(next, this.current, changed);
    } catch (err) {
      const problems = [{ path: '(apply)', message: (err as Error).message }];
      this.logger.error(
        { event: 'reload-refused', trigger, err: (err as Error).message },
        `reload refused while applying: ${(err as Error).message}; the running configuration stays in force`,
      );
      return report({ ok: false, applied: [], restartNeeded: [], problems });
    }
    this.current = next;
    const applied = changed.filter(reloadable).filter((p) => !extra.some((e) => e.startsWith(p)));
    for (const e of extra) this.pendingExtra.add(e);
    // Everything still waiting for a restart, not only what this reload changed: a second reload must not hide it.
    const pendingSinceStart = changedPaths(this.started, next).filter((p) => !p.startsWith('secrets.') && !reloadable(p));
    // Restart-only settings still run with their start values, so they are compared with those, not the last reload.
    const needs = [...new Set([...pendingSinceStart, ...this.pendingExtra])].sort();
    this.logger.info({ event: 'reloaded', trigger, applied, restartNeeded: needs }, `configuration reloaded: ${applied.length} setting(s) applied`);
    if (needs.length)
      this.logger.warn({ event: 'reload-restart-needed', settings: needs }, `changed settings that need a restart to take effect: ${needs.join(', ')}`);
    return report({ ok: true, applied, restartNeeded: needs, problems: [] });
  }
}

/** What `reload` answers in a process started without a configuration loader (tests, embedded use). */
export function cannotReload(trigger: string): Promise<ReloadReport> {
  return Promise.resolve({
    ok: false,
    at: new Date().toISOString(),
    trigger,
    applied: [],
    restartNeeded: [],
    problems: [{ path: '(reload)', message: 'this process was started without a configuration loader' }],
  });
}
