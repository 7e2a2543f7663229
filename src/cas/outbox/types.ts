// The CAS push outbox contract: items, entries, stats, the backend interface, and the pure helpers both backends share.
import type { Logger } from '../../observability/logger.js';
import { isCasList, itemProblem, normalizeItem, type CasList, type CasRuleAction } from '../items.js';
import type { CasSettings } from '../../config/cas-schema.js';

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

/** The retry part of cas.outbox (attempts before `failed`, backoff base and cap), typed by the schema that defaults it. */
export type CasRetrySchedule = Pick<CasSettings['outbox'], 'maxAttempts' | 'baseMs' | 'maxMs'>;

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

export const k2 = (list: string, value: string) => `${list}\u0000${value}`;
export const k3 = (list: string, value: string, action: string) => `${list}\u0000${value}\u0000${action}`;
export const opposite = (a: CasRuleAction): CasRuleAction => (a === 'create' ? 'delete' : 'create');

/** Normalise, validate and de-duplicate one enqueue call (last intent per list+value wins), in a stable order. */
export function prepare(items: CasOutboxItem[], logger?: Logger): CasOutboxItem[] {
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
