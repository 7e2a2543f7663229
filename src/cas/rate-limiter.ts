// The in-process CAS rate limiter: a fixed window counted from each response, so the service never sees more than its quota.
import type { CasRateSettings } from '../config/cas-schema.js';
import type { CasLimiter } from './shared-rate.js';

/**
 * Fixed-window throttle on our side of the wire. Each of the `limit` slots is held while its request
 * is in flight and becomes free again `windowMs` after the response (or failure) arrived. Counting
 * from the response rather than the send means that, whatever the network delay, the server cannot
 * see more than `limit` arrivals in any `windowMs` span: a slot's next request leaves only after the
 * previous one has certainly arrived plus a full window. That holds for the vendor's window opened by
 * the first request (cas.md §2) wherever that window starts, which a client-side clock-aligned window
 * cannot promise. One instance must be shared by every call made with one token.
 */
export class CasRateLimiter implements CasLimiter {
  readonly limit: number;
  readonly windowMs: number;
  private readonly slots: number[];
  private readonly waiters: Array<{ grant: (release: () => void) => void }> = [];
  private pausedUntil = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;

  constructor(rate: CasRateSettings, now: () => number = Date.now) {
    if (!(rate.limit >= 1) || !(rate.windowMs >= 1)) throw new RangeError('rate limit and window must be positive');
    this.limit = Math.floor(rate.limit);
    this.windowMs = rate.windowMs;
    this.slots = new Array<number>(this.limit).fill(0);
    this.now = now;
  }

  /** Resolves with a release function once a request may be sent; rejects if `signal` aborts first. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: (release: () => void) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(abortReason(signal!));
        this.pump();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
      this.pump();
    });
  }

  /** After a 429 nobody sends until the server's window has surely passed: the quota is per token, not per call. */
  pauseFor(ms: number): void {
    this.pausedUntil = Math.max(this.pausedUntil, this.now() + ms);
    this.pump();
  }

  /** Requests waiting for a slot (for metrics and tests). */
  get queued(): number {
    return this.waiters.length;
  }

  private pump(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    // Bounded: each pass either grants a waiter or arms one timer and leaves.
    while (this.waiters.length > 0) {
      const t = this.now();
      if (t < this.pausedUntil) return this.arm(this.pausedUntil - t);
      let idx = 0;
      for (let i = 1; i < this.slots.length; i++) if (this.slots[i]! < this.slots[idx]!) idx = i;
      const freeAt = this.slots[idx]!;
      if (freeAt === Infinity) return; // all held; a release will pump again
      if (freeAt > t) return this.arm(freeAt - t);
      this.slots[idx] = Infinity;
      const waiter = this.waiters.shift()!;
      let released = false;
      waiter.grant(() => {
        if (released) return;
        released = true;
        this.slots[idx] = this.now() + this.windowMs;
        this.pump();
      });
    }
  }

  private arm(ms: number): void {
    // Referenced on purpose: a CLI process waiting only on the limiter must not exit early.
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.pump();
      },
      Math.max(1, ms),
    );
  }
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}
