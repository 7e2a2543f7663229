// One AbortSignal for "this deadline or any of these signals", built from a controller, one timer and plain listeners: AbortSignal.timeout/any cost a weak timer and GC-tracked links per call, which showed in the per-message profile.

export interface Deadline {
  readonly signal: AbortSignal;
  /** Stops the timer and unhooks the listeners; call it when the work is over (idempotent). */
  dispose(): void;
  /** Aborts now, from our side (with an AbortError unless a reason is given). */
  abort(reason?: unknown): void;
}

/**
 * Aborts after `ms` (a DOMException named TimeoutError, as AbortSignal.timeout would) or when one of `links`
 * aborts (with its reason). `ms` null: links only. The timer does not keep the process alive.
 */
export function deadline(ms: number | null, ...links: Array<AbortSignal | undefined>): Deadline {
  const ac = new AbortController();
  const hooked: AbortSignal[] = [];
  let timer: NodeJS.Timeout | undefined;
  const dispose = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    for (const s of hooked) s.removeEventListener('abort', onLink);
    hooked.length = 0;
  };
  function onLink(this: AbortSignal): void {
    ac.abort(this.reason);
    dispose();
  }
  for (const s of links) {
    if (!s) continue;
    if (s.aborted) {
      ac.abort(s.reason);
      dispose();
      return { signal: ac.signal, dispose, abort: () => undefined };
    }
    s.addEventListener('abort', onLink, { once: true });
    hooked.push(s);
  }
  if (ms !== null) {
    timer = setTimeout(() => {
      ac.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError'));
      dispose();
    }, ms);
    timer.unref();
  }
  const abort = (reason?: unknown): void => {
    ac.abort(reason);
    dispose();
  };
  return { signal: ac.signal, dispose, abort };
}
