// How full each CAS blocked list is with what the relay added: pushes past the cap are held back (no request), 90 % warns, and a list CAS reports full is left alone for a while.
import type { Logger } from '../observability/logger.js';
import { CasError } from './client.js';
import { CAS_LISTS, MAX_ITEMS_PER_LIST, type CasList } from './items.js';

/** Entries held back because a list is full are looked at again after this long (no request is made meanwhile). */
export const LIST_FULL_RECHECK_MS = 15 * 60_000;
/** Share of the cap at which the relay starts warning. */
export const WARN_SHARE = 0.9;

/**
 * Whether a 400 says a list is full rather than that an item is bad. Bisecting such an answer (the old
 * behaviour) makes 2n-1 requests for n items that can never fit: hours of a 20-per-minute quota.
 */
export function isListFullError(err: unknown): err is CasError {
  return err instanceof CasError && err.status === 400 && /exceed|maximum|too many|is full|limit/i.test(err.msg);
}

/** The lists an answer names; when it names none, every list of the request is taken as full. */
export function listsNamed(err: CasError, inRequest: readonly CasList[]): CasList[] {
  const named = CAS_LISTS.filter((l) => new RegExp(`\\b${l}\\b`, 'i').test(err.msg));
  return named.length ? named : [...inRequest];
}

export function countByList(items: ReadonlyArray<{ list: CasList }>): Map<CasList, number> {
  const m = new Map<CasList, number>();
  for (const it of items) m.set(it.list, (m.get(it.list) ?? 0) + 1);
  return m;
}

/** The relay's share of each list: what fits under the cap, warnings at 90 %, and lists CAS said are full. */
export class ListCapacity {
  private readonly fullUntil = new Map<CasList, number>();
  private readonly warned = new Set<CasList>();
  private readonly refusedLogAt = new Map<CasList, number>();

  constructor(
    readonly cap: number = MAX_ITEMS_PER_LIST,
    private readonly logger?: Logger,
  ) {}

  /** CAS refused a create because a list is full: no creates to it until the recheck time. */
  markFull(lists: readonly CasList[], now: number): void {
    for (const l of lists) this.fullUntil.set(l, now + LIST_FULL_RECHECK_MS);
    this.logger?.warn(
      { lists, recheckInMs: LIST_FULL_RECHECK_MS },
      'CAS reports a blocked list full: pushes to it are held back, no retries until the recheck',
    );
  }

  /**
   * Splits create entries (in order) into those that fit under the cap, given how many items the
   * relay has on each list (`added`, from the outbox ledger), and those held back.
   */
  plan<T extends { list: CasList }>(entries: readonly T[], added: ReadonlyMap<CasList, number>, now: number): { fit: T[]; over: T[] } {
    const room = new Map<CasList, number>();
    for (const l of CAS_LISTS) {
      const full = (this.fullUntil.get(l) ?? 0) > now;
      room.set(l, full ? 0 : Math.max(0, this.cap - (added.get(l) ?? 0)));
    }
    const fit: T[] = [];
    const over: T[] = [];
    for (const e of entries) {
      const r = room.get(e.list)!;
      if (r > 0) {
        fit.push(e);
        room.set(e.list, r - 1);
      } else over.push(e);
    }
    this.report(added, countByList(fit), countByList(over), now);
    return { fit, over };
  }

  private report(added: ReadonlyMap<CasList, number>, fit: Map<CasList, number>, over: Map<CasList, number>, now: number): void {
    for (const l of CAS_LISTS) {
      const after = (added.get(l) ?? 0) + (fit.get(l) ?? 0);
      if (after >= WARN_SHARE * this.cap) {
        if (!this.warned.has(l))
          this.logger?.warn(
            { list: l, items: after, cap: this.cap },
            'CAS blocked list at 90 % of what the relay may add: set cas.ttlDays or remove entries (dlp-relay cas unblock)',
          );
        this.warned.add(l);
      } else this.warned.delete(l);
      const held = over.get(l) ?? 0;
      // One line per list per recheck period: a spam run must not turn into a log flood.
      if (held > 0 && now - (this.refusedLogAt.get(l) ?? -Infinity) >= LIST_FULL_RECHECK_MS) {
        this.refusedLogAt.set(l, now);
        this.logger?.warn({ list: l, held, items: added.get(l) ?? 0, cap: this.cap }, 'CAS blocked list full: pushes held back');
      }
    }
  }
}
