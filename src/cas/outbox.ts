// Durable blocked-list push outbox (filesystem journal or shared PostgreSQL table) and the worker that drains it to CAS.
import { open, readFile, mkdir, unlink, realpath, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Pool } from 'pg';
import type { Logger } from '../observability/logger.js';
import { writeDurably } from '../util/durable-file.js';
import { migrate, type Migration } from '../util/pg-migrate.js';
import { CasError, type CasApi, type BlockedLists } from './client.js';
import { ListCapacity, LIST_FULL_RECHECK_MS, countByList, isListFullError, listsNamed } from './capacity.js';
import {
  CAS_LISTS,
  MAX_ITEMS_PER_LIST,
  compareKey,
  isCasList,
  itemProblem,
  normalizeItem,
  type CasList,
  type CasRuleAction,
  type CasRules,
} from './items.js';

export type CasOutboxStatus = 'pending' | 'inflight' | 'done' | 'failed';

export interface CasOutboxItem {
  list: CasList;
  value: string;
  action: CasRuleAction;
  /** Why it was queued (e.g. "block verdict queryId=…", "ttl expired"); shown by `dlp-relay cas outbox`. */
  reason: string;
}

export interface CasListItem {
  list: CasList;
  value: string;
}

export interface CasOutboxEntry extends CasOutboxItem {
  id: string;
  status: CasOutboxStatus;
  attempts: number;
  lastError: string | null;
  /** Epoch ms; a pending entry is not pushed before this. */
  nextAttemptAt: number;
  createdAt: number;
  updatedAt: number;
}

export interface CasOutboxStats {
  /** Waiting or being pushed right now. */
  pending: number;
  /** Gave up after the configured attempts; only `retryFailed` (CLI) brings them back. */
  failed: number;
  /** Pushed since the store was created (purged history included). */
  done: number;
}

export interface CasRetrySchedule {
  /** Attempts after which an entry becomes `failed`. */
  maxAttempts: number;
  baseMs: number;
  maxMs: number;
}

/**
 * The durable queue between the SMTP path and CAS. `enqueue` is the only method the relay's mail
 * path calls: it writes locally and never touches the network. Everything else is for the pusher,
 * the CLI and metrics. Semantics shared by both backends:
 * - values are normalised (addresses and hashes lowercased) and invalid ones dropped at enqueue;
 * - one open entry (pending, inflight or failed) per list+value+action: a repeat is a no-op, a repeat
 *   of a failed one revives it;
 * - last intent wins: queuing `create` for a value removes a not-yet-sent `delete` of it and vice versa;
 * - a `create` repeated within `suppressRepeatMs` of its successful push is dropped, so a sender
 *   blocked a thousand times in a spam run costs one push, not one per push cycle.
 */
export interface CasOutbox {
  enqueue(items: CasOutboxItem[]): Promise<void>;
  /** Leases up to `limit` due entries; an entry leased and not settled within `leaseMs` becomes due again. */
  claim(opts: { limit: number; leaseMs: number; now?: number }): Promise<CasOutboxEntry[]>;
  /**
   * Settles leased entries as pushed. `added` upserts the TTL ledger (what the relay put on the list),
   * `refreshed` only restarts the clock of items already in it, `removed` takes items out of it.
   */
  markDone(ids: string[], opts?: { now?: number; added?: CasListItem[]; refreshed?: CasListItem[]; removed?: CasListItem[] }): Promise<void>;
  /**
   * Settles leased entries as not pushed: back to pending with backoff, or `failed` once
   * `maxAttempts` is reached or `permanent` (a 400 for a single item). `countAttempt: false` is for
   * entries never sent because CAS was already known to be down.
   */
  markFailed(ids: string[], opts: { error: string; schedule: CasRetrySchedule; now?: number; permanent?: boolean; countAttempt?: boolean }): Promise<void>;
  /** Open entries (pending, inflight, failed by default), oldest first. */
  list(opts?: { statuses?: CasOutboxStatus[]; limit?: number }): Promise<CasOutboxEntry[]>;
  /** Failed entries back to pending with a fresh attempt count; returns how many. */
  retryFailed(now?: number): Promise<number>;
  stats(): Promise<CasOutboxStats>;
  /** Queues `delete` for ledger items added before `olderThan` that have no open entry; returns how many. */
  expireAdded(opts: { olderThan: number; now?: number }): Promise<number>;
  /** The TTL ledger: what the relay itself added and when. */
  addedItems(): Promise<Array<CasListItem & { addedAt: number }>>;
  /** Forgets done entries settled before `olderThan` (they still count in `stats().done`). */
  purgeDone(olderThan: number): Promise<number>;
  close(): Promise<void>;
}

export interface CasOutboxOptions {
  logger?: Logger;
  /** See the interface comment; 0 disables. Default one hour. */
  suppressRepeatMs?: number;
}

const k2 = (list: string, value: string) => `${list}\u0000${value}`;
const k3 = (list: string, value: string, action: string) => `${list}\u0000${value}\u0000${action}`;
const opposite = (a: CasRuleAction): CasRuleAction => (a === 'create' ? 'delete' : 'create');

/** Normalise, validate and de-duplicate one enqueue call (last intent per list+value wins), in a stable order. */
function prepare(items: CasOutboxItem[], logger?: Logger): CasOutboxItem[] {
  const byKey = new Map<string, CasOutboxItem>();
  for (const it of items) {
    if (!isCasList(it.list) || (it.action !== 'create' && it.action !== 'delete')) {
      logger?.warn({ list: it.list, action: it.action }, 'CAS outbox: unknown list or action dropped');
      continue;
    }
    const value = normalizeItem(it.list, String(it.value ?? ''));
    const problem = itemProblem(it.list, value);
    if (problem) {
      // One malformed item could get a whole 2,048-item request rejected (cas.md §3): refuse it here.
      logger?.warn({ list: it.list, value, problem }, 'CAS outbox: invalid item dropped');
      continue;
    }
    const key = k2(it.list, value);
    byKey.delete(key);
    byKey.set(key, { list: it.list, value, action: it.action, reason: String(it.reason ?? '').slice(0, 500) });
  }
  return [...byKey.values()].sort((a, b) => (a.list < b.list ? -1 : a.list > b.list ? 1 : a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
}

/** Retry delay after the `attempts`-th failure: exponential, capped, with the upper half jittered so relays spread out. */
export function outboxBackoffMs(attempts: number, schedule: CasRetrySchedule, random: () => number = Math.random): number {
  const cap = Math.min(schedule.maxMs, schedule.baseMs * 2 ** Math.min(40, Math.max(0, attempts - 1)));
  return Math.round(cap / 2 + (random() * cap) / 2);
}

// ---------------------------------------------------------------------------------------------
// Filesystem backend
// ---------------------------------------------------------------------------------------------

interface FsEntry {
  id: number;
  list: CasList;
  value: string;
  action: CasRuleAction;
  reason: string;
  status: CasOutboxStatus;
  attempts: number;
  lastError: string | null;
  nextAttemptAt: number;
  createdAt: number;
  updatedAt: number;
  leaseUntil: number;
}

type FsRecord =
  | { t: 'snap'; seq: number; doneCount: number; entries: FsEntry[]; added: Array<[CasList, string, number]>; lastCreate: Array<[CasList, string, number]> }
  | { t: 'enq'; id: number; list: CasList; value: string; action: CasRuleAction; reason: string; at: number }
  | { t: 'drop'; ids: number[] }
  | { t: 'revive'; ids: number[]; at: number }
  | { t: 'done'; ids: number[]; at: number; added?: Array<[CasList, string]>; refreshed?: Array<[CasList, string]>; removed?: Array<[CasList, string]> }
  | { t: 'fail'; u: Array<[number, number, CasOutboxStatus, number]>; err: string; at: number }
  | { t: 'retry'; ids: number[]; at: number }
  | { t: 'purge'; ids: number[] };

/** Directories held by this process, so two instances in one process cannot share a journal either. */
const heldDirs = new Set<string>();

/**
 * Single-process outbox in one append-only journal (`journal.jsonl`) per directory.
 *
 * Why a journal rather than one file per entry: an enqueue batch (sender + hashes + URLs of one
 * message) becomes one write and one fsync, instead of a create+fsync+rename+directory-fsync per item;
 * settling 2,048 entries after a push is likewise one record. The journal is replayed into memory at
 * start and rewritten as a snapshot (temp file, fsync, rename) once it is mostly history. A torn last
 * line from a crash is cut off at start; anything it held was never acknowledged. Leases are kept in
 * memory only: after a restart an in-flight entry is simply pending again, and pushing it a second
 * time is harmless (adding a listed value is a no-op). A lock file with our pid keeps a second
 * process out; use the PostgreSQL backend for several relays.
 */
export class FsCasOutbox implements CasOutbox {
  readonly dir: string;
  private readonly logger: Logger | undefined;
  private readonly suppressRepeatMs: number;
  private readonly journalPath: string;
  private readonly lockPath: string;
  private ready: Promise<void> | null = null;
  private fh: FileHandle | null = null;
  private lockKey: string | null = null;
  private closed = false;
  private seq = 0;
  private doneCount = 0;
  private records = 0;
  private readonly entries = new Map<number, FsEntry>();
  /** list+value+action → id of the one open (pending/inflight/failed) entry. */
  private readonly open = new Map<string, number>();
  /** list+value → when the last `create` was pushed, for repeat suppression; cleared by a pushed `delete`. */
  private readonly lastCreate = new Map<string, number>();
  /** The TTL ledger: list+value → added at. */
  private readonly added = new Map<string, { list: CasList; value: string; at: number }>();
  /** Group commit: lines waiting for the next write+fsync, and who waits for it. */
  private pendingLines: string[] = [];
  private waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private flushing: Promise<void> | null = null;

  constructor(dir: string, opts: CasOutboxOptions = {}) {
    this.dir = dir;
    this.logger = opts.logger;
    this.suppressRepeatMs = opts.suppressRepeatMs ?? 3_600_000;
    this.journalPath = join(dir, 'journal.jsonl');
    this.lockPath = join(dir, 'outbox.lock');
  }

  /** Opens (or creates) the journal; called implicitly by every method, explicit for a fail-fast start. */
  init(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('CAS outbox is closed'));
    this.ready ??= this.doInit();
    return this.ready;
  }

  private async doInit(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await this.lock();
    let text = '';
    try {
      text = await readFile(this.journalPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const lastNl = text.lastIndexOf('\n');
    const good = lastNl < 0 ? '' : text.slice(0, lastNl + 1);
    if (good.length !== text.length) {
      this.logger?.warn({ dir: this.dir, bytes: text.length - good.length }, 'CAS outbox: torn last journal line discarded');
      // Rewrite without the torn tail, so the next append starts on a line of its own.
      await writeDurably(this.journalPath, good);
    }
    const lines = good.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      if (!line) continue;
      let rec: FsRecord;
      try {
        rec = JSON.parse(line) as FsRecord;
      } catch {
        throw new Error(`CAS outbox journal ${this.journalPath} is corrupt at line ${i + 1}; refusing to guess`);
      }
      this.apply(rec);
      this.records++;
    }
    // Whatever was in flight when the previous process stopped is simply due again.
    for (const e of this.entries.values()) if (e.status === 'inflight') e.status = 'pending';
    this.fh = await open(this.journalPath, 'a', 0o600);
    if (this.records > 1000 && this.records > 4 * this.entries.size) await this.compact();
  }

  private async lock(): Promise<void> {
    const key = await realpath(this.dir);
    if (heldDirs.has(key)) throw new Error(`CAS outbox ${this.dir} is already open in this process`);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await open(this.lockPath, 'wx', 0o600);
        await fh.writeFile(`${process.pid}\n`);
        await fh.close();
        heldDirs.add(key);
        this.lockKey = key;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = Number((await readFile(this.lockPath, 'utf8').catch(() => '')).trim());
        if (pid > 0 && pid !== process.pid && pidAlive(pid)) throw new Error(`CAS outbox ${this.dir} is in use by process ${pid}`, { cause: err });
        // Stale lock of a process that is gone (or of an earlier life of this pid): take it over.
        await unlink(this.lockPath).catch(() => {});
      }
    }
    throw new Error(`CAS outbox ${this.dir}: could not take the lock`);
  }

  private apply(rec: FsRecord): void {
    switch (rec.t) {
      case 'snap':
        this.seq = rec.seq;
        this.doneCount = rec.doneCount;
        this.entries.clear();
        this.open.clear();
        this.added.clear();
        this.lastCreate.clear();
        for (const e of rec.entries) this.insert({ ...e, leaseUntil: 0 });
        for (const [list, value, at] of rec.added) this.added.set(k2(list, value), { list, value, at });
        for (const [list, value, at] of rec.lastCreate) this.lastCreate.set(k2(list, value), at);
        break;
      case 'enq':
        this.seq = Math.max(this.seq, rec.id);
        this.insert({
          id: rec.id,
          list: rec.list,
          value: rec.value,
          action: rec.action,
          reason: rec.reason,
          status: 'pending',
          attempts: 0,
          lastError: null,
          nextAttemptAt: rec.at,
          createdAt: rec.at,
          updatedAt: rec.at,
          leaseUntil: 0,
        });
        break;
      case 'drop':
        for (const id of rec.ids) this.remove(id);
        break;
      case 'revive':
      case 'retry':
        for (const id of rec.ids) {
          const e = this.entries.get(id);
          if (!e) continue;
          Object.assign(e, { status: 'pending', attempts: 0, lastError: null, nextAttemptAt: rec.at, updatedAt: rec.at, leaseUntil: 0 });
        }
        break;
      case 'done':
        for (const id of rec.ids) {
          const e = this.entries.get(id);
          if (!e || e.status === 'done') continue;
          this.open.delete(k3(e.list, e.value, e.action));
          Object.assign(e, { status: 'done', lastError: null, updatedAt: rec.at, leaseUntil: 0 });
          this.doneCount++;
          if (e.action === 'create') this.lastCreate.set(k2(e.list, e.value), rec.at);
          else this.lastCreate.delete(k2(e.list, e.value));
        }
        for (const [list, value] of rec.added ?? []) this.added.set(k2(list, value), { list, value, at: rec.at });
        for (const [list, value] of rec.refreshed ?? []) {
          const a = this.added.get(k2(list, value));
          if (a) a.at = rec.at;
        }
        for (const [list, value] of rec.removed ?? []) this.added.delete(k2(list, value));
        break;
      case 'fail':
        for (const [id, attempts, status, next] of rec.u) {
          const e = this.entries.get(id);
          if (!e) continue;
          Object.assign(e, { attempts, status, nextAttemptAt: next, lastError: rec.err, updatedAt: rec.at, leaseUntil: 0 });
        }
        break;
      case 'purge':
        for (const id of rec.ids) this.remove(id);
        break;
    }
  }

  private insert(e: FsEntry): void {
    this.entries.set(e.id, e);
    if (e.status !== 'done') this.open.set(k3(e.list, e.value, e.action), e.id);
  }

  private remove(id: number): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    const key = k3(e.list, e.value, e.action);
    if (this.open.get(key) === id) this.open.delete(key);
  }

  /** Applies records in memory at once and resolves when they are on disk (one fsync per flush). */
  private commit(recs: FsRecord[]): Promise<void> {
    if (recs.length === 0) return Promise.resolve();
    for (const r of recs) {
      this.apply(r);
      this.pendingLines.push(JSON.stringify(r));
    }
    this.records += recs.length;
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    void this.flush();
    return p;
  }

  private flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    this.flushing = (async () => {
      // Bounded: every pass drains what was queued; commits arriving meanwhile join the next pass.
      while (this.pendingLines.length > 0) {
        const lines = this.pendingLines;
        const waiters = this.waiters;
        this.pendingLines = [];
        this.waiters = [];
        try {
          if (!this.fh) throw new Error('CAS outbox is closed');
          await this.fh.write(lines.join('\n') + '\n');
          await this.fh.datasync();
          for (const w of waiters) w.resolve();
        } catch (err) {
          for (const w of waiters) w.reject(err);
        }
      }
      this.flushing = null;
      if (this.records > 10_000 && this.records > 4 * this.entries.size) await this.compact().catch((err: unknown) => this.logger?.warn({ err }, 'CAS outbox compaction failed'));
    })();
    return this.flushing;
  }

  /** Replaces the journal by one snapshot line; runs only between flushes, so no append is lost. */
  private async compact(): Promise<void> {
    if (this.pendingLines.length > 0 || !this.fh) return;
    const snap: FsRecord = {
      t: 'snap',
      seq: this.seq,
      doneCount: this.doneCount,
      entries: [...this.entries.values()].map((e) => ({ ...e, status: e.status === 'inflight' ? 'pending' : e.status, leaseUntil: 0 })),
      added: [...this.added.values()].map((a) => [a.list, a.value, a.at]),
      lastCreate: [...this.lastCreate.entries()].map(([key, at]) => {
        const [list, value] = key.split('\u0000') as [CasList, string];
        return [list, value, at];
      }),
    };
    const old = this.fh;
    await writeDurably(this.journalPath, JSON.stringify(snap) + '\n');
    this.fh = await open(this.journalPath, 'a', 0o600);
    await old.close().catch(() => {});
    this.records = 1;
  }

  async enqueue(items: CasOutboxItem[]): Promise<void> {
    await this.init();
    const now = Date.now();
    const recs: FsRecord[] = [];
    // prepare() leaves one item per list+value, so the items of one call never interfere with each other.
    for (const it of prepare(items, this.logger)) {
      let droppedOpposite = false;
      const oppId = this.open.get(k3(it.list, it.value, opposite(it.action)));
      const opp = oppId === undefined ? undefined : this.entries.get(oppId);
      if (opp && opp.status !== 'inflight') {
        recs.push({ t: 'drop', ids: [opp.id] });
        droppedOpposite = true;
      }
      const existingId = this.open.get(k3(it.list, it.value, it.action));
      if (existingId !== undefined) {
        if (this.entries.get(existingId)?.status === 'failed') recs.push({ t: 'revive', ids: [existingId], at: now });
        continue;
      }
      const last = this.lastCreate.get(k2(it.list, it.value));
      if (it.action === 'create' && !droppedOpposite && last !== undefined && this.suppressRepeatMs > 0 && now - last < this.suppressRepeatMs) continue;
      recs.push({ t: 'enq', id: ++this.seq, list: it.list, value: it.value, action: it.action, reason: it.reason, at: now });
    }
    await this.commit(recs);
  }

  async claim(opts: { limit: number; leaseMs: number; now?: number }): Promise<CasOutboxEntry[]> {
    await this.init();
    const now = opts.now ?? Date.now();
    const busy = new Set<string>();
    for (const e of this.entries.values()) if (e.status === 'inflight' && e.leaseUntil > now) busy.add(k2(e.list, e.value));
    const out: CasOutboxEntry[] = [];
    for (const e of this.entries.values()) {
      if (out.length >= opts.limit) break;
      const due = (e.status === 'pending' && e.nextAttemptAt <= now) || (e.status === 'inflight' && e.leaseUntil <= now);
      // Never two entries for one value in flight: a delete must not overtake the create it follows.
      if (!due || busy.has(k2(e.list, e.value))) continue;
      e.status = 'inflight';
      e.leaseUntil = now + opts.leaseMs;
      busy.add(k2(e.list, e.value));
      out.push(view(e));
    }
    return out;
  }

  async markDone(ids: string[], opts: { now?: number; added?: CasListItem[]; refreshed?: CasListItem[]; removed?: CasListItem[] } = {}): Promise<void> {
    await this.init();
    const now = opts.now ?? Date.now();
    const pairs = (xs?: CasListItem[]) => (xs && xs.length ? xs.map((x): [CasList, string] => [x.list, x.value]) : undefined);
    const rec: FsRecord = { t: 'done', ids: ids.map(Number).filter((id) => this.entries.get(id)?.status === 'inflight'), at: now };
    const added = pairs(opts.added);
    const refreshed = pairs(opts.refreshed);
    const removed = pairs(opts.removed);
    if (added) rec.added = added;
    if (refreshed) rec.refreshed = refreshed;
    if (removed) rec.removed = removed;
    if (rec.ids.length === 0 && !added && !refreshed && !removed) return;
    await this.commit([rec]);
  }

  async markFailed(
    ids: string[],
    opts: { error: string; schedule: CasRetrySchedule; now?: number; permanent?: boolean; countAttempt?: boolean },
  ): Promise<void> {
    await this.init();
    const now = opts.now ?? Date.now();
    const u: Array<[number, number, CasOutboxStatus, number]> = [];
    for (const id of ids.map(Number)) {
      const e = this.entries.get(id);
      if (!e || e.status !== 'inflight') continue;
      const attempts = opts.countAttempt === false ? e.attempts : e.attempts + 1;
      const failed = opts.permanent === true || attempts >= opts.schedule.maxAttempts;
      u.push([id, attempts, failed ? 'failed' : 'pending', failed ? now : now + outboxBackoffMs(Math.max(1, attempts), opts.schedule)]);
    }
    if (u.length) await this.commit([{ t: 'fail', u, err: opts.error.slice(0, 1000), at: now }]);
  }

  async list(opts: { statuses?: CasOutboxStatus[]; limit?: number } = {}): Promise<CasOutboxEntry[]> {
    await this.init();
    const statuses = new Set(opts.statuses ?? ['pending', 'inflight', 'failed']);
    const out: CasOutboxEntry[] = [];
    for (const e of this.entries.values()) {
      if (out.length >= (opts.limit ?? 1000)) break;
      if (statuses.has(e.status)) out.push(view(e));
    }
    return out;
  }

  async retryFailed(now = Date.now()): Promise<number> {
    await this.init();
    const ids = [...this.entries.values()].filter((e) => e.status === 'failed').map((e) => e.id);
    if (ids.length) await this.commit([{ t: 'retry', ids, at: now }]);
    return ids.length;
  }

  async stats(): Promise<CasOutboxStats> {
    await this.init();
    let pending = 0;
    let failed = 0;
    for (const e of this.entries.values()) {
      if (e.status === 'pending' || e.status === 'inflight') pending++;
      else if (e.status === 'failed') failed++;
    }
    return { pending, failed, done: this.doneCount };
  }

  async expireAdded(opts: { olderThan: number; now?: number }): Promise<number> {
    await this.init();
    const now = opts.now ?? Date.now();
    const recs: FsRecord[] = [];
    for (const a of this.added.values()) {
      if (a.at >= opts.olderThan) continue;
      // Skip anything with an open entry: a pending create means it offended again and must stay.
      if (this.open.has(k3(a.list, a.value, 'create')) || this.open.has(k3(a.list, a.value, 'delete'))) continue;
      const id = ++this.seq;
      recs.push({ t: 'enq', id, list: a.list, value: a.value, action: 'delete', reason: 'ttl expired', at: now });
    }
    await this.commit(recs);
    return recs.length;
  }

  async addedItems(): Promise<Array<CasListItem & { addedAt: number }>> {
    await this.init();
    return [...this.added.values()].map((a) => ({ list: a.list, value: a.value, addedAt: a.at }));
  }

  async purgeDone(olderThan: number): Promise<number> {
    await this.init();
    const ids = [...this.entries.values()].filter((e) => e.status === 'done' && e.updatedAt < olderThan).map((e) => e.id);
    if (ids.length) await this.commit([{ t: 'purge', ids }]);
    for (const [key, at] of this.lastCreate) if (at < olderThan - this.suppressRepeatMs) this.lastCreate.delete(key);
    return ids.length;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.ready?.catch(() => {});
    await this.flushing;
    this.closed = true;
    await this.fh?.close().catch(() => {});
    this.fh = null;
    if (this.lockKey) {
      await unlink(this.lockPath).catch(() => {});
      heldDirs.delete(this.lockKey);
      this.lockKey = null;
    }
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function view(e: FsEntry): CasOutboxEntry {
  return {
    id: String(e.id),
    list: e.list,
    value: e.value,
    action: e.action,
    reason: e.reason,
    status: e.status,
    attempts: e.attempts,
    lastError: e.lastError,
    nextAttemptAt: e.nextAttemptAt,
    createdAt: e.createdAt,
    updatedAt: e.updatedAt,
  };
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL backend
// ---------------------------------------------------------------------------------------------

export const CAS_OUTBOX_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'CAS blocked-list outbox, TTL ledger and counters',
    sql: `
      CREATE TABLE cas_outbox (
        id bigserial PRIMARY KEY,
        list text NOT NULL CHECK (list IN ('senders', 'urls', 'filehashes', 'file256hashes')),
        value text NOT NULL,
        action text NOT NULL CHECK (action IN ('create', 'delete')),
        reason text NOT NULL DEFAULT '',
        status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'inflight', 'done', 'failed')),
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        next_attempt_at timestamptz NOT NULL,
        lease_until timestamptz,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
      );
      -- One open entry per list+value+action; enqueue relies on it for de-duplication across relays.
      CREATE UNIQUE INDEX cas_outbox_open_uq ON cas_outbox (list, value, action) WHERE status IN ('pending', 'inflight', 'failed');
      CREATE INDEX cas_outbox_due_idx ON cas_outbox (next_attempt_at, id) WHERE status = 'pending';
      CREATE INDEX cas_outbox_value_idx ON cas_outbox (list, value);
      CREATE INDEX cas_outbox_done_idx ON cas_outbox (updated_at) WHERE status = 'done';
      CREATE TABLE cas_added_items (
        list text NOT NULL,
        value text NOT NULL,
        added_at timestamptz NOT NULL,
        PRIMARY KEY (list, value)
      );
      CREATE TABLE cas_outbox_counters (
        name text PRIMARY KEY,
        value bigint NOT NULL
      );
      INSERT INTO cas_outbox_counters (name, value) VALUES ('purged_done', 0);
    `,
  },
];

interface PgRow {
  id: string;
  list: CasList;
  value: string;
  action: CasRuleAction;
  reason: string;
  status: CasOutboxStatus;
  attempts: number;
  last_error: string | null;
  next_attempt_at: Date;
  created_at: Date;
  updated_at: Date;
}

function pgView(r: PgRow): CasOutboxEntry {
  return {
    id: String(r.id),
    list: r.list,
    value: r.value,
    action: r.action,
    reason: r.reason,
    status: r.status,
    attempts: r.attempts,
    lastError: r.last_error,
    nextAttemptAt: r.next_attempt_at.getTime(),
    createdAt: r.created_at.getTime(),
    updatedAt: r.updated_at.getTime(),
  };
}

const unnestItems = (xs: CasListItem[]) => [xs.map((x) => x.list), xs.map((x) => x.value)];

/**
 * Outbox in PostgreSQL, shared by every relay on the database. Claims use `FOR UPDATE SKIP LOCKED`
 * in a short statement that moves rows to `inflight` with a lease, so concurrent pushers never get
 * the same row and no transaction stays open during the HTTP call. A relay that dies mid-push leaves
 * its rows leased; they become due again when the lease ends. Times are passed from the caller's
 * clock so tests (and the TTL) can move time without touching the database's.
 */
export class PgCasOutbox implements CasOutbox {
  private readonly pool: Pool;
  private readonly logger: Logger | undefined;
  private readonly suppressRepeatMs: number;
  private ready: Promise<void> | null = null;

  constructor(pool: Pool, opts: CasOutboxOptions = {}) {
    this.pool = pool;
    this.logger = opts.logger;
    this.suppressRepeatMs = opts.suppressRepeatMs ?? 3_600_000;
  }

  /** Creates or upgrades the tables; called implicitly by every method, explicit for a fail-fast start. */
  init(): Promise<void> {
    if (!this.ready) {
      const p = migrate(this.pool, 'cas', CAS_OUTBOX_MIGRATIONS).then(() => undefined);
      // A failed migration (database down at boot) must be retried by the next call, not cached forever.
      p.catch(() => {
        if (this.ready === p) this.ready = null;
      });
      this.ready = p;
    }
    return this.ready;
  }

  async enqueue(items: CasOutboxItem[]): Promise<void> {
    const ready = prepare(items, this.logger);
    if (ready.length === 0) return;
    await this.init();
    const now = new Date();
    const suppressSince = new Date(this.suppressRepeatMs > 0 ? now.getTime() - this.suppressRepeatMs : 8.64e15);
    // One statement: drop the opposite not-yet-sent intent, then insert, or revive a failed twin.
    await this.pool.query(
      `WITH input AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(list, value, action, reason)
       ), dropped AS (
         DELETE FROM cas_outbox o USING input t
          WHERE o.list = t.list AND o.value = t.value AND o.action <> t.action AND o.status IN ('pending', 'failed')
          RETURNING o.list, o.value
       )
       INSERT INTO cas_outbox (list, value, action, reason, status, attempts, next_attempt_at, created_at, updated_at)
       SELECT t.list, t.value, t.action, t.reason, 'pending', 0, $5::timestamptz, $5::timestamptz, $5::timestamptz FROM input t
        WHERE NOT (t.action = 'create'
          AND NOT EXISTS (SELECT 1 FROM dropped d WHERE d.list = t.list AND d.value = t.value)
          AND EXISTS (SELECT 1 FROM cas_outbox c
                       WHERE c.list = t.list AND c.value = t.value AND c.action = 'create' AND c.status = 'done' AND c.updated_at > $6::timestamptz
                         AND NOT EXISTS (SELECT 1 FROM cas_outbox x WHERE x.list = t.list AND x.value = t.value
                                            AND x.action = 'delete' AND x.status = 'done' AND x.id > c.id)))
        ORDER BY t.list, t.value
       ON CONFLICT (list, value, action) WHERE status IN ('pending', 'inflight', 'failed')
       DO UPDATE SET status = 'pending', attempts = 0, last_error = NULL, reason = EXCLUDED.reason,
                     next_attempt_at = EXCLUDED.next_attempt_at, updated_at = EXCLUDED.updated_at
        WHERE cas_outbox.status = 'failed'`,
      [ready.map((i) => i.list), ready.map((i) => i.value), ready.map((i) => i.action), ready.map((i) => i.reason), now, suppressSince],
    );
  }

  async claim(opts: { limit: number; leaseMs: number; now?: number }): Promise<CasOutboxEntry[]> {
    await this.init();
    const now = new Date(opts.now ?? Date.now());
    const leaseUntil = new Date(now.getTime() + opts.leaseMs);
    const { rows } = await this.pool.query<PgRow>(
      `WITH due AS (
         SELECT o.id FROM cas_outbox o
          WHERE ((o.status = 'pending' AND o.next_attempt_at <= $1) OR (o.status = 'inflight' AND o.lease_until <= $1))
            AND NOT EXISTS (SELECT 1 FROM cas_outbox b WHERE b.list = o.list AND b.value = o.value AND b.id <> o.id
                              AND b.status = 'inflight' AND b.lease_until > $1)
          ORDER BY o.id
          LIMIT $2
          FOR UPDATE SKIP LOCKED
       )
       UPDATE cas_outbox o SET status = 'inflight', lease_until = $3, updated_at = $1
         FROM due WHERE o.id = due.id
       RETURNING o.id, o.list, o.value, o.action, o.reason, o.status, o.attempts, o.last_error, o.next_attempt_at, o.created_at, o.updated_at`,
      [now, opts.limit, leaseUntil],
    );
    return rows.map(pgView).sort((a, b) => Number(a.id) - Number(b.id));
  }

  async markDone(ids: string[], opts: { now?: number; added?: CasListItem[]; refreshed?: CasListItem[]; removed?: CasListItem[] } = {}): Promise<void> {
    await this.init();
    const now = new Date(opts.now ?? Date.now());
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      if (ids.length) {
        await client.query(`UPDATE cas_outbox SET status = 'done', lease_until = NULL, last_error = NULL, updated_at = $2 WHERE id = ANY($1::bigint[]) AND status = 'inflight'`, [
          ids,
          now,
        ]);
      }
      if (opts.added?.length) {
        await client.query(
          `INSERT INTO cas_added_items (list, value, added_at) SELECT l, v, $3::timestamptz FROM unnest($1::text[], $2::text[]) AS t(l, v)
           ON CONFLICT (list, value) DO UPDATE SET added_at = EXCLUDED.added_at`,
          [...unnestItems(opts.added), now],
        );
      }
      if (opts.refreshed?.length) {
        await client.query(
          `UPDATE cas_added_items a SET added_at = $3 FROM unnest($1::text[], $2::text[]) AS t(l, v) WHERE a.list = t.l AND a.value = t.v`,
          [...unnestItems(opts.refreshed), now],
        );
      }
      if (opts.removed?.length) {
        await client.query(`DELETE FROM cas_added_items a USING unnest($1::text[], $2::text[]) AS t(l, v) WHERE a.list = t.l AND a.value = t.v`, unnestItems(opts.removed));
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  async markFailed(
    ids: string[],
    opts: { error: string; schedule: CasRetrySchedule; now?: number; permanent?: boolean; countAttempt?: boolean },
  ): Promise<void> {
    if (ids.length === 0) return;
    await this.init();
    const now = new Date(opts.now ?? Date.now());
    const inc = opts.countAttempt === false ? 0 : 1;
    // Same formula as outboxBackoffMs, evaluated per row since each row has its own attempt count.
    await this.pool.query(
      `UPDATE cas_outbox SET
         attempts = attempts + $3::int,
         last_error = $4::text,
         lease_until = NULL,
         updated_at = $2::timestamptz,
         status = CASE WHEN $5::boolean OR attempts + $3::int >= $6::int THEN 'failed' ELSE 'pending' END,
         next_attempt_at = CASE WHEN $5::boolean OR attempts + $3::int >= $6::int THEN $2::timestamptz
           ELSE $2::timestamptz + LEAST($8::float8, $7::float8 * power(2, LEAST(40, GREATEST(0, attempts + $3::int - 1)))) * (0.5 + random() / 2) * interval '1 millisecond' END
       WHERE id = ANY($1::bigint[]) AND status = 'inflight'`,
      [ids, now, inc, opts.error.slice(0, 1000), opts.permanent === true, opts.schedule.maxAttempts, opts.schedule.baseMs, opts.schedule.maxMs],
    );
  }

  async list(opts: { statuses?: CasOutboxStatus[]; limit?: number } = {}): Promise<CasOutboxEntry[]> {
    await this.init();
    const { rows } = await this.pool.query<PgRow>(
      `SELECT id, list, value, action, reason, status, attempts, last_error, next_attempt_at, created_at, updated_at
         FROM cas_outbox WHERE status = ANY($1::text[]) ORDER BY id LIMIT $2`,
      [opts.statuses ?? ['pending', 'inflight', 'failed'], opts.limit ?? 1000],
    );
    return rows.map(pgView);
  }

  async retryFailed(now = Date.now()): Promise<number> {
    await this.init();
    const r = await this.pool.query(
      `UPDATE cas_outbox SET status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = $1, updated_at = $1 WHERE status = 'failed'`,
      [new Date(now)],
    );
    return r.rowCount ?? 0;
  }

  async stats(): Promise<CasOutboxStats> {
    await this.init();
    const { rows } = await this.pool.query<{ pending: string; failed: string; done: string }>(
      `SELECT count(*) FILTER (WHERE status IN ('pending', 'inflight')) AS pending,
              count(*) FILTER (WHERE status = 'failed') AS failed,
              count(*) FILTER (WHERE status = 'done') + (SELECT value FROM cas_outbox_counters WHERE name = 'purged_done') AS done
         FROM cas_outbox`,
    );
    const r = rows[0]!;
    return { pending: Number(r.pending), failed: Number(r.failed), done: Number(r.done) };
  }

  async expireAdded(opts: { olderThan: number; now?: number }): Promise<number> {
    await this.init();
    const now = new Date(opts.now ?? Date.now());
    const r = await this.pool.query(
      `INSERT INTO cas_outbox (list, value, action, reason, status, attempts, next_attempt_at, created_at, updated_at)
       SELECT a.list, a.value, 'delete', 'ttl expired', 'pending', 0, $2::timestamptz, $2::timestamptz, $2::timestamptz FROM cas_added_items a
        WHERE a.added_at < $1::timestamptz
          AND NOT EXISTS (SELECT 1 FROM cas_outbox o WHERE o.list = a.list AND o.value = a.value AND o.status IN ('pending', 'inflight', 'failed'))
        ORDER BY a.list, a.value
       ON CONFLICT (list, value, action) WHERE status IN ('pending', 'inflight', 'failed') DO NOTHING`,
      [new Date(opts.olderThan), now],
    );
    return r.rowCount ?? 0;
  }

  async addedItems(): Promise<Array<CasListItem & { addedAt: number }>> {
    await this.init();
    const { rows } = await this.pool.query<{ list: CasList; value: string; added_at: Date }>('SELECT list, value, added_at FROM cas_added_items ORDER BY list, value');
    return rows.map((r) => ({ list: r.list, value: r.value, addedAt: r.added_at.getTime() }));
  }

  async purgeDone(olderThan: number): Promise<number> {
    await this.init();
    const r = await this.pool.query(
      `WITH gone AS (DELETE FROM cas_outbox WHERE status = 'done' AND updated_at < $1 RETURNING 1)
       UPDATE cas_outbox_counters SET value = value + (SELECT count(*) FROM gone) WHERE name = 'purged_done'
       RETURNING (SELECT count(*) FROM gone) AS n`,
      [new Date(olderThan)],
    );
    return Number((r.rows[0] as { n?: string } | undefined)?.n ?? 0);
  }

  /** The pool belongs to the caller (the quarantine store may share it), so it stays open. */
  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------
// Pusher
// ---------------------------------------------------------------------------------------------

export interface CasPusherOptions {
  outbox: CasOutbox;
  client: Pick<CasApi, 'updateBlockedLists' | 'getBlockedLists'>;
  /** Outbox-level retries (hours of outage), on top of the client's short in-call retries. */
  schedule?: Partial<CasRetrySchedule>;
  intervalMs?: number;
  /** Entries claimed per round; four full requests by default. */
  claimLimit?: number;
  /** Must outlast the client's whole call budget, or another relay may push the same entries again. */
  leaseMs?: number;
  /** When set, what the relay adds is recorded and removed again after this many days. */
  ttlDays?: number | null;
  ttlSweepIntervalMs?: number;
  /**
   * GET the lists before a `create` and skip what is already listed (saves quota; and what someone
   * else listed is not recorded as ours, so the TTL never removes it). Default: on when `ttlDays` is set.
   */
  diffBeforeCreate?: boolean;
  /** Done entries older than this are forgotten (default 7 days). */
  keepDoneMs?: number;
  /** Items the relay may have on one list at a time (ledger count); creates past it are held back. Default 2,048. */
  maxListItems?: number;
  now?: () => number;
  logger?: Logger;
}

export interface CasPushReport {
  requests: number;
  pushed: number;
  alreadyListed: number;
  failed: number;
  expired: number;
  /** Creates held back (no request) because the list is full. */
  deferred: number;
}

/** Splits entries into requests: chunk i carries slice i of every list, each at most 2,048 long. */
export function chunkRequests(entries: CasOutboxEntry[], perList = MAX_ITEMS_PER_LIST): Array<{ rules: CasRules; entries: CasOutboxEntry[] }> {
  const byList = new Map<CasList, CasOutboxEntry[]>();
  for (const e of entries) {
    const arr = byList.get(e.list) ?? [];
    arr.push(e);
    byList.set(e.list, arr);
  }
  const n = Math.max(0, ...[...byList.values()].map((a) => Math.ceil(a.length / perList)));
  const out: Array<{ rules: CasRules; entries: CasOutboxEntry[] }> = [];
  for (let i = 0; i < n; i++) {
    const rules: CasRules = {};
    const chunk: CasOutboxEntry[] = [];
    for (const list of CAS_LISTS) {
      const slice = (byList.get(list) ?? []).slice(i * perList, (i + 1) * perList);
      if (slice.length === 0) continue;
      rules[list] = slice.map((e) => e.value);
      chunk.push(...slice);
    }
    out.push({ rules, entries: chunk });
  }
  return out;
}

/**
 * Drains the outbox to CAS in the background. Creates and deletes go in separate requests; each
 * request carries up to 2,048 items per list and several lists at once. All calls go through the
 * client and therefore its shared limiter. Once CAS looks down in a round, the rest of the round is
 * put back untouched instead of burning attempts; a 400 is bisected to isolate the bad item.
 */
export class CasPusher {
  private readonly outbox: CasOutbox;
  private readonly client: Pick<CasApi, 'updateBlockedLists' | 'getBlockedLists'>;
  private readonly schedule: CasRetrySchedule;
  private readonly intervalMs: number;
  private readonly claimLimit: number;
  private readonly leaseMs: number;
  private readonly ttlMs: number | null;
  private readonly ttlSweepIntervalMs: number;
  private readonly diffBeforeCreate: boolean;
  private readonly keepDoneMs: number;
  private readonly now: () => number;
  private readonly logger: Logger | undefined;
  private readonly capacity: ListCapacity;
  private lastSweep = -Infinity;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<CasPushReport> | null = null;
  private stopped = true;

  constructor(opts: CasPusherOptions) {
    this.outbox = opts.outbox;
    this.client = opts.client;
    this.schedule = { maxAttempts: 20, baseMs: 30_000, maxMs: 3_600_000, ...opts.schedule };
    this.intervalMs = opts.intervalMs ?? 5_000;
    this.claimLimit = opts.claimLimit ?? 4 * MAX_ITEMS_PER_LIST;
    this.leaseMs = opts.leaseMs ?? 15 * 60_000;
    this.ttlMs = opts.ttlDays == null ? null : opts.ttlDays * 86_400_000;
    this.ttlSweepIntervalMs = opts.ttlSweepIntervalMs ?? 3_600_000;
    this.diffBeforeCreate = opts.diffBeforeCreate ?? opts.ttlDays != null;
    this.keepDoneMs = opts.keepDoneMs ?? 7 * 86_400_000;
    this.now = opts.now ?? Date.now;
    this.logger = opts.logger;
    this.capacity = new ListCapacity(opts.maxListItems ?? MAX_ITEMS_PER_LIST, opts.logger);
  }

  /** Starts the background loop; its timer does not keep the process alive. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.arm(0);
  }

  /** Stops the loop and waits for a round in progress (its HTTP calls are bounded by the client's budget). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running?.catch(() => {});
  }

  /** Asks for a round soon (e.g. right after an enqueue) instead of at the next interval. */
  kick(): void {
    if (!this.stopped && !this.running) this.arm(0);
  }

  private arm(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.runOnce()
        .catch((err: unknown) => this.logger?.error({ err }, 'CAS push round failed'))
        .finally(() => {
          if (!this.stopped) this.arm(this.intervalMs);
        });
    }, ms);
    this.timer.unref();
  }

  /** One round: TTL sweep when due, then claim and push until nothing is due (bounded rounds). */
  runOnce(): Promise<CasPushReport> {
    // Rounds never overlap within one pusher; other relays are kept apart by the claim.
    this.running ??= this.round().finally(() => (this.running = null));
    return this.running;
  }

  private async round(): Promise<CasPushReport> {
    const report: CasPushReport = { requests: 0, pushed: 0, alreadyListed: 0, failed: 0, expired: 0, deferred: 0 };
    const now = this.now();
    if (now - this.lastSweep >= this.ttlSweepIntervalMs) {
      this.lastSweep = now;
      if (this.ttlMs !== null) report.expired = await this.outbox.expireAdded({ olderThan: now - this.ttlMs, now });
      await this.outbox.purgeDone(now - this.keepDoneMs);
    }
    let listed: Map<CasList, Set<string>> | null = null;
    for (let cycle = 0; cycle < 64; cycle++) {
      const entries = await this.outbox.claim({ limit: this.claimLimit, leaseMs: this.leaseMs, now: this.now() });
      if (entries.length === 0) break;
      let down: CasError | Error | null = null;
      for (const action of ['create', 'delete'] as const) {
        let group = entries.filter((e) => e.action === action);
        if (group.length === 0) continue;
        if (down) {
          await this.putBack(group, down, report);
          continue;
        }
        if (action === 'create' && this.diffBeforeCreate) {
          if (!listed) {
            try {
              listed = toKeySets(await this.client.getBlockedLists());
              report.requests++;
            } catch (err) {
              down = err as Error;
              await this.settleFailure(group, down, report);
              continue;
            }
          }
          const present = group.filter((e) => listed!.get(e.list)?.has(compareKey(e.list, e.value)));
          if (present.length) {
            // Already listed: by us earlier (restart its TTL clock) or by someone else (never ours to remove).
            await this.outbox.markDone(
              present.map((e) => e.id),
              { now: this.now(), refreshed: this.ttlMs !== null ? present.map(item) : [] },
            );
            report.alreadyListed += present.length;
            const ids = new Set(present.map((e) => e.id));
            group = group.filter((e) => !ids.has(e.id));
          }
        }
        if (action === 'create') {
          // Never past the cap: what the relay has on each list comes from the ledger (recorded at every push).
          const { fit, over } = this.capacity.plan(group, countByList(await this.outbox.addedItems()), this.now());
          await this.defer(over, 'CAS list full (cas.maxListItems)', report);
          group = fit;
        }
        const chunks = chunkRequests(group);
        for (let i = 0; i < chunks.length; i++) {
          const chunk = chunks[i]!;
          if (down) {
            await this.putBack(chunk.entries, down, report);
            continue;
          }
          down = await this.send(action, chunk.entries, report, 0);
          if (down === null && action === 'create' && listed) for (const e of chunk.entries) listed.get(e.list)?.add(compareKey(e.list, e.value));
        }
      }
      if (down) break;
    }
    if (report.requests || report.expired) this.logger?.info({ cas: report }, 'CAS push round');
    return report;
  }

  /** Sends one request; returns the error when CAS looks unavailable (so the round stops), else null. */
  private async send(action: CasRuleAction, entries: CasOutboxEntry[], report: CasPushReport, depth: number): Promise<CasError | Error | null> {
    const rules: CasRules = {};
    for (const e of entries) (rules[e.list] ??= []).push(e.value);
    report.requests++;
    try {
      await this.client.updateBlockedLists(action, rules);
    } catch (err) {
      if (action === 'create' && isListFullError(err)) {
        // A full list is not a bad item: halving would only multiply refused requests. Hold back, recheck later.
        this.capacity.markFull(listsNamed(err, [...new Set(entries.map((e) => e.list))]), this.now());
        await this.defer(entries, `CAS list full: ${err.msg}`, report);
        return null;
      }
      if (err instanceof CasError && err.status === 400 && entries.length > 1 && depth < 16) {
        // Whether one bad item fails the whole request is unknown (cas.md §3): halve until it is found.
        const mid = Math.ceil(entries.length / 2);
        const a = await this.send(action, entries.slice(0, mid), report, depth + 1);
        if (a) {
          await this.putBack(entries.slice(mid), a, report);
          return a;
        }
        return this.send(action, entries.slice(mid), report, depth + 1);
      }
      await this.settleFailure(entries, err as Error, report);
      return err instanceof CasError && err.status === 400 ? null : (err as Error);
    }
    const done = entries.map(item);
    await this.outbox.markDone(
      entries.map((e) => e.id),
      // Recorded with or without a TTL: the ledger is also how the relay knows how full each list is.
      action === 'create' ? { now: this.now(), added: done } : { now: this.now(), removed: done },
    );
    report.pushed += entries.length;
    return null;
  }

  private async settleFailure(entries: CasOutboxEntry[], err: Error, report: CasPushReport): Promise<void> {
    const permanent = err instanceof CasError && err.status === 400 && entries.length === 1;
    await this.outbox.markFailed(
      entries.map((e) => e.id),
      { error: err.message, schedule: this.schedule, now: this.now(), permanent },
    );
    report.failed += entries.length;
    this.logger?.warn({ count: entries.length, status: err instanceof CasError ? err.status : 0, traceId: err instanceof CasError ? err.traceId : null }, 'CAS push failed; will retry later');
  }

  /** Creates for a full list: back to pending without an attempt, not due again before the recheck time. */
  private async defer(entries: CasOutboxEntry[], why: string, report: CasPushReport): Promise<void> {
    if (entries.length === 0) return;
    await this.outbox.markFailed(
      entries.map((e) => e.id),
      { error: why, schedule: { ...this.schedule, baseMs: LIST_FULL_RECHECK_MS, maxMs: LIST_FULL_RECHECK_MS }, now: this.now(), countAttempt: false },
    );
    report.deferred += entries.length;
  }

  /** Entries never sent this round because CAS is down: back to pending without spending an attempt. */
  private async putBack(entries: CasOutboxEntry[], err: Error, report: CasPushReport): Promise<void> {
    if (entries.length === 0) return;
    await this.outbox.markFailed(
      entries.map((e) => e.id),
      { error: `not sent: ${err.message}`, schedule: this.schedule, now: this.now(), countAttempt: false },
    );
    report.failed += entries.length;
  }
}

function item(e: CasOutboxEntry): CasListItem {
  return { list: e.list, value: e.value };
}

function toKeySets(lists: BlockedLists): Map<CasList, Set<string>> {
  const m = new Map<CasList, Set<string>>();
  for (const list of CAS_LISTS) m.set(list, new Set((lists[list] ?? []).map((v) => compareKey(list, v))));
  return m;
}
