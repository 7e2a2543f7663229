// Filesystem quarantine: one <id>.eml and one <id>.json per held message, each written durably (temp, fsync, rename) with mode 0600.
//
// Layout in `dir` (nothing else is ever created there; ids are checked against SAFE_ID before any path is built):
//   <id>.eml       the message bytes exactly as received
//   <id>.json      metadata (QuarantineRecord); its presence is what makes a message visible
//   <id>.release   release claim, created with O_EXCL before delivery; rewritten with done=true after it and kept as a guard
//   audit.jsonl    append-only audit trail, one JSON object per line, fsync'd per entry (fs-audit.ts)
//   .tmp-*         unfinished writes, swept at init
//
// Limits of this backend, by design (use the postgres store beyond them): list() and purge() read every
// .json file (fine for tens of thousands of held messages, slow past that); listAudit() scans the whole
// audit file (memory stays at one page, time grows with the file; rotate it if it gets large); claims rely on O_EXCL/rename being atomic, which holds on local filesystems (and NFSv3+),
// so several relays may share the directory only on such a filesystem.
import { mkdir, readdir, unlink, stat, access, constants, open, readFile, rename, link } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { writeDurably, fsyncDir, TEMP_PREFIX } from '../util/durable-file.js';
import {
  SAFE_ID,
  isSafeId,
  clampLimit,
  decodeCursor,
  encodeCursor,
  compareNewestFirst,
  isAfterCursor,
  matchesFilter,
  failedStream,
  errCode,
  instanceName,
  DEFAULT_CLAIM_TTL_MS,
} from './common.js';
import { QuarantineNotFoundError } from './errors.js';
import { ByteDigest, throughDigest } from './digest.js';
import { FsAuditLog } from './fs-audit.js';
import type {
  AuditEntry,
  AuditFilter,
  AuditPage,
  AuditRecord,
  DeleteResult,
  NewQuarantineRecord,
  QuarantineFilter,
  QuarantinePage,
  QuarantineRecord,
  QuarantineStore,
  RecipientResult,
  ReleaseClaim,
  ReleaseInfo,
} from './types.js';

export { SAFE_ID } from './common.js';

const META_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json$/;
const EML_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.eml$/;
const MARKER_SUFFIX = '.release';
/** Parallel metadata reads during a scan: enough to hide latency, few enough not to exhaust file descriptors. */
const SCAN_CONCURRENCY = 32;

interface ReleaseMarker {
  token: string;
  by: string;
  at: string;
  instance: string;
  /** Set after a successful delivery: from then on the marker alone proves the release, even if the .json update was lost. */
  done?: boolean;
  release?: ReleaseInfo;
}

export interface FsStoreOptions {
  /** Claims older than this are considered left by a crash (default 15 minutes). */
  claimTtlMs?: number;
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export class FsQuarantineStore implements QuarantineStore {
  readonly kind = 'fs' as const;
  private readonly claimTtlMs: number;
  private readonly instance = instanceName();
  private readonly auditLog: FsAuditLog;

  constructor(
    readonly dir: string,
    opts: FsStoreOptions = {},
  ) {
    this.claimTtlMs = opts.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS;
    this.auditLog = new FsAuditLog(dir, this.instance);
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // A crash between temp write and rename leaves .tmp-* files: they were never acknowledged, remove them.
    for (const name of await readdir(this.dir)) {
      if (name.startsWith(TEMP_PREFIX)) await unlink(join(this.dir, name)).catch(() => {});
    }
  }

  emlPath(id: string): string {
    if (!SAFE_ID.test(id)) throw new Error('invalid quarantine id');
    return join(this.dir, `${id}.eml`);
  }
  metaPath(id: string): string {
    if (!SAFE_ID.test(id)) throw new Error('invalid quarantine id');
    return join(this.dir, `${id}.json`);
  }
  private markerPath(id: string): string {
    if (!SAFE_ID.test(id)) throw new Error('invalid quarantine id');
    return join(this.dir, `${id}${MARKER_SUFFIX}`);
  }

  async put(record: NewQuarantineRecord, openMessage: () => Readable): Promise<void> {
    // Message first, metadata last: a listing is driven by .json files, so it never shows a message whose bytes are missing.
    // Size and hashes are measured on the way to the file, so they describe the stored bytes whatever the caller thinks.
    const digest = new ByteDigest();
    await writeDurably(this.emlPath(record.id), throughDigest(openMessage(), digest));
    // Stamped once the bytes are down, so a slow write never lands behind a page an operator has already read.
    const full: QuarantineRecord = { ...record, ...digest.result(), status: 'held', quarantinedAt: new Date().toISOString(), release: null, recipientResults: [] };
    try {
      await writeDurably(this.metaPath(record.id), JSON.stringify(full, null, 2) + '\n');
    } catch (err) {
      await unlink(this.emlPath(record.id)).catch(() => {});
      throw err;
    }
  }

  async checkWritable(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await access(this.dir, constants.W_OK);
    const s = await stat(this.dir);
    if (!s.isDirectory()) throw new Error(`${this.dir} is not a directory`);
  }

  async close(): Promise<void> {}

  // ---- reading ----

  private async readMeta(id: string): Promise<QuarantineRecord | null> {
    let text: string;
    try {
      text = await readFile(this.metaPath(id), 'utf8');
    } catch (err) {
      if (errCode(err) === 'ENOENT') return null;
      throw err;
    }
    try {
      return JSON.parse(text) as QuarantineRecord;
    } catch {
      // Metadata is written by rename, so a torn file means outside interference; hide it rather than fail every listing.
      return null;
    }
  }

  private async readMarkerAt(path: string): Promise<ReleaseMarker | null> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if (errCode(err) === 'ENOENT') return null;
      throw err;
    }
    try {
      const m = JSON.parse(text) as ReleaseMarker;
      if (typeof m.token === 'string' && typeof m.at === 'string') return m;
    } catch {
      /* empty or torn: a crash between open('wx') and the write */
    }
    // Age it by mtime so a torn claim still goes stale and never blocks the message forever.
    const s = await stat(path).catch(() => null);
    return { token: '', by: 'unknown', at: (s?.mtime ?? new Date(0)).toISOString(), instance: 'unknown' };
  }

  private readMarker(id: string): Promise<ReleaseMarker | null> {
    return this.readMarkerAt(this.markerPath(id));
  }

  private isStale(m: ReleaseMarker): boolean {
    return Date.now() - Date.parse(m.at) > this.claimTtlMs;
  }

  /** Folds the claim marker into the record: a done marker wins over a .json that still says held (crash between the two writes). */
  private applyMarker(rec: QuarantineRecord, m: ReleaseMarker | null): QuarantineRecord {
    const base: QuarantineRecord = { ...rec, release: rec.release ?? null, releaseClaim: null, recipientResults: rec.recipientResults ?? [] };
    if (!m || base.status !== 'held') return base;
    if (m.done) return { ...base, status: 'released', release: m.release ?? null };
    return { ...base, releaseClaim: { by: m.by, at: m.at, instance: m.instance } };
  }

  async get(id: string): Promise<QuarantineRecord | null> {
    if (!isSafeId(id)) return null;
    const rec = await this.readMeta(id);
    if (!rec) return null;
    return this.applyMarker(rec, await this.readMarker(id));
  }

  /** Every visible record, claims folded in. Unordered. */
  private async scan(): Promise<QuarantineRecord[]> {
    const names = await readdir(this.dir);
    const markers = new Set(names.filter((n) => n.endsWith(MARKER_SUFFIX)).map((n) => n.slice(0, -MARKER_SUFFIX.length)));
    const ids = names.filter((n) => META_NAME.test(n)).map((n) => n.slice(0, -'.json'.length));
    const recs = await mapLimit(ids, SCAN_CONCURRENCY, async (id) => {
      const rec = await this.readMeta(id);
      if (!rec) return null;
      return this.applyMarker(rec, markers.has(id) ? await this.readMarker(id) : null);
    });
    return recs.filter((r): r is QuarantineRecord => r !== null);
  }

  async list(filter: QuarantineFilter = {}): Promise<QuarantinePage> {
    const limit = clampLimit(filter.limit);
    const cursor = filter.cursor ? decodeCursor(filter.cursor) : null;
    const key = (r: QuarantineRecord) => ({ t: r.quarantinedAt, id: r.id });
    const matching = (await this.scan())
      .filter((r) => matchesFilter(r, filter))
      .filter((r) => !cursor || isAfterCursor(key(r), cursor))
      .sort((a, b) => compareNewestFirst(key(a), key(b)));
    const items = matching.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: matching.length > limit && last ? encodeCursor(key(last)) : null };
  }

  openMessage(id: string): Readable {
    if (!isSafeId(id)) return failedStream(new QuarantineNotFoundError(id));
    const path = this.emlPath(id);
    async function* chunks(): AsyncGenerator<Buffer> {
      let fh;
      try {
        fh = await open(path, 'r');
      } catch (err) {
        if (errCode(err) === 'ENOENT') throw new QuarantineNotFoundError(id);
        throw err;
      }
      try {
        for await (const chunk of fh.createReadStream({ autoClose: false, highWaterMark: 64 * 1024 })) yield chunk as Buffer;
      } finally {
        await fh.close().catch(() => {});
      }
    }
    return Readable.from(chunks(), { objectMode: false });
  }

  // ---- release claims ----

  private async createMarker(id: string, m: ReleaseMarker): Promise<boolean> {
    let fh;
    try {
      fh = await open(this.markerPath(id), 'wx', 0o600);
    } catch (err) {
      if (errCode(err) === 'EEXIST') return false;
      throw err;
    }
    try {
      await fh.writeFile(JSON.stringify(m));
      await fh.sync();
    } finally {
      await fh.close().catch(() => {});
    }
    await fsyncDir(this.dir);
    return true;
  }

  /**
   * Removes a stale marker, but only the one we judged stale: it is renamed away first and checked, so two
   * relays taking over at once cannot both succeed, and a fresh claim moved by mistake is put back.
   */
  private async removeStaleMarker(id: string, seen: ReleaseMarker): Promise<boolean> {
    const marker = this.markerPath(id);
    const moved = join(this.dir, `${TEMP_PREFIX}stale-${id}-${randomUUID()}`);
    try {
      await rename(marker, moved);
    } catch (err) {
      if (errCode(err) === 'ENOENT') return true;
      throw err;
    }
    const got = await this.readMarkerAt(moved);
    if (got && got.token === seen.token && got.at === seen.at) {
      await unlink(moved).catch(() => {});
      return true;
    }
    await link(moved, marker).catch(() => {});
    await unlink(moved).catch(() => {});
    return false;
  }

  async claimRelease(id: string, claimant: { actor: string; claimTtlMs?: number }): Promise<ReleaseClaim> {
    if (!isSafeId(id)) return { status: 'not-found' };
    const ttl = claimant.claimTtlMs ?? this.claimTtlMs;
    const mine: ReleaseMarker = { token: randomUUID(), by: claimant.actor, at: new Date().toISOString(), instance: this.instance };
    // Bounded: each round either creates the marker, reports the holder, or removed one stale marker.
    for (let attempt = 0; attempt < 3; attempt++) {
      const before = await this.get(id);
      if (!before) return { status: 'not-found' };
      if (before.status === 'released') return { status: 'already-released', record: before };
      if (await this.createMarker(id, mine)) {
        // Re-read under the claim: whatever happened before we held it (a delete, a release finishing) counts.
        const rec = await this.readMeta(id);
        if (!rec) {
          await unlink(this.markerPath(id)).catch(() => {});
          return { status: 'not-found' };
        }
        if (rec.status === 'released') {
          await unlink(this.markerPath(id)).catch(() => {});
          return { status: 'already-released', record: this.applyMarker(rec, null) };
        }
        return { status: 'claimed', token: mine.token, record: this.applyMarker(rec, mine) };
      }
      const holder = await this.readMarker(id);
      if (!holder) continue; // released between our attempt and the read: try again
      const rec = await this.readMeta(id);
      if (!rec) return { status: 'not-found' };
      if (holder.done || rec.status === 'released') return { status: 'already-released', record: this.applyMarker(rec, holder) };
      if (Date.now() - Date.parse(holder.at) <= ttl) return { status: 'in-progress', record: this.applyMarker(rec, holder) };
      if (!(await this.removeStaleMarker(id, holder))) {
        const now = await this.readMarker(id);
        return { status: 'in-progress', record: this.applyMarker(rec, now ?? holder) };
      }
    }
    const rec = await this.get(id);
    return rec ? { status: 'in-progress', record: rec } : { status: 'not-found' };
  }

  async completeRelease(id: string, token: string, info: ReleaseInfo, recipientResults?: RecipientResult[]): Promise<void> {
    const m = await this.readMarker(id);
    if (!m || m.token !== token) throw new Error('release claim lost');
    // Marker first: once it says done, no later claim can deliver again, even if the .json write below fails.
    await writeDurably(this.markerPath(id), JSON.stringify({ ...m, done: true, release: info }));
    const rec = await this.readMeta(id);
    if (rec) {
      const updated: QuarantineRecord = { ...rec, status: 'released', release: info, ...(recipientResults ? { recipientResults } : {}) };
      delete updated.releaseClaim;
      await writeDurably(this.metaPath(id), JSON.stringify(updated, null, 2) + '\n');
    }
  }

  async partialRelease(id: string, token: string, recipientResults: RecipientResult[]): Promise<void> {
    const m = await this.readMarker(id);
    if (!m || m.token !== token || m.done) throw new Error('release claim lost');
    const rec = await this.readMeta(id);
    if (!rec) throw new QuarantineNotFoundError(id);
    // Results first, claim last: if the .json write fails the claim stays (and only goes stale after its TTL),
    // so no release can run without knowing which recipients already have the message.
    const updated: QuarantineRecord = { ...rec, recipientResults };
    delete updated.releaseClaim;
    await writeDurably(this.metaPath(id), JSON.stringify(updated, null, 2) + '\n');
    await this.abandonRelease(id, token);
  }

  async abandonRelease(id: string, token: string): Promise<void> {
    if (!isSafeId(id)) return;
    const m = await this.readMarker(id);
    if (!m || m.token !== token || m.done) return;
    await unlink(this.markerPath(id)).catch((err: unknown) => {
      if (errCode(err) !== 'ENOENT') throw err;
    });
  }

  // ---- deleting ----

  async delete(id: string): Promise<DeleteResult> {
    if (!isSafeId(id)) return 'not-found';
    const m = await this.readMarker(id);
    if (m && !m.done && !this.isStale(m)) {
      // A release is streaming these bytes right now; deleting under it would fail the delivery halfway.
      return (await this.readMeta(id)) ? 'in-progress' : 'not-found';
    }
    let existed = true;
    // Metadata first so the message disappears from listings before its bytes go.
    await unlink(this.metaPath(id)).catch((err: unknown) => {
      if (errCode(err) === 'ENOENT') existed = false;
      else throw err;
    });
    for (const p of [this.emlPath(id), this.markerPath(id)]) {
      await unlink(p).catch((err: unknown) => {
        if (errCode(err) !== 'ENOENT') throw err;
      });
    }
    await fsyncDir(this.dir);
    return existed ? 'deleted' : 'not-found';
  }

  async purge(olderThan: Date): Promise<string[]> {
    const cutoff = olderThan.getTime();
    const deleted: string[] = [];
    const names = await readdir(this.dir);
    const ids = names.filter((n) => META_NAME.test(n)).map((n) => n.slice(0, -'.json'.length));
    for (const id of ids) {
      const rec = await this.readMeta(id);
      if (!rec || Date.parse(rec.quarantinedAt) >= cutoff) continue;
      if ((await this.delete(id)) === 'deleted') deleted.push(id);
    }
    // Bytes without metadata come from a crash inside put(); they were never acknowledged, so age them out too.
    const metas = new Set(ids);
    for (const name of names) {
      if (!EML_NAME.test(name) || metas.has(name.slice(0, -'.eml'.length))) continue;
      const p = join(this.dir, name);
      const s = await stat(p).catch(() => null);
      if (s && s.mtimeMs < cutoff && !(await readMetaExists(this.metaPath(name.slice(0, -'.eml'.length))))) {
        await unlink(p).catch(() => {});
      }
    }
    return deleted;
  }

  // ---- audit ----

  audit(entry: AuditEntry): Promise<AuditRecord> {
    return this.auditLog.append(entry);
  }

  listAudit(filter: AuditFilter = {}): Promise<AuditPage> {
    return this.auditLog.list(filter);
  }
}

async function readMetaExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
