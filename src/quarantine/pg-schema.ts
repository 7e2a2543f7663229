// PostgreSQL quarantine plumbing shared by the store: the schema migrations, a pool that can never hang the relay, error classification, and row mapping.
import pg from 'pg';
import type { Migration } from '../util/pg-migrate.js';
import { errCode, QuarantineInputError } from './common.js';
import { QuarantineNotFoundError, QuarantineUnavailableError } from './errors.js';
import type { MatchedPolicy, QuarantineRecord, QuarantineStatus, RecipientResult, ReleaseInfo, StoredEnvelope } from './types.js';

/** Chunk size for message bytes: large enough that a 50 MiB message is ~200 rows, small enough to stay far from any memory concern. */
export const CHUNK_BYTES = 256 * 1024;
/** Messages removed per purge statement, so one purge never runs into statement_timeout on a large backlog. */
export const PURGE_BATCH = 200;

export const QUARANTINE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'quarantine messages, chunks and audit',
    sql: `
CREATE TABLE quarantine_messages (
  id             uuid PRIMARY KEY,
  query_id       text NOT NULL,
  received_at    timestamptz NOT NULL,
  quarantined_at timestamptz NOT NULL,
  sender         text NOT NULL,
  sender_lc      text NOT NULL,
  recipients_lc  text[] NOT NULL,
  envelope       jsonb NOT NULL,
  client_address text NOT NULL,
  helo_name      text,
  size           bigint NOT NULL,
  sha256         text NOT NULL,
  md5            text NOT NULL,
  subject        text,
  message_id     text,
  action_code    integer,
  reason         text NOT NULL,
  policies       jsonb NOT NULL,
  policy_names   text[] NOT NULL,
  status         text NOT NULL CHECK (status IN ('held', 'released', 'deleted')),
  instance       text NOT NULL,
  chunk_count    integer NOT NULL DEFAULT 0,
  stored_bytes   bigint NOT NULL DEFAULT 0,
  release        jsonb,
  claim_token    uuid,
  claim_by       text,
  claim_instance text,
  claimed_at     timestamptz,
  claim_done     boolean NOT NULL DEFAULT false
);
CREATE INDEX quarantine_messages_newest ON quarantine_messages (quarantined_at DESC, id DESC);
CREATE INDEX quarantine_messages_sender ON quarantine_messages (sender_lc);
CREATE INDEX quarantine_messages_recipients ON quarantine_messages USING gin (recipients_lc);
CREATE INDEX quarantine_messages_policies ON quarantine_messages USING gin (policy_names);
CREATE INDEX quarantine_messages_status ON quarantine_messages (status, quarantined_at DESC);

CREATE TABLE quarantine_chunks (
  id   uuid NOT NULL REFERENCES quarantine_messages (id) ON DELETE CASCADE,
  seq  integer NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (id, seq)
);

CREATE TABLE quarantine_audit (
  id       bigserial PRIMARY KEY,
  at       timestamptz NOT NULL DEFAULT now(),
  instance text NOT NULL,
  actor    text NOT NULL,
  action   text NOT NULL,
  target   text,
  result   text NOT NULL,
  detail   text,
  source   text
);
CREATE INDEX quarantine_audit_target ON quarantine_audit (target, id DESC);
CREATE INDEX quarantine_audit_at ON quarantine_audit (at DESC);
`,
  },
  {
    version: 2,
    description: 'per-recipient release results',
    // Existing rows get [] (no recipient tried yet), which is what they mean: a held row was never partly released.
    sql: `ALTER TABLE quarantine_messages ADD COLUMN recipient_results jsonb NOT NULL DEFAULT '[]'::jsonb;`,
  },
];


/**
 * A pool that can never hang the relay: connecting, waiting for a free client, and every query are bounded.
 * Exported so tests (search_path per schema) and tools build pools with the same guarantees.
 */
export function createQuarantinePool(url: string, overrides: pg.PoolConfig = {}): pg.Pool {
  return new pg.Pool({
    connectionString: url,
    max: 10,
    // Also bounds the wait for a free client when all are busy (pg-pool applies it to the queue).
    connectionTimeoutMillis: 5_000,
    // Client side: rejects if the server does not answer (dead peer, black-holed network).
    query_timeout: 30_000,
    // Server side: the database cancels runaway statements itself.
    statement_timeout: 30_000,
    // A client that died mid-put must not keep row locks for long.
    idle_in_transaction_session_timeout: 60_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    application_name: 'dlp-relay-quarantine',
    ...overrides,
  });
}

/** Network-level and availability errors become QuarantineUnavailableError (451 / 503); SQL errors stay as they are (bugs). */
export function isConnectivityError(err: unknown): boolean {
  const code = errCode(err);
  if (code) {
    if (/^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ECONNABORTED)$/.test(code)) return true;
    // 08: connection exception; 57P01-3: shutdown / cannot connect now; 57014: statement timeout;
    // 53xxx: out of resources (disk full, too many connections); 25006: read-only (we hit a replica).
    if (/^08/.test(code) || /^57P0[123]$/.test(code) || code === '57014' || /^53/.test(code) || code === '25006') return true;
  }
  const msg = err instanceof Error ? err.message : '';
  return /timeout|terminated|connection error|not queryable|Client was closed|Cannot use a pool after calling end/i.test(msg);
}

export function toStoreError(err: unknown, what: string): Error {
  if (err instanceof QuarantineUnavailableError || err instanceof QuarantineNotFoundError || err instanceof QuarantineInputError) return err;
  if (isConnectivityError(err)) {
    const detail = err instanceof Error ? err.message : String(err);
    return new QuarantineUnavailableError(`quarantine database unavailable (${what}): ${detail}`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}

export interface MessageRow {
  id: string;
  query_id: string;
  received_at: Date;
  quarantined_at: Date;
  envelope: StoredEnvelope;
  client_address: string;
  helo_name: string | null;
  size: string;
  sha256: string;
  md5: string;
  subject: string | null;
  message_id: string | null;
  action_code: number | null;
  reason: string;
  policies: MatchedPolicy[];
  status: QuarantineStatus;
  instance: string;
  release: ReleaseInfo | null;
  recipient_results: RecipientResult[] | null;
  claim_token: string | null;
  claim_by: string | null;
  claim_instance: string | null;
  claimed_at: Date | null;
  claim_done: boolean;
}

export const ROW_COLUMNS = `id, query_id, received_at, quarantined_at, envelope, client_address, helo_name, size, sha256, md5,
  subject, message_id, action_code, reason, policies, status, instance, release, recipient_results,
  claim_token, claim_by, claim_instance, claimed_at, claim_done`;

export function rowToRecord(r: MessageRow): QuarantineRecord {
  const claimActive = r.claim_token !== null && !r.claim_done && r.status === 'held';
  return {
    id: r.id,
    queryId: r.query_id,
    receivedAt: r.received_at.toISOString(),
    quarantinedAt: r.quarantined_at.toISOString(),
    envelope: r.envelope,
    clientAddress: r.client_address,
    heloName: r.helo_name,
    size: Number(r.size),
    sha256: r.sha256,
    md5: r.md5,
    subject: r.subject,
    messageId: r.message_id,
    actionCode: r.action_code,
    reason: r.reason,
    policies: r.policies,
    // A finished claim means released even if the status update was lost; same rule as the fs store.
    status: r.claim_done ? 'released' : r.status,
    instance: r.instance,
    release: r.release,
    recipientResults: r.recipient_results ?? [],
    releaseClaim: claimActive
      ? { by: r.claim_by ?? 'unknown', at: (r.claimed_at ?? new Date(0)).toISOString(), instance: r.claim_instance ?? 'unknown' }
      : null,
  };
}

/**
 * A WHERE clause built one condition at a time, for the list queries: p(value) records a value and returns its
 * "$n" placeholder, so values and placeholders cannot drift apart; the text is empty when nothing was added.
 */
export class SqlWhere {
  readonly values: unknown[] = [];
  private readonly conditions: string[] = [];

  readonly p = (v: unknown): string => {
    this.values.push(v);
    return `$${this.values.length}`;
  };

  and(condition: string): void {
    this.conditions.push(condition);
  }

  /** from inclusive, to exclusive: the same window the fs store's filters use. */
  timeRange(column: string, range: { from?: Date | undefined; to?: Date | undefined }): void {
    if (range.from) this.and(`${column} >= ${this.p(range.from)}`);
    if (range.to) this.and(`${column} < ${this.p(range.to)}`);
  }

  toString(): string {
    return this.conditions.length ? `WHERE ${this.conditions.join(' AND ')}` : '';
  }
}
