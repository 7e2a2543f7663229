// Helpers both store backends share (id check, paging cursors, filter semantics), so fs and postgres answer the same questions the same way.
import { hostname } from 'node:os';
import { Readable } from 'node:stream';
import { DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, type AuditEntry, type AuditRecord, type QuarantineFilter, type QuarantineRecord } from './types.js';
import { DlpError } from '../errors.js';

/** Ids are UUIDs we generate; anything else is refused so an id can never become a path or reach a query. */
export const SAFE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isSafeId(id: unknown): id is string {
  return typeof id === 'string' && SAFE_ID.test(id);
}

/** A claim older than this is taken to be left behind by a crash; well above any delivery timeout (see operations.ts). */
export const DEFAULT_CLAIM_TTL_MS = 15 * 60_000;

/** Bad filter or cursor from a caller: the admin API answers 400, the CLI exits 2. */
export class QuarantineInputError extends DlpError {
  readonly errorCode = 'DLP_ERR_QUARANTINE_INPUT' as const;
  constructor(message: string) {
    super(message);
    this.name = 'QuarantineInputError';
  }
}

export function clampLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return DEFAULT_LIST_LIMIT;
  return Math.min(MAX_LIST_LIMIT, Math.max(1, Math.floor(limit)));
}

/** Keyset position: the (time, id) of the last item of a page. Base64url JSON so it survives query strings untouched. */
export interface KeysetCursor {
  t: string;
  id: string;
}

export function encodeCursor(c: KeysetCursor): string {
  return Buffer.from(JSON.stringify([c.t, c.id])).toString('base64url');
}

export function decodeCursor(s: string): KeysetCursor {
  try {
    const v: unknown = JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') {
      const [t, id] = v as [string, string];
      if (!Number.isNaN(Date.parse(t)) && id.length <= 64) return { t: new Date(t).toISOString(), id };
    }
  } catch {
    /* fall through */
  }
  throw new QuarantineInputError('invalid cursor');
}

/** Newest first; the id breaks ties so the order is total and paging is stable. */
export function compareNewestFirst(a: { t: string; id: string }, b: { t: string; id: string }): number {
  if (a.t !== b.t) return a.t < b.t ? 1 : -1;
  if (a.id !== b.id) return a.id < b.id ? 1 : -1;
  return 0;
}

/** True when `item` comes strictly after the cursor position in newest-first order. */
export function isAfterCursor(item: { t: string; id: string }, cursor: KeysetCursor): boolean {
  return compareNewestFirst(item, cursor) > 0;
}

/** Lowercased address for exact, case-insensitive matching; the null sender stays ''. */
export function normAddress(a: string): string {
  return a.trim().replace(/^<(.*)>$/, '$1').toLowerCase();
}

/** The filter semantics, spelled out once; the postgres store expresses the same in SQL. */
export function matchesFilter(rec: QuarantineRecord, f: QuarantineFilter): boolean {
  const t = Date.parse(rec.quarantinedAt);
  if (f.from && t < f.from.getTime()) return false;
  if (f.to && t >= f.to.getTime()) return false;
  if (f.sender !== undefined && normAddress(rec.envelope.from) !== normAddress(f.sender)) return false;
  if (f.recipient !== undefined) {
    const want = normAddress(f.recipient);
    if (!rec.envelope.to.some((r) => normAddress(r.address) === want)) return false;
  }
  if (f.actionCode !== undefined && rec.actionCode !== f.actionCode) return false;
  if (f.policy !== undefined && !rec.policies.some((p) => p.name === f.policy)) return false;
  if (f.status !== undefined && rec.status !== f.status) return false;
  return true;
}

/** A stream that fails on first read: lets openMessage() stay synchronous and still report an unknown id. */
export function failedStream(err: Error): Readable {
  return new Readable({
    read() {
      this.destroy(err);
    },
  });
}

/** Bounded text for stored audit details: the audit must not grow with whatever an error message carries. */
export function clip(s: string | undefined, max = 2000): string | undefined {
  if (s === undefined) return undefined;
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/** The record both stores return for an entry once they have given it an id and a time: detail clipped, absent fields left out. */
export function auditRecord(entry: AuditEntry, id: string, at: string, instance: string): AuditRecord {
  return {
    id,
    at,
    instance,
    actor: entry.actor,
    action: entry.action,
    target: entry.target,
    result: entry.result,
    ...(entry.detail !== undefined ? { detail: clip(entry.detail)! } : {}),
    ...(entry.source !== undefined ? { source: entry.source } : {}),
  };
}

/** Node/pg error code if any (ENOENT, EEXIST, 08006 …). */
export function errCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const c = err.code;
    return typeof c === 'string' ? c : undefined;
  }
  return undefined;
}

/** hostname:pid, recorded on claims and audit entries so several relays on one store can be told apart. */
export function instanceName(): string {
  return `${hostname()}:${process.pid}`;
}
