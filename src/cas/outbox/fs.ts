// Filesystem CAS outbox: one append-only journal per directory, replayed at start and snapshotted once mostly history; a lock file keeps it to one process.
import { open, readFile, mkdir, unlink, realpath, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../observability/logger.js';
import { writeDurably } from '../../util/durable-file.js';
import { type CasList, type CasRuleAction } from '../items.js';
import { k2, k3, opposite, prepare, outboxBackoffMs, type CasOutbox, type CasOutboxEntry, type CasOutboxItem, type CasOutboxOptions, type CasOutboxStats, type CasOutboxStatus, type CasListItem, type CasRetrySchedule } from './types.js';

/** An entry as the journal keeps it: a numeric id (the journal's sequence) and a lease held in memory only. */
interface FsEntry extends Omit<CasOutboxEntry, 'id'> {
  id: number;
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

const LOCK_FILE = 'outbox.lock';

/**
 * The pid in a directory's lock file when it is another process that is still alive, else null (no lock, or a
 * stale one): the outbox refuses to open such a directory, and start-up recovery leaves it alone.
 */
export async function casOutboxHolder(dir: string): Promise<number | null> {
  const pid = Number((await readFile(join(dir, LOCK_FILE), 'utf8').catch(() => '')).trim());
  return pid > 0 && pid !== process.pid && pidAlive(pid) ? pid : null;
}

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
    this.lockPath = join(dir, LOCK_FILE);
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
        const holder = await casOutboxHolder(this.dir);
        if (holder !== null) throw new Error(`CAS outbox ${this.dir} is in use by process ${holder}`, { cause: err });
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
  const { leaseUntil: _lease, ...entry } = e;
  return { ...entry, id: String(e.id) };
}
