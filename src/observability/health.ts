// Readiness: UCWI reachable, next hop (or outbox) reachable, quarantine store writable; each check bounded, results cached briefly.
export interface CheckResult {
  ok: boolean;
  detail: string;
  ms: number;
}
export type ReadyReport = { ready: boolean; checks: Record<string, CheckResult> };
/** A check passes by resolving; a string it resolves with is its detail (several endpoints, one line each). */
export type Check = (signal: AbortSignal) => Promise<void | string>;

/**
 * Runs every check at once, each within `timeoutMs`. Results are cached for `cacheMs` so a load
 * balancer polling every second does not turn into a connection storm against UCWI and the next hop.
 */
export function createReadiness(checks: Record<string, Check>, opts: { timeoutMs?: number; cacheMs?: number } = {}): () => Promise<ReadyReport> {
  const timeoutMs = opts.timeoutMs ?? 3000;
  const cacheMs = opts.cacheMs ?? 2000;
  let cached: { at: number; report: Promise<ReadyReport> } | null = null;
  const runAll = async (): Promise<ReadyReport> => {
    const entries = await Promise.all(
      Object.entries(checks).map(async ([name, check]): Promise<[string, CheckResult]> => {
        const t0 = performance.now();
        const signal = AbortSignal.timeout(timeoutMs);
        try {
          const detail = await Promise.race([
            check(signal),
            new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error(`no answer within ${timeoutMs} ms`)), { once: true })),
          ]);
          return [name, { ok: true, detail: typeof detail === 'string' ? detail.slice(0, 1000) : 'ok', ms: Math.round(performance.now() - t0) }];
        } catch (err) {
          // Detail is an error message, never a secret: the checks only connect and write probe files.
          return [name, { ok: false, detail: (err as Error).message.slice(0, 1000), ms: Math.round(performance.now() - t0) }];
        }
      }),
    );
    const result: Record<string, CheckResult> = Object.fromEntries(entries);
    return { ready: entries.every(([, r]) => r.ok), checks: result };
  };
  return () => {
    const now = Date.now();
    if (!cached || now - cached.at > cacheMs) cached = { at: now, report: runAll() };
    return cached.report;
  };
}
