// The CAS pusher: drains an outbox to the blocked lists in chunked, throttled requests, with backoff and capacity holds.
import type { Logger } from '../observability/logger.js';
import { DEFAULT_CAS_SETTINGS } from '../config/cas-schema.js';
import { CasError, type CasApi, type BlockedLists } from './client.js';
import { ListCapacity, LIST_FULL_RECHECK_MS, countByList, isListFullError, listsNamed } from './capacity.js';
import { CAS_LISTS, MAX_ITEMS_PER_LIST, compareKey, type CasList, type CasRuleAction, type CasRules } from './items.js';
import { type CasOutbox, type CasOutboxEntry, type CasListItem, type CasRetrySchedule } from './outbox/types.js';

export interface CasPusherOptions {
  outbox: CasOutbox;
  client: Pick<CasApi, 'updateBlockedLists' | 'getBlockedLists'>;
  /** Outbox-level retries (hours of outage), on top of the client's short in-call retries. */
  schedule?: Partial<CasRetrySchedule>;
  intervalMs?: number;
  /** Entries claimed per round; four full requests by default. */
  claimLimit?: number;
  /** Must outlast the client's whole call budget, or another relay may push the same entries again. */
  leaseMs?: number;
  /** When set, what the relay adds is recorded and removed again after this many days. */
  ttlDays?: number | null;
  ttlSweepIntervalMs?: number;
  /**
   * GET the lists before a `create` and skip what is already listed (saves quota; and what someone
   * else listed is not recorded as ours, so the TTL never removes it). Default: on when `ttlDays` is set.
   */
  diffBeforeCreate?: boolean;
  /** Done entries older than this are forgotten (default 7 days). */
  keepDoneMs?: number;
  /** Items the relay may have on one list at a time (ledger count); creates past it are held back. Default 2,048. */
  maxListItems?: number;
  now?: () => number;
  logger?: Logger;
}

export interface CasPushReport {
  requests: number;
  pushed: number;
  alreadyListed: number;
  failed: number;
  expired: number;
  /** Creates held back (no request) because the list is full. */
  deferred: number;
}

/** Splits entries into requests: chunk i carries slice i of every list, each at most 2,048 long. */
export function chunkRequests(entries: CasOutboxEntry[], perList = MAX_ITEMS_PER_LIST): Array<{ rules: CasRules; entries: CasOutboxEntry[] }> {
  const byList = new Map<CasList, CasOutboxEntry[]>();
  for (const e of entries) {
    const arr = byList.get(e.list) ?? [];
    arr.push(e);
    byList.set(e.list, arr);
  }
  const n = Math.max(0, ...[...byList.values()].map((a) => Math.ceil(a.length / perList)));
  const out: Array<{ rules: CasRules; entries: CasOutboxEntry[] }> = [];
  for (let i = 0; i < n; i++) {
    const rules: CasRules = {};
    const chunk: CasOutboxEntry[] = [];
    for (const list of CAS_LISTS) {
      const slice = (byList.get(list) ?? []).slice(i * perList, (i + 1) * perList);
      if (slice.length === 0) continue;
      rules[list] = slice.map((e) => e.value);
      chunk.push(...slice);
    }
    out.push({ rules, entries: chunk });
  }
  return out;
}

/**
 * Drains the outbox to CAS in the background. Creates and deletes go in separate requests; each
 * request carries up to 2,048 items per list and several lists at once. All calls go through the
 * client and therefore its shared limiter. Once CAS looks down in a round, the rest of the round is
 * put back untouched instead of burning attempts; a 400 is bisected to isolate the bad item.
 */
export class CasPusher {
  private readonly outbox: CasOutbox;
  private readonly client: Pick<CasApi, 'updateBlockedLists' | 'getBlockedLists'>;
  private readonly schedule: CasRetrySchedule;
  private readonly intervalMs: number;
  private readonly claimLimit: number;
  private readonly leaseMs: number;
  private readonly ttlMs: number | null;
  private readonly ttlSweepIntervalMs: number;
  private readonly diffBeforeCreate: boolean;
  private readonly keepDoneMs: number;
  private readonly now: () => number;
  private readonly logger: Logger | undefined;
  private readonly capacity: ListCapacity;
  private lastSweep = -Infinity;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<CasPushReport> | null = null;
  private stopped = true;

  constructor(opts: CasPusherOptions) {
    this.outbox = opts.outbox;
    this.client = opts.client;
    // Unset knobs take the config schema's defaults (cas.outbox), so both stay one set of numbers.
    const { maxAttempts, baseMs, maxMs, intervalMs } = DEFAULT_CAS_SETTINGS.outbox;
    this.schedule = { maxAttempts, baseMs, maxMs, ...opts.schedule };
    this.intervalMs = opts.intervalMs ?? intervalMs;
    this.claimLimit = opts.claimLimit ?? 4 * MAX_ITEMS_PER_LIST;
    this.leaseMs = opts.leaseMs ?? 15 * 60_000;
    this.ttlMs = opts.ttlDays == null ? null : opts.ttlDays * 86_400_000;
    this.ttlSweepIntervalMs = opts.ttlSweepIntervalMs ?? 3_600_000;
    this.diffBeforeCreate = opts.diffBeforeCreate ?? opts.ttlDays != null;
    this.keepDoneMs = opts.keepDoneMs ?? 7 * 86_400_000;
    this.now = opts.now ?? Date.now;
    this.logger = opts.logger;
    this.capacity = new ListCapacity(opts.maxListItems ?? MAX_ITEMS_PER_LIST, opts.logger);
  }

  /** Starts the background loop; its timer does not keep the process alive. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.arm(0);
  }

  /** Stops the loop and waits for a round in progress (its HTTP calls are bounded by the client's budget). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running?.catch(() => {});
  }

  /** Asks for a round soon (e.g. right after an enqueue) instead of at the next interval. */
  kick(): void {
    if (!this.stopped && !this.running) this.arm(0);
  }

  private arm(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.runOnce()
        .catch((err: unknown) => this.logger?.error({ err }, 'CAS push round failed'))
        .finally(() => {
          if (!this.stopped) this.arm(this.intervalMs);
        });
    }, ms);
    this.timer.unref();
  }

  /** One round: TTL sweep when due, then claim and push until nothing is due (bounded rounds). */
  runOnce(): Promise<CasPushReport> {
    // Rounds never overlap within one pusher; other relays are kept apart by the claim.
    this.running ??= this.round().finally(() => (this.running = null));
    return this.running;
  }

  private async round(): Promise<CasPushReport> {
    const report: CasPushReport = { requests: 0, pushed: 0, alreadyListed: 0, failed: 0, expired: 0, deferred: 0 };
    const now = this.now();
    if (now - this.lastSweep >= this.ttlSweepIntervalMs) {
      this.lastSweep = now;
      if (this.ttlMs !== null) report.expired = await this.outbox.expireAdded({ olderThan: now - this.ttlMs, now });
      await this.outbox.purgeDone(now - this.keepDoneMs);
    }
    let listed: Map<CasList, Set<string>> | null = null;
    for (let cycle = 0; cycle < 64; cycle++) {
      const entries = await this.outbox.claim({ limit: this.claimLimit, leaseMs: this.leaseMs, now: this.now() });
      if (entries.length === 0) break;
      let down: CasError | Error | null = null;
      for (const action of ['create', 'delete'] as const) {
        let group = entries.filter((e) => e.action === action);
        if (group.length === 0) continue;
        if (down) {
          await this.putBack(group, down, report);
          continue;
        }
        if (action === 'create' && this.diffBeforeCreate) {
          if (!listed) {
            try {
              listed = toKeySets(await this.client.getBlockedLists());
              report.requests++;
            } catch (err) {
              down = err as Error;
              await this.settleFailure(group, down, report);
              continue;
            }
          }
          const present = group.filter((e) => listed!.get(e.list)?.has(compareKey(e.list, e.value)));
          if (present.length) {
            // Already listed: by us earlier (restart its TTL clock) or by someone else (never ours to remove).
            await this.outbox.markDone(
              present.map((e) => e.id),
              { now: this.now(), refreshed: this.ttlMs !== null ? present.map(item) : [] },
            );
            report.alreadyListed += present.length;
            const ids = new Set(present.map((e) => e.id));
            group = group.filter((e) => !ids.has(e.id));
          }
        }
        if (action === 'create') {
          // Never past the cap: what the relay has on each list comes from the ledger (recorded at every push).
          const { fit, over } = this.capacity.plan(group, countByList(await this.outbox.addedItems()), this.now());
          await this.defer(over, 'CAS list full (cas.maxListItems)', report);
          group = fit;
        }
        const chunks = chunkRequests(group);
        for (let i = 0; i < chunks.length; i++) {
          const chunk = chunks[i]!;
          if (down) {
            await this.putBack(chunk.entries, down, report);
            continue;
          }
          down = await this.send(action, chunk.entries, report, 0);
          if (down === null && action === 'create' && listed) for (const e of chunk.entries) listed.get(e.list)?.add(compareKey(e.list, e.value));
        }
      }
      if (down) break;
    }
    if (report.requests || report.expired) this.logger?.info({ cas: report }, 'CAS push round');
    return report;
  }

  /** Sends one request; returns the error when CAS looks unavailable (so the round stops), else null. */
  private async send(action: CasRuleAction, entries: CasOutboxEntry[], report: CasPushReport, depth: number): Promise<CasError | Error | null> {
    const rules: CasRules = {};
    for (const e of entries) (rules[e.list] ??= []).push(e.value);
    report.requests++;
    try {
      await this.client.updateBlockedLists(action, rules);
    } catch (err) {
      if (action === 'create' && isListFullError(err)) {
        // A full list is not a bad item: halving would only multiply refused requests. Hold back, recheck later.
        this.capacity.markFull(listsNamed(err, [...new Set(entries.map((e) => e.list))]), this.now());
        await this.defer(entries, `CAS list full: ${err.msg}`, report);
        return null;
      }
      if (err instanceof CasError && err.status === 400 && entries.length > 1 && depth < 16) {
        // Whether one bad item fails the whole request is unknown (cas.md §3): halve until it is found.
        const mid = Math.ceil(entries.length / 2);
        const a = await this.send(action, entries.slice(0, mid), report, depth + 1);
        if (a) {
          await this.putBack(entries.slice(mid), a, report);
          return a;
        }
        return this.send(action, entries.slice(mid), report, depth + 1);
      }
      await this.settleFailure(entries, err as Error, report);
      return err instanceof CasError && err.status === 400 ? null : (err as Error);
    }
    const done = entries.map(item);
    await this.outbox.markDone(
      entries.map((e) => e.id),
      // Recorded with or without a TTL: the ledger is also how the relay knows how full each list is.
      action === 'create' ? { now: this.now(), added: done } : { now: this.now(), removed: done },
    );
    report.pushed += entries.length;
    return null;
  }

  private async settleFailure(entries: CasOutboxEntry[], err: Error, report: CasPushReport): Promise<void> {
    const permanent = err instanceof CasError && err.status === 400 && entries.length === 1;
    await this.outbox.markFailed(
      entries.map((e) => e.id),
      { error: err.message, schedule: this.schedule, now: this.now(), permanent },
    );
    report.failed += entries.length;
    this.logger?.warn(
      { count: entries.length, status: err instanceof CasError ? err.status : 0, traceId: err instanceof CasError ? err.traceId : null },
      'CAS push failed; will retry later',
    );
  }

  /** Creates for a full list: back to pending without an attempt, not due again before the recheck time. */
  private async defer(entries: CasOutboxEntry[], why: string, report: CasPushReport): Promise<void> {
    if (entries.length === 0) return;
    await this.outbox.markFailed(
      entries.map((e) => e.id),
      { error: why, schedule: { ...this.schedule, baseMs: LIST_FULL_RECHECK_MS, maxMs: LIST_FULL_RECHECK_MS }, now: this.now(), countAttempt: false },
    );
    report.deferred += entries.length;
  }

  /** Entries never sent this round because CAS is down: back to pending without spending an attempt. */
  private async putBack(entries: CasOutboxEntry[], err: Error, report: CasPushReport): Promise<void> {
    if (entries.length === 0) return;
    await this.outbox.markFailed(
      entries.map((e) => e.id),
      { error: `not sent: ${err.message}`, schedule: this.schedule, now: this.now(), countAttempt: false },
    );
    report.failed += entries.length;
  }
}

function item(e: CasOutboxEntry): CasListItem {
  return { list: e.list, value: e.value };
}

function toKeySets(lists: BlockedLists): Map<CasList, Set<string>> {
  const m = new Map<CasList, Set<string>>();
  for (const list of CAS_LISTS) m.set(list, new Set((lists[list] ?? []).map((v) => compareKey(list, v))));
  return m;
}
