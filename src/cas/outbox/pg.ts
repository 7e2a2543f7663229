// PostgreSQL CAS outbox: one table shared by every relay on the database; claims use FOR UPDATE SKIP LOCKED and a lease, so pushers never share a row.
import type { Pool } from 'pg';
import type { Logger } from '../../observability/logger.js';
import { migrate, type Migration } from '../../util/pg-migrate.js';
import type { CasList } from '../items.js';
import { prepare, type CasOutbox, type CasOutboxEntry, type CasOutboxItem, type CasOutboxOptions, type CasOutboxStats, type CasOutboxStatus, type CasListItem, type CasRetrySchedule } from './types.js';

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

/** A cas_outbox row: the item's columns and status/attempts keep their names, the rest are snake_case. */
interface PgRow extends CasOutboxItem, Pick<CasOutboxEntry, 'status' | 'attempts'> {
  id: string;
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
