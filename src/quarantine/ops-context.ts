// What every quarantine operation shares: the context (store, delivery, re-scan), the actor, the delivery contract, id normalising and the audit helpers.
import type { Readable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import { isSafeId, QuarantineInputError } from './common.js';
import { isUnavailable } from './errors.js';
import type { QuarantineRecord, QuarantineStore, StoredEnvelope } from './types.js';

/** What the next hop said for each recipient of one delivery. */
export interface DeliveryReport {
  /** The next hop's final reply, one line, or '' if DATA was never sent. */
  response: string;
  /**
   * One entry per envelope recipient: 'accepted' (2xx to RCPT and to DATA), 'refused' (5xx), 'deferred' (4xx, or
   * connection trouble after RCPT was sent and before DATA completed). A recipient missing here counts as deferred.
   */
  recipients: Array<{ address: string; status: 'accepted' | 'refused' | 'deferred'; code: number; response: string }>;
}

/**
 * Hands a message to the next hop with exactly this envelope; must honour the signal (abort = give up, reject).
 * Throwing means nothing was accepted (e.g. no connection): every recipient then counts as deferred.
 */
export type DeliverFn = (env: StoredEnvelope, openMessage: () => Readable, signal: AbortSignal) => Promise<DeliveryReport>;

/** Asks the DLP engine again; `allow: false` stops the release. */
export type RescanFn = (
  record: QuarantineRecord,
  openMessage: () => Readable,
  signal: AbortSignal,
) => Promise<{ actionCode: number | null; allow: boolean; detail: string }>;

export type RescanResult = Awaited<ReturnType<RescanFn>>;

/** Who acts: "admin-api", "cli:<user>", "retention"; source is the remote address or user@host. */
export interface Actor {
  name: string;
  source?: string;
}

export interface OperationsContext {
  store: QuarantineStore;
  logger?: Logger;
  /** Required for release only. */
  deliver?: DeliverFn;
  rescan?: RescanFn;
  /** Budget for re-scan plus delivery (default 2 minutes); must stay well below the claim TTL. */
  releaseTimeoutMs?: number;
  /** Age after which a release claim counts as left by a crash (default 15 minutes). */
  claimTtlMs?: number;
  /** Clock, for the release header and purge cut-off. */
  now?: () => Date;
}

export const DEFAULT_RELEASE_TIMEOUT_MS = 120_000;

/** Audit results that are routine; anything else is logged as a warning. */
const ROUTINE = ['ok', 'not-found', 'already-released', 'in-progress'];

export async function audited(
  ctx: OperationsContext,
  actor: Actor,
  action: string,
  target: string | null,
  result: string,
  detail?: string,
): Promise<void> {
  const entry = {
    actor: actor.name,
    action,
    target,
    result,
    ...(detail !== undefined ? { detail } : {}),
    ...(actor.source !== undefined ? { source: actor.source } : {}),
  };
  ctx.logger?.[ROUTINE.includes(result) ? 'info' : 'warn']({ audit: entry }, `quarantine ${action}: ${result}`);
  try {
    await ctx.store.audit(entry);
  } catch (err) {
    // The action already happened (or failed for its own reason); a lost store entry must not change its answer, but it must be visible.
    ctx.logger?.error({ audit: entry, err: err instanceof Error ? err.message : String(err) }, 'quarantine audit entry could not be stored');
  }
}

/** Runs `fn`; if the store fails, audits the failure (best effort) and rethrows so the caller answers 503 / exit 1. */
export async function guard<T>(ctx: OperationsContext, actor: Actor, action: string, target: string | null, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof QuarantineInputError) {
      await audited(ctx, actor, action, target, 'invalid', err.message);
    } else {
      await audited(ctx, actor, action, target, 'error', isUnavailable(err) ? 'store unavailable' : err instanceof Error ? err.message : String(err));
    }
    throw err;
  }
}

/** Operators paste ids from logs and mail headers: accept surrounding blanks and upper case, the store only ever sees the canonical form. */
export function normalizeId(id: string): string {
  const t = typeof id === 'string' ? id.trim() : '';
  return /^[0-9a-fA-F-]{36}$/.test(t) ? t.toLowerCase() : t;
}

/** Only well-formed ids are written to the audit as targets; anything else is recorded as "malformed" and never echoed. */
export function auditTarget(id: string): string | null {
  return isSafeId(id) ? id : null;
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
