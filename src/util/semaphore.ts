// A counting semaphore whose waits honour an AbortSignal, so a queued caller gives up at its deadline instead of waiting forever.
export class Semaphore {
  private active = 0;
  private readonly waiters: Array<{ resolve: () => void; reject: (e: unknown) => void; cleanup: () => void }> = [];
  constructor(private readonly max: number) {}

  get inUse(): number {
    return this.active;
  }
  get waiting(): number {
    return this.waiters.length;
  }

  /** A slot now, or null when all are taken (no waiting, no allocation beyond the releaser). */
  tryAcquire(): (() => void) | null {
    if (this.active >= this.max) return null;
    this.active++;
    return this.releaser();
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw signal.reason ?? new Error('aborted');
    if (this.active < this.max) {
      this.active++;
      return this.releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(entry);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal?.reason ?? new Error('aborted'));
      };
      const entry = { resolve, reject, cleanup: () => signal?.removeEventListener('abort', onAbort) };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(entry);
    });
    return this.releaser();
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiters.shift();
      if (next) {
        // Hand the slot over directly: active stays the same.
        next.cleanup();
        next.resolve();
      } else {
        this.active--;
      }
    };
  }
}
