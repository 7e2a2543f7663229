// The CAS request budget shared by every relay on one PostgreSQL: slot rows taken and freed with single atomic statements.
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Pool } from 'pg';
import type { Logger } from '../observability/logger.js';
import { migrate, type Migration } from '../util/pg-migrate.js';
import type { CasRateSettings } from '../config/cas-schema.js';

/** What the CAS client needs from a limiter; the in-process CasRateLimiter and the PostgreSQL one both fit. */
export interface CasLimiter {
  readonly limit: number;
  readonly windowMs: number;
  /** Resolves with a release function once a request may be sent; rejects if `signal` aborts first. */
  acquire(signal?: AbortSignal): Promise<() => void>;
  /** After a 429 nobody sends until the server's window has surely passed. */
  pauseFor(ms: number): void;
  /** Requests of this process waiting for a slot. */
  readonly queued: number;
}

export const CAS_RATE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'CAS request budget shared between relays: one row per slot, one pause row per bucket',
    sql: `
      CREATE TABLE cas_rate_slots (
        bucket text NOT NULL,
        slot integer NOT NULL,
        free_at timestamptz NOT NULL,
        holder text,
        PRIMARY KEY (bucket, slot)
      );
      CREATE TABLE cas_rate_pause (
        bucket text PRIMARY KEY,
        paused_until timestamptz NOT NULL
      );
    `,
  },
];

/**
 * The bucket of a token: the vendor counts per token (cas.md §2), so relays with the same token share
 * one budget and different tenants on one database do not. Only a hash is stored, never the token.
 */
export function casBucketFor(token: string): string {
  return `token:${createHash('sha256').update(token).digest('hex').slice(0, 16)}`;
}

export interface PgCasRateLimiterOptions {
  bucket: string;
  rate: CasRateSettings;
  /**
   * Longest a granted slot may stay held by a relay that dies before releasing it; must be at least
   * the client's per-attempt deadline (`cas.timeouts.requestMs`), because a request still travelling
   * when the lease ends could otherwise share a window with the next one.
   */
  leaseMs: number;
  /** Longest sleep between two looks at the table while every slot is busy (default 1 s). */
  pollMs?: number;
  logger?: Logger;
  random?: () => number;
}

// Takes the slot that has been free longest, unless the bucket is paused. SKIP LOCKED: two relays
// asking at once get different slots (or none), never the same one. The lease covers a relay that
// dies while its request is out: the slot comes back lease + window after it was taken.
const TAKE_SQL = `
  WITH paused AS (
    SELECT paused_until FROM cas_rate_pause WHERE bucket = $1 AND paused_until > clock_timestamp()
  ), pick AS (
    SELECT slot FROM cas_rate_slots
     WHERE bucket = $1 AND free_at <= clock_timestamp() AND NOT EXISTS (SELECT 1 FROM paused)
     ORDER BY free_at, slot LIMIT 1
     FOR UPDATE SKIP LOCKED
  ), taken AS (
    UPDATE cas_rate_slots s SET free_at = clock_timestamp() + $2 * interval '1 millisecond', holder = $3
      FROM pick WHERE s.bucket = $1 AND s.slot = pick.slot
    RETURNING s.slot
  )
  SELECT (SELECT slot FROM taken) AS slot,
         GREATEST(0, EXTRACT(EPOCH FROM (
           GREATEST((SELECT min(free_at) FROM cas_rate_slots WHERE bucket = $1), (SELECT paused_until FROM paused))
           - clock_timestamp())) * 1000)::float8 AS wait_ms`;

// The window counts from the response, on the database's clock: every relay uses the same clock.
const RELEASE_SQL = `
  UPDATE cas_rate_slots SET free_at = clock_timestamp() + $3 * interval '1 millisecond', holder = NULL
   WHERE bucket = $1 AND slot = $2 AND holder = $4`;

const PAUSE_SQL = `
  INSERT INTO cas_rate_pause (bucket, paused_until) VALUES ($1, clock_timestamp() + $2 * interval '1 millisecond')
  ON CONFLICT (bucket) DO UPDATE SET paused_until = GREATEST(cas_rate_pause.paused_until, EXCLUDED.paused_until)`;

/**
 * The CasRateLimiter's rule (a slot is free again one window after its response arrived) kept in
 * PostgreSQL, so N relays with one token together send at most `limit` requests in any window.
 * Each take and each release is one statement: nothing stays locked during the HTTP call. Within one
 * process waiters queue locally (FIFO) and only the head polls the table. If the database is
 * unreachable nobody sends: waiting is safe, the outbox keeps the entries, and a 429 storm is not.
 */
export class PgCasRateLimiter implements CasLimiter {
  readonly limit: number;
  readonly windowMs: number;
  readonly bucket: string;
  private readonly pool: Pool;
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly logger: Logger | undefined;
  private readonly random: () => number;
  private tail: Promise<void> = Promise.resolve();
  private waiting = 0;
  private ready: Promise<void> | null = null;
  private lastErrorLog = 0;
  private pending = new Set<Promise<unknown>>();

  constructor(pool: Pool, opts: PgCasRateLimiterOptions) {
    if (!(opts.rate.limit >= 1) || !(opts.rate.windowMs >= 1)) throw new RangeError('rate limit and window must be positive');
    this.pool = pool;
    this.bucket = opts.bucket;
    this.limit = Math.floor(opts.rate.limit);
    this.windowMs = opts.rate.windowMs;
    this.leaseMs = opts.leaseMs;
    this.pollMs = opts.pollMs ?? 1_000;
    this.logger = opts.logger;
    this.random = opts.random ?? Math.random;
  }

  /**
   * Creates the tables and makes the bucket hold exactly `limit` slots. With different limits in
   * the config of different relays, the last one started wins; a rolling restart converges.
   */
  init(): Promise<void> {
    if (!this.ready) {
      const p = (async () => {
        await migrate(this.pool, 'cas_rate', CAS_RATE_MIGRATIONS);
        await this.pool.query(
          `INSERT INTO cas_rate_slots (bucket, slot, free_at) SELECT $1, g, 'epoch' FROM generate_series(0, $2 - 1) g
           ON CONFLICT (bucket, slot) DO NOTHING`,
          [this.bucket, this.limit],
        );
        await this.pool.query('DELETE FROM cas_rate_slots WHERE bucket = $1 AND slot >= $2', [this.bucket, this.limit]);
      })();
      // A database that is down at boot must be retried by the next acquire, not cached as failed.
      p.catch(() => {
        if (this.ready === p) this.ready = null;
      });
      this.ready = p;
    }
    return this.ready;
  }

  get queued(): number {
    return this.waiting;
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw abortReason(signal);
    this.waiting++;
    const prev = this.tail;
    let myTurnDone!: () => void;
    this.tail = new Promise<void>((r) => (myTurnDone = r));
    try {
      await abortable(prev, signal);
      return await this.take(signal);
    } finally {
      this.waiting--;
      myTurnDone();
    }
  }

  pauseFor(ms: number): void {
    this.track(this.init().then(() => this.pool.query(PAUSE_SQL, [this.bucket, Math.max(0, Math.ceil(ms))])));
  }

  /** Waits for releases and pauses still being written (so a closing relay leaves the table tidy). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.pending]);
  }

  private async take(signal: AbortSignal | undefined): Promise<() => void> {
    const holder = randomUUID();
    for (;;) {
      let waitMs = this.pollMs;
      try {
        await this.init();
        const { rows } = await this.pool.query<{ slot: number | null; wait_ms: number | null }>(TAKE_SQL, [this.bucket, this.leaseMs + this.windowMs, holder]);
        const slot = rows[0]?.slot ?? null;
        if (slot !== null) return this.releaser(slot, holder);
        waitMs = Math.min(this.pollMs, Math.max(5, rows[0]?.wait_ms ?? this.pollMs));
      } catch (err) {
        this.logError(err, 'CAS shared rate limit: database error, not sending until it answers');
      }
      if (signal?.aborted) throw abortReason(signal);
      // A little jitter so relays that found the bucket empty together do not all come back together.
      await sleep(waitMs + Math.floor(this.random() * 20), undefined, signal ? { signal } : undefined).catch(() => {
        throw abortReason(signal!);
      });
    }
  }

  private releaser(slot: number, holder: string): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // If this write is lost the lease still ends, later: the budget errs on the quiet side.
      this.track(this.pool.query(RELEASE_SQL, [this.bucket, slot, this.windowMs, holder]));
    };
  }

  private track(p: Promise<unknown>): void {
    const q = p.catch((err) => this.logError(err, 'CAS shared rate limit: could not record a release or pause'));
    this.pending.add(q);
    void q.finally(() => this.pending.delete(q));
  }

  private logError(err: unknown, msg: string): void {
    const now = Date.now();
    if (now - this.lastErrorLog < 30_000) return;
    this.lastErrorLog = now;
    this.logger?.warn({ err: err instanceof Error ? err.message : String(err), bucket: this.bucket }, msg);
  }
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}

/** `p`, or a rejection as soon as `signal` aborts (p itself keeps running). */
function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
