// PostgreSQL quarantine: metadata rows, message bytes as 256 KiB bytea chunks, and the audit table, shared by every relay pointed at the same database.
//
// Why bytea chunks and not large objects:
// - Chunks are plain rows: ON DELETE CASCADE removes the bytes with the metadata, pg_dump/replication/backups
//   need nothing special, and there is no orphan cleanup (large objects survive their referencing row unless
//   lo_unlink'ed, hence vacuumlo).
// - Streaming works both ways without buffering a message: put() inserts one chunk at a time inside one
//   transaction (nothing is visible until COMMIT), openMessage() reads one chunk per query, so memory stays at
//   about one chunk whatever the message size, and no value comes near bytea's 1 GB limit.
// - node-postgres has no large-object API; we would need another dependency and to hold a transaction open
//   for the whole read. The cost of chunks is per-row overhead (~200 rows for a 50 MiB message), which is small.
import pg from 'pg';
import { Readable } from 'node:stream';
import { randomUUID } from 'node:crypto';
import type { Logger } from '../observability/logger.js';
import { migrate } from '../util/pg-migrate.js';
import { isSafeId, auditRecord, clampLimit, decodeCursor, encodeCursor, failedStream, clip, instanceName, normAddress, DEFAULT_CLAIM_TTL_MS, QuarantineInputError } from './common.js';
import { QuarantineNotFoundError, QuarantineUnavailableError } from './errors.js';
import { ByteDigest } from './digest.js';
import {
  CHUNK_BYTES,
  PURGE_BATCH,
  QUARANTINE_MIGRATIONS,
  ROW_COLUMNS,
  createQuarantinePool,
  isConnectivityError,
  rowToRecord,
  SqlWhere,
  toStoreError,
  type MessageRow,
} from './pg-schema.js';
import type { AuditEntry, AuditFilter, AuditPage, AuditRecord, DeleteResult, NewQuarantineRecord, QuarantineFilter, QuarantinePage, QuarantineRecord, QuarantineStore, RecipientResult, ReleaseClaim, ReleaseInfo } from './types.js';

export { CHUNK_BYTES, QUARANTINE_MIGRATIONS, createQuarantinePool, isConnectivityError } from './pg-schema.js';

export interface PgStoreOptions {
  logger?: Logger;
  /** Claims older than this are considered left by a crash (default 15 minutes). */
  claimTtlMs?: number;
  /** Upper bound for checkWritable(), connection included (default 2 s). */
  probeTimeoutMs?: number;
  /** Pool settings when the store builds its own pool from a URL. */
  pool?: pg.PoolConfig;
}

export class PgQuarantineStore implements QuarantineStore {
  readonly kind = 'postgres' as const;
  readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly logger: Logger | undefined;
  private readonly claimTtlMs: number;
  private readonly probeTimeoutMs: number;
  private readonly instance = instanceName();
  private readonly onPoolError = (err: Error): void => {
    // Idle clients losing their connection emit 'error' on the pool; unhandled it would crash the relay.
    this.logger?.warn({ err: err.message }, 'quarantine database connection lost');
  };

  constructor(urlOrPool: string | pg.Pool, opts: PgStoreOptions = {}) {
    this.ownsPool = typeof urlOrPool === 'string';
    this.pool = typeof urlOrPool === 'string' ? createQuarantinePool(urlOrPool, opts.pool) : urlOrPool;
    this.pool.on('error', this.onPoolError);
    this.logger = opts.logger;
    this.claimTtlMs = opts.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS;
    this.probeTimeoutMs = opts.probeTimeoutMs ?? 2_000;
  }

  async init(): Promise<void> {
    try {
      const applied = await migrate(this.pool, 'quarantine', QUARANTINE_MIGRATIONS);
      if (applied.length) this.logger?.info({ applied }, 'quarantine schema migrated');
    } catch (err) {
      throw toStoreError(err, 'migrate');
    }
  }

  private async q<R extends pg.QueryResultRow>(what: string, text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(text, values);
    } catch (err) {
      throw toStoreError(err, what);
    }
  }

  async put(record: NewQuarantineRecord, openMessage: () => Readable): Promise<void> {
    if (!isSafeId(record.id)) throw new Error('invalid quarantine id');
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw toStoreError(err, 'connect');
    }
    let broken: Error | undefined;
    // pg-pool removes its error listener from a checked-out client; if the connection drops between two of
    // our queries (while we wait for the source), the 'error' event would otherwise be unhandled and crash the relay.
    const onClientError = (err: Error): void => {
      broken ??= err;
      this.logger?.warn({ err: err.message, id: record.id }, 'quarantine database connection lost during put');
    };
    client.on('error', onClientError);
    let source: Readable | undefined;
    try {
      source = openMessage();
      await client.query('BEGIN');
      await client.query(
        `INSERT INTO quarantine_messages (id, query_id, received_at, quarantined_at, sender, sender_lc, recipients_lc, envelope,
           client_address, helo_name, size, sha256, md5, subject, message_id, action_code, reason, policies, policy_names, status, instance)
         VALUES ($1, $2, $3, date_trunc('milliseconds', clock_timestamp()), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'held', $19)`,
        // The database clock orders messages from every relay on one timeline; milliseconds, so the ISO time
        // in a paging cursor round-trips exactly.
        [
          record.id,
          record.queryId,
          new Date(record.receivedAt),
          record.envelope.from,
          normAddress(record.envelope.from),
          record.envelope.to.map((r) => normAddress(r.address)),
          JSON.stringify(record.envelope),
          record.clientAddress,
          record.heloName,
          // Placeholders until the bytes are in: the UPDATE before COMMIT sets what was measured.
          0,
          '',
          '',
          record.subject,
          record.messageId,
          record.actionCode,
          record.reason,
          JSON.stringify(record.policies),
          record.policies.map((p) => p.name),
          record.instance,
        ],
      );
      // Re-chunk whatever the source yields to CHUNK_BYTES; awaiting each insert is the backpressure on the source.
      let seq = 0;
      let total = 0;
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      // Measured on the bytes inserted, in the same pass: the row describes what is stored, not what was received.
      const digest = new ByteDigest();
      const flush = async (buf: Buffer): Promise<void> => {
        await client.query('INSERT INTO quarantine_chunks (id, seq, data) VALUES ($1, $2, $3)', [record.id, seq++, buf]);
      };
      for await (const c of source) {
        const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c as string);
        total += chunk.length;
        digest.update(chunk);
        pending.push(chunk);
        pendingBytes += chunk.length;
        while (pendingBytes >= CHUNK_BYTES) {
          const all = Buffer.concat(pending, pendingBytes);
          await flush(all.subarray(0, CHUNK_BYTES));
          const rest = all.subarray(CHUNK_BYTES);
          pending = rest.length ? [Buffer.from(rest)] : [];
          pendingBytes = rest.length;
        }
      }
      if (pendingBytes > 0) await flush(Buffer.concat(pending, pendingBytes));
      // Stamp the time again just before COMMIT: a large message that took a while to stream must not appear
      // behind a page an operator has already read.
      const d = digest.result();
      await client.query(
        `UPDATE quarantine_messages SET chunk_count = $2, stored_bytes = $3, size = $4, sha256 = $5, md5 = $6,
                quarantined_at = date_trunc('milliseconds', clock_timestamp())
          WHERE id = $1`,
        [record.id, seq, total, d.size, d.sha256, d.md5],
      );
      await client.query('COMMIT');
    } catch (err) {
      source?.destroy();
      broken = err instanceof Error ? err : new Error(String(err));
      // A connection-level failure would make ROLLBACK hang or fail too: drop the connection, the server rolls back.
      if (!isConnectivityError(err)) await client.query('ROLLBACK').catch(() => {});
      throw toStoreError(err, 'put');
    } finally {
      client.off('error', onClientError);
      // Release with the error destroys the client instead of pooling a connection in an unknown state.
      client.release(broken);
    }
  }

  async checkWritable(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new QuarantineUnavailableError(`quarantine database did not answer within ${this.probeTimeoutMs} ms`)),
        this.probeTimeoutMs,
      );
      timer.unref();
    });
    const probe = (async () => {
      try {
        const { rows } = await this.pool.query<{ ro: boolean; w: boolean }>({
          text: `SELECT pg_is_in_recovery() AS ro, has_table_privilege('quarantine_chunks', 'INSERT') AS w`,
          query_timeout: this.probeTimeoutMs,
        } as pg.QueryConfig);
        const row = rows[0];
        if (!row || row.ro) throw new QuarantineUnavailableError('quarantine database is read-only (replica or recovery)');
        if (!row.w) throw new QuarantineUnavailableError('no INSERT privilege on quarantine_chunks');
      } catch (err) {
        if (err instanceof QuarantineUnavailableError) throw err;
        // Any failure here (missing table included) means "not writable": readiness must say no.
        throw new QuarantineUnavailableError(`quarantine database not writable: ${err instanceof Error ? err.message : String(err)}`, {
          cause: err,
        });
      }
    })();
    try {
      await Promise.race([probe, deadline]);
    } finally {
      clearTimeout(timer);
      probe.catch(() => {});
    }
  }

  async close(): Promise<void> {
    this.pool.off('error', this.onPoolError);
    if (this.ownsPool) await this.pool.end().catch(() => {});
  }

  async get(id: string): Promise<QuarantineRecord | null> {
    if (!isSafeId(id)) return null;
    const { rows } = await this.q<MessageRow>('get', `SELECT ${ROW_COLUMNS} FROM quarantine_messages WHERE id = $1`, [id]);
    return rows[0] ? rowToRecord(rows[0]) : null;
  }

  async list(filter: QuarantineFilter = {}): Promise<QuarantinePage> {
    const limit = clampLimit(filter.limit);
    const where = new SqlWhere();
    const { p } = where;
    where.timeRange('quarantined_at', filter);
    if (filter.sender !== undefined) where.and(`sender_lc = ${p(normAddress(filter.sender))}`);
    if (filter.recipient !== undefined) where.and(`recipients_lc @> ARRAY[${p(normAddress(filter.recipient))}]::text[]`);
    if (filter.actionCode === null) where.and('action_code IS NULL');
    else if (filter.actionCode !== undefined) where.and(`action_code = ${p(filter.actionCode)}`);
    if (filter.policy !== undefined) where.and(`policy_names @> ARRAY[${p(filter.policy)}]::text[]`);
    if (filter.status !== undefined) {
      // Same rule as rowToRecord: a finished claim counts as released.
      where.and(
        filter.status === 'released'
          ? `(status = 'released' OR claim_done)`
          : filter.status === 'held'
            ? `(status = 'held' AND NOT claim_done)`
            : `status = ${p(filter.status)}`,
      );
    }
    if (filter.cursor) {
      const c = decodeCursor(filter.cursor);
      if (!isSafeId(c.id)) throw new QuarantineInputError('invalid cursor');
      where.and(`(quarantined_at, id) < (${p(new Date(c.t))}, ${p(c.id)}::uuid)`);
    }
    const sql = `SELECT ${ROW_COLUMNS} FROM quarantine_messages ${where.toString()}
      ORDER BY quarantined_at DESC, id DESC LIMIT ${p(limit + 1)}`;
    const { rows } = await this.q<MessageRow>('list', sql, where.values);
    const items = rows.slice(0, limit).map(rowToRecord);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? encodeCursor({ t: last.quarantinedAt, id: last.id }) : null };
  }

  openMessage(id: string): Readable {
    if (!isSafeId(id)) return failedStream(new QuarantineNotFoundError(id));
    const q = this.q.bind(this);
    // One chunk per query and no transaction held open: a slow reader (an HTTP download) costs no connection while it waits.
    async function* chunks(): AsyncGenerator<Buffer> {
      const head = await q<{ chunk_count: number }>('open', 'SELECT chunk_count FROM quarantine_messages WHERE id = $1', [id]);
      const row = head.rows[0];
      if (!row) throw new QuarantineNotFoundError(id);
      for (let seq = 0; seq < row.chunk_count; seq++) {
        // Text result format on purpose: node-postgres has no binary bytea parser (it would hand back a mangled string).
        const r = await q<{ data: Buffer }>('read', 'SELECT data FROM quarantine_chunks WHERE id = $1 AND seq = $2', [id, seq]);
        const chunk = r.rows[0];
        // Missing chunk: the message was deleted while we streamed it.
        if (!chunk) throw new QuarantineNotFoundError(id);
        yield chunk.data;
      }
    }
    return Readable.from(chunks(), { objectMode: false });
  }

  async claimRelease(id: string, claimant: { actor: string; claimTtlMs?: number }): Promise<ReleaseClaim> {
    if (!isSafeId(id)) return { status: 'not-found' };
    const ttlSec = (claimant.claimTtlMs ?? this.claimTtlMs) / 1000;
    const token = randomUUID();
    // The UPDATE takes the row lock; a concurrent claimer (any process) blocks on it, then re-checks the WHERE
    // against the committed claim and matches nothing. So exactly one claim wins, before anything is delivered.
    const won = await this.q<MessageRow>(
      'claim',
      `UPDATE quarantine_messages
          SET claim_token = $2, claim_by = $3, claim_instance = $4, claimed_at = now()
        WHERE id = $1 AND status = 'held' AND NOT claim_done
          AND (claim_token IS NULL OR claimed_at < now() - make_interval(secs => $5))
        RETURNING ${ROW_COLUMNS}`,
      [id, token, claimant.actor, this.instance, ttlSec],
    );
    if (won.rows[0]) return { status: 'claimed', token, record: rowToRecord(won.rows[0]) };
    const { rows } = await this.q<MessageRow>('claim', `SELECT ${ROW_COLUMNS} FROM quarantine_messages WHERE id = $1`, [id]);
    const row = rows[0];
    if (!row) return { status: 'not-found' };
    const rec = rowToRecord(row);
    if (rec.status === 'released') return { status: 'already-released', record: rec };
    return { status: 'in-progress', record: rec };
  }

  async completeRelease(id: string, token: string, info: ReleaseInfo, recipientResults?: RecipientResult[]): Promise<void> {
    const r = await this.q(
      'complete release',
      `UPDATE quarantine_messages SET status = 'released', release = $3, claim_done = true,
              recipient_results = COALESCE($4::jsonb, recipient_results)
        WHERE id = $1 AND claim_token = $2`,
      [id, token, JSON.stringify(info), recipientResults ? JSON.stringify(recipientResults) : null],
    );
    if (r.rowCount !== 1) throw new Error('release claim lost');
  }

  async partialRelease(id: string, token: string, recipientResults: RecipientResult[]): Promise<void> {
    // One statement: the results and the end of the claim land together, so no later release can miss them.
    const r = await this.q(
      'partial release',
      `UPDATE quarantine_messages SET recipient_results = $3::jsonb,
              claim_token = NULL, claim_by = NULL, claim_instance = NULL, claimed_at = NULL
        WHERE id = $1 AND claim_token = $2 AND NOT claim_done`,
      [id, token, JSON.stringify(recipientResults)],
    );
    if (r.rowCount !== 1) throw new Error('release claim lost');
  }

  async abandonRelease(id: string, token: string): Promise<void> {
    if (!isSafeId(id)) return;
    await this.q(
      'abandon release',
      `UPDATE quarantine_messages SET claim_token = NULL, claim_by = NULL, claim_instance = NULL, claimed_at = NULL
        WHERE id = $1 AND claim_token = $2 AND NOT claim_done`,
      [id, token],
    );
  }

  async delete(id: string): Promise<DeleteResult> {
    if (!isSafeId(id)) return 'not-found';
    // Chunks go with the row (ON DELETE CASCADE). A live release claim protects the bytes being delivered.
    const r = await this.q(
      'delete',
      `DELETE FROM quarantine_messages
        WHERE id = $1 AND (claim_token IS NULL OR claim_done OR claimed_at < now() - make_interval(secs => $2))`,
      [id, this.claimTtlMs / 1000],
    );
    if (r.rowCount === 1) return 'deleted';
    const { rows } = await this.q('delete', 'SELECT 1 FROM quarantine_messages WHERE id = $1', [id]);
    return rows.length ? 'in-progress' : 'not-found';
  }

  async purge(olderThan: Date): Promise<string[]> {
    const deleted: string[] = [];
    // Batches keep each statement short; the loop ends when a batch comes back short (the table is finite and
    // we only ever delete), and the guard bounds it even if rows keep appearing with old timestamps.
    for (let round = 0; round < 1_000_000; round++) {
      const r = await this.q<{ id: string }>(
        'purge',
        `DELETE FROM quarantine_messages WHERE id IN (
           SELECT id FROM quarantine_messages
            WHERE quarantined_at < $1 AND (claim_token IS NULL OR claim_done OR claimed_at < now() - make_interval(secs => $2))
            LIMIT ${PURGE_BATCH})
         RETURNING id`,
        [olderThan, this.claimTtlMs / 1000],
      );
      for (const row of r.rows) deleted.push(row.id);
      if (r.rows.length < PURGE_BATCH) break;
    }
    return deleted;
  }

  async audit(entry: AuditEntry): Promise<AuditRecord> {
    const { rows } = await this.q<{ id: string; at: Date }>(
      'audit',
      `INSERT INTO quarantine_audit (instance, actor, action, target, result, detail, source)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, at`,
      [this.instance, entry.actor, entry.action, entry.target, entry.result, clip(entry.detail) ?? null, entry.source ?? null],
    );
    const row = rows[0]!;
    return auditRecord(entry, String(row.id), row.at.toISOString(), this.instance);
  }

  async listAudit(filter: AuditFilter = {}): Promise<AuditPage> {
    const limit = clampLimit(filter.limit);
    const where = new SqlWhere();
    const { p } = where;
    where.timeRange('at', filter);
    // The filter keys are the column names.
    for (const column of ['actor', 'action', 'target'] as const) {
      const v = filter[column];
      if (v !== undefined) where.and(`${column} = ${p(v)}`);
    }
    if (filter.cursor) {
      // The serial id orders entries across instances; the cursor carries it (time is informational).
      const c = decodeCursor(filter.cursor);
      if (!/^\d{1,19}$/.test(c.id)) throw new QuarantineInputError('invalid cursor');
      where.and(`id < ${p(c.id)}::bigint`);
    }
    const { rows } = await this.q<{
      id: string;
      at: Date;
      instance: string;
      actor: string;
      action: string;
      target: string | null;
      result: string;
      detail: string | null;
      source: string | null;
    }>(
      'list audit',
      `SELECT id, at, instance, actor, action, target, result, detail, source FROM quarantine_audit
        ${where.toString()} ORDER BY id DESC LIMIT ${p(limit + 1)}`,
      where.values,
    );
    const items: AuditRecord[] = rows.slice(0, limit).map((r) => ({
      id: String(r.id),
      at: r.at.toISOString(),
      instance: r.instance,
      actor: r.actor,
      action: r.action,
      target: r.target,
      result: r.result,
      ...(r.detail !== null ? { detail: r.detail } : {}),
      ...(r.source !== null ? { source: r.source } : {}),
    }));
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? encodeCursor({ t: last.at, id: last.id }) : null };
  }
}
