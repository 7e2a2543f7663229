// The quarantine store contract: what the relay hands over when a verdict says "hold", whatever the backend.
import type { Readable } from 'node:stream';

export interface MatchedPolicy {
  name: string;
  severity: number | null;
  actionSettingName: string | null;
  numberOfMatches: number | null;
}

export interface StoredRecipient {
  address: string;
  notify?: string[];
  orcpt?: string;
}

/** The original envelope, kept so a release delivers exactly as the client asked. */
export interface StoredEnvelope {
  from: string;
  to: StoredRecipient[];
  smtpUtf8: boolean;
  bodyType?: '7bit' | '8bitmime';
  ret?: 'FULL' | 'HDRS';
  envid?: string;
}

/**
 * 'deleted' is kept for compatibility with records written by other tools; our stores delete for real
 * (bytes and metadata go, the audit trail keeps the fact), so listings never return it.
 */
export type QuarantineStatus = 'held' | 'released' | 'deleted';

/** What a completed release did; stored on the record so "already released" can say when and by whom. */
export interface ReleaseInfo {
  /** The release that completed the record (earlier partial releases are in recipientResults and the audit). */
  at: string;
  by: string;
  /** Every address the message was delivered to, over all releases of it (original recipients, or the redirect address). */
  recipients: string[];
  /** The next hop's answer to the last delivery, for the operator ('' when the last step only dropped recipients). */
  response: string;
}

/**
 * Where one original recipient stands after the releases so far. 'accepted' is final (never delivered again),
 * 'refused' (5xx) is not retried unless an operator names the recipient, 'deferred' (4xx or connection trouble)
 * is retried by the next plain release, 'dropped' means an operator gave up on it.
 */
export interface RecipientResult {
  address: string;
  status: 'accepted' | 'refused' | 'deferred' | 'dropped';
  /** The next hop's reply code; 0 when there was none (connection failure, or dropped). */
  code: number;
  response: string;
  at: string;
  by: string;
}

/** A release in flight: who claimed it and when. Visible so `show` can say "release in progress". */
export interface ReleaseClaimInfo {
  by: string;
  at: string;
  instance: string;
}

export interface QuarantineRecord {
  /** Our id: the UCWI queryID of the scan (a UUID), also the key in the store. */
  id: string;
  queryId: string;
  receivedAt: string;
  quarantinedAt: string;
  envelope: StoredEnvelope;
  clientAddress: string;
  heloName: string | null;
  size: number;
  sha256: string;
  md5: string;
  subject: string | null;
  messageId: string | null;
  /** null when no verdict came back (DLP error routed to quarantine). */
  actionCode: number | null;
  /** Why it is held: "dlp:6", "dlp-error:timeout", "unknown-action:42". */
  reason: string;
  policies: MatchedPolicy[];
  status: QuarantineStatus;
  /** Which relay instance stored it (hostname:pid), for several relays on one store. */
  instance: string;
  /** Set once released; absent or null while held. */
  release?: ReleaseInfo | null;
  /** Latest result per original recipient that a release has tried or dropped; absent or [] when none has. */
  recipientResults?: RecipientResult[];
  /** Set while a release is being delivered (or was interrupted by a crash, until the claim goes stale). */
  releaseClaim?: ReleaseClaimInfo | null;
}

/**
 * What the relay hands to put(). size, sha256 and md5 are measured by the store on the bytes it writes (a
 * stripped loop header makes them differ from the bytes received); values passed here are ignored.
 */
export type NewQuarantineRecord = Omit<QuarantineRecord, 'status' | 'quarantinedAt' | 'release' | 'releaseClaim' | 'recipientResults' | 'size' | 'sha256' | 'md5'> & {
  /** @deprecated ignored: the store measures what it stores. */
  size?: number;
  /** @deprecated ignored: the store measures what it stores. */
  sha256?: string;
  /** @deprecated ignored: the store measures what it stores. */
  md5?: string;
};

export const DEFAULT_LIST_LIMIT = 50;
export const MAX_LIST_LIMIT = 500;

/** Listing filter. Times apply to quarantinedAt: `from` inclusive, `to` exclusive. Address matches are exact and case-insensitive. */
export interface QuarantineFilter {
  from?: Date;
  to?: Date;
  /** Envelope sender; '' finds null-sender (bounce) messages. */
  sender?: string;
  /** Any envelope recipient. */
  recipient?: string;
  /** null finds messages held without a verdict (DLP error). */
  actionCode?: number | null;
  /** Exact matched-policy name. */
  policy?: string;
  status?: QuarantineStatus;
  /** Default 50, at most 500 (larger values are clamped). */
  limit?: number;
  /** Opaque, from a previous page's nextCursor. */
  cursor?: string;
}

/** Newest first (quarantinedAt, then id, both descending): keyset paging, so messages arriving meanwhile never shift or repeat a page. */
export interface QuarantinePage {
  items: QuarantineRecord[];
  nextCursor: string | null;
}

/** One admin action: who did what to which message, and how it ended. */
export interface AuditEntry {
  /** "admin-api", "cli:<user>", "retention". */
  actor: string;
  /** "list", "show", "download", "release", "delete", "purge", "audit". */
  action: string;
  /** The message id, or null for actions on the whole store. */
  target: string | null;
  /** "ok", "partial" (a release reached some recipients), "not-found", "already-released", "in-progress", "blocked", "failed", "invalid", "error". */
  result: string;
  detail?: string;
  /** Where the actor came from (remote address, user@host). */
  source?: string;
}

export interface AuditRecord extends AuditEntry {
  id: string;
  at: string;
  /** The relay instance that wrote it. */
  instance: string;
}

export interface AuditFilter {
  from?: Date;
  to?: Date;
  actor?: string;
  action?: string;
  target?: string;
  limit?: number;
  cursor?: string;
}

export interface AuditPage {
  items: AuditRecord[];
  nextCursor: string | null;
}

/**
 * Outcome of trying to claim a message for release. Exactly one caller gets `claimed` for a held
 * message, across processes: the claim is durable before anything is delivered.
 */
export type ReleaseClaim =
  | { status: 'claimed'; token: string; record: QuarantineRecord }
  | { status: 'not-found' }
  | { status: 'already-released'; record: QuarantineRecord }
  | { status: 'in-progress'; record: QuarantineRecord };

export type DeleteResult = 'deleted' | 'not-found' | 'in-progress';

export interface QuarantineStore {
  readonly kind: 'fs' | 'postgres';
  init(): Promise<void>;
  /**
   * Stores the message bytes and metadata durably. When this resolves the message survives a crash;
   * when it rejects nothing half-written is visible and the relay answers 451. The stored record's size,
   * sha256 and md5 are those of the bytes read from openMessage(), measured while they are written.
   */
  put(record: NewQuarantineRecord, openMessage: () => Readable): Promise<void>;
  /** Cheap probe for readiness: can we write right now? */
  checkWritable(): Promise<void>;
  close(): Promise<void>;

  list(filter?: QuarantineFilter): Promise<QuarantinePage>;
  /** null for an unknown or malformed id (malformed ids never reach a path or a query). */
  get(id: string): Promise<QuarantineRecord | null>;
  /**
   * The stored EML, byte for byte, streamed. Unknown or malformed ids give a stream that fails with
   * QuarantineNotFoundError; check with get() first when the answer must be known before streaming.
   */
  openMessage(id: string): Readable;
  /**
   * Takes the release claim (atomically, across processes) unless the message is released or a live
   * claim exists. A claim older than claimTtlMs is treated as left by a crash and may be taken over.
   */
  claimRelease(id: string, claimant: { actor: string; claimTtlMs?: number }): Promise<ReleaseClaim>;
  /**
   * Marks the claimed message released (and stores recipientResults when given). The claim stays as a guard
   * so no later claim can deliver again.
   */
  completeRelease(id: string, token: string, info: ReleaseInfo, recipientResults?: RecipientResult[]): Promise<void>;
  /**
   * Ends a claimed release that left recipients to do: stores recipientResults (the whole list, replacing the
   * old one) and drops the claim; the message stays held for the recipients not yet delivered.
   */
  partialRelease(id: string, token: string, recipientResults: RecipientResult[]): Promise<void>;
  /** Drops the claim after a failed delivery so a retry is possible. No-op if the token no longer holds it. */
  abandonRelease(id: string, token: string): Promise<void>;
  /** Removes bytes and metadata. A message with a live release claim is not deleted ('in-progress'). */
  delete(id: string): Promise<DeleteResult>;
  /**
   * Deletes every message quarantined before `olderThan` (any status, except while being released); returns the
   * ids it deleted, so the audit can name each one.
   */
  purge(olderThan: Date): Promise<string[]>;
  audit(entry: AuditEntry): Promise<AuditRecord>;
  listAudit(filter?: AuditFilter): Promise<AuditPage>;
}
