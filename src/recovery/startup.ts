// Start-up recovery of every on-disk store (spool, local outbox, fs quarantine, fs CAS outbox): removes what a crash left unfinished and logs one line per store with counts.
import { readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { FrozenConfig } from '../config/load.js';
import { prepareSpoolDir } from '../spool/spool.js';
import { TEMP_PREFIX } from '../util/durable-file.js';
import { casOutboxHolder } from '../cas/outbox/fs.js';

/** What one store's sweep did. */
export interface RecoveryReport {
  store: 'spool' | 'outbox' | 'quarantine' | 'cas-outbox';
  dir: string;
  /** Unfinished temp files (`.tmp-*`, or spool files of sessions that were cut off) removed. */
  tempRemoved: number;
  /** Halves of a pair whose other half never came: removed (never acknowledged mail). */
  orphansRemoved: number;
  /** Halves kept on purpose (message bytes we will not delete, or too young to judge); logged at warn. */
  kept: string[];
  /** Set when the sweep was skipped (another live process owns the store). */
  skipped?: string;
}

/**
 * Quarantine orphans younger than this are left alone: the directory may be shared by several relays
 * (see fs-store.ts), and another relay's put writes the .eml a moment before its .json. Longer than
 * the longest data deadline (600 s), so a put that is still running is never mistaken for a crash.
 */
export const SHARED_ORPHAN_GRACE_MS = 15 * 60_000;

async function list(dir: string): Promise<string[] | null> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function remove(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? false : Promise.reject(err);
  }
}

async function removeTemps(dir: string, names: string[]): Promise<number> {
  let n = 0;
  for (const name of names) if (name.startsWith(TEMP_PREFIX) && (await remove(join(dir, name)))) n++;
  return n;
}

/** Pairs `<base>.<a>` / `<base>.<b>` and returns the bases that have only one of them. */
function unpaired(names: string[], a: string, b: string): { onlyA: string[]; onlyB: string[] } {
  const set = new Set(names.filter((n) => !n.startsWith(TEMP_PREFIX)));
  const base = (n: string, ext: string) => n.slice(0, -ext.length - 1);
  return {
    onlyA: names.filter((n) => !n.startsWith(TEMP_PREFIX) && n.endsWith(`.${a}`) && !set.has(`${base(n, a)}.${b}`)),
    onlyB: names.filter((n) => !n.startsWith(TEMP_PREFIX) && n.endsWith(`.${b}`) && !set.has(`${base(n, b)}.${a}`)),
  };
}

/**
 * The local outbox (src/egress/outbox.ts) writes the .json sidecar first and the .eml last, and
 * removes the sidecar when the message write fails; a kill in between leaves a sidecar whose message
 * was never acknowledged: removed. A message without its sidecar cannot come from that order (only
 * from someone deleting files): it is mail, so it is kept and reported.
 * Runs only where no other process writes the directory: a single relay, or a cluster's supervisor before it forks workers.
 */
export async function recoverOutbox(dir: string): Promise<RecoveryReport> {
  const r: RecoveryReport = { store: 'outbox', dir, tempRemoved: 0, orphansRemoved: 0, kept: [] };
  const names = await list(dir);
  if (!names) return r;
  r.tempRemoved = await removeTemps(dir, names);
  const { onlyA: sidecars, onlyB: messages } = unpaired(names, 'json', 'eml');
  for (const n of sidecars) if (await remove(join(dir, n))) r.orphansRemoved++;
  r.kept.push(...messages);
  return r;
}

/**
 * The fs quarantine writes the .eml first and the .json last (and deletes the .json first), so a
 * crash leaves a message without metadata: invisible, never acknowledged as held (or half deleted).
 * Removed once older than SHARED_ORPHAN_GRACE_MS. A .json without its .eml cannot come from a crash:
 * kept and reported, an operator decides.
 */
export async function recoverQuarantine(dir: string, now = Date.now()): Promise<RecoveryReport> {
  const r: RecoveryReport = { store: 'quarantine', dir, tempRemoved: 0, orphansRemoved: 0, kept: [] };
  const names = await list(dir);
  if (!names) return r;
  r.tempRemoved = await removeTemps(dir, names);
  const { onlyA: messages, onlyB: metadata } = unpaired(names, 'eml', 'json');
  for (const n of messages) {
    const st = await stat(join(dir, n)).catch(() => null);
    if (!st) continue;
    if (now - st.mtimeMs < SHARED_ORPHAN_GRACE_MS) r.kept.push(n);
    else if (await remove(join(dir, n))) r.orphansRemoved++;
  }
  r.kept.push(...metadata);
  return r;
}

/** The fs CAS outbox: only snapshot temp files can be left (its torn journal tail is cut by the outbox itself). */
export async function recoverCasOutbox(dir: string): Promise<RecoveryReport> {
  const r: RecoveryReport = { store: 'cas-outbox', dir, tempRemoved: 0, orphansRemoved: 0, kept: [] };
  const names = await list(dir);
  if (!names) return r;
  const holder = await casOutboxHolder(dir);
  if (holder !== null) {
    r.skipped = `in use by process ${holder}`;
    return r;
  }
  r.tempRemoved = await removeTemps(dir, names);
  return r;
}

function log(logger: Logger, r: RecoveryReport): void {
  const fields = {
    event: 'recovery',
    store: r.store,
    dir: r.dir,
    tempRemoved: r.tempRemoved,
    orphansRemoved: r.orphansRemoved,
    kept: r.kept.length,
    ...(r.skipped ? { skipped: r.skipped } : {}),
  };
  if (r.kept.length) logger.warn({ ...fields, keptFiles: r.kept.slice(0, 20) }, `start-up recovery of the ${r.store}: unpaired files kept for an operator`);
  else logger.info(fields, `start-up recovery of the ${r.store}`);
}

/**
 * Sweeps the stores at start, before anything writes to them. `spoolDir` is this process's own spool
 * directory. A cluster worker (`worker: true`) sweeps only that: the supervisor has already swept the
 * shared stores before forking, and a restarting worker must not touch files its siblings are writing.
 */
export async function recoverStores(c: FrozenConfig, logger: Logger, opts: { spoolDir: string; worker: boolean }): Promise<RecoveryReport[]> {
  const log_ = logger.child({ component: 'recovery' });
  const reports: RecoveryReport[] = [];
  const spoolRemoved = await prepareSpoolDir(opts.spoolDir);
  reports.push({ store: 'spool', dir: opts.spoolDir, tempRemoved: spoolRemoved, orphansRemoved: 0, kept: [] });
  if (!opts.worker) {
    reports.push(await recoverOutbox(c.outbox.dir));
    if (!c.quarantine.url) reports.push(await recoverQuarantine(c.quarantine.dir));
    if (c.cas.enabled && c.cas.outbox.backend === 'fs') reports.push(await recoverCasOutbox(c.cas.outbox.dir));
  }
  for (const r of reports) log(log_, r);
  return reports;
}
