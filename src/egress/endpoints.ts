// Upstream lists with MX-style priorities (next hops, UCWI servers): try order, down marking with back-off, background probes, and per-endpoint status for metrics and /readyz.
import type { Logger } from 'pino';

export interface BackoffOptions {
  /** First down period after a failure; doubled per failed probe. */
  initialMs: number;
  /** Longest down period. */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 5_000, maxMs: 60_000 };

/** One endpoint as /readyz, /metrics and `dlp-relay status` show it. */
export interface EndpointStatus {
  kind: string;
  endpoint: string;
  priority: number;
  up: boolean;
  /** ISO time until which it is skipped (while down), else null. */
  downUntil: string | null;
  /** Failures counted since start (transactions and probes). */
  failures: number;
  /** Times a transaction moved past this endpoint to the next one. */
  failovers: number;
  lastError: string | null;
}

export interface Endpoint<T> {
  readonly name: string;
  readonly priority: number;
  readonly target: T;
}

interface State {
  down: boolean;
  downUntil: number;
  backoffMs: number;
  failures: number;
  failovers: number;
  lastError: string | null;
  probeTimer: NodeJS.Timeout | null;
}

/**
 * The order endpoints are tried in, as MX records are: lowest priority value first; equal values share
 * the load (rotated per call); endpoints marked down come last, soonest-back first, so an outage of all of
 * them still tries each once instead of failing without a connection attempt.
 */
export class EndpointSet<T> {
  private readonly states = new Map<Endpoint<T>, State>();
  private turn = 0;
  private closed = false;

  constructor(
    readonly kind: string,
    readonly endpoints: ReadonlyArray<Endpoint<T>>,
    private readonly probe: (target: T, signal: AbortSignal) => Promise<unknown>,
    private readonly logger: Logger,
    private readonly backoff: BackoffOptions = DEFAULT_BACKOFF,
    private readonly now: () => number = Date.now,
  ) {
    if (endpoints.length === 0) throw new Error(`${kind}: at least one endpoint is needed`);
    for (const e of endpoints)
      this.states.set(e, { down: false, downUntil: 0, backoffMs: backoff.initialMs, failures: 0, failovers: 0, lastError: null, probeTimer: null });
  }

  /** Candidates for one transaction, in the order to try them. */
  order(): Array<Endpoint<T>> {
    // One endpoint (the usual setup) is asked on every message: skip the sorting and its allocations.
    if (this.endpoints.length === 1) return [this.endpoints[0]!];
    const t = this.now();
    const up: Array<Endpoint<T>> = [];
    const down: Array<Endpoint<T>> = [];
    for (const e of this.endpoints) (this.st(e).down && this.st(e).downUntil > t ? down : up).push(e);
    const turn = this.turn++;
    const byPriority = new Map<number, Array<Endpoint<T>>>();
    for (const e of up) byPriority.set(e.priority, [...(byPriority.get(e.priority) ?? []), e]);
    const ordered = [...byPriority.keys()].sort((a, b) => a - b).flatMap((p) => rotate(byPriority.get(p)!, turn));
    down.sort((a, b) => this.st(a).downUntil - this.st(b).downUntil);
    return [...ordered, ...down];
  }

  /** The endpoint answered as a working server should: it is up (again). */
  succeeded(e: Endpoint<T>): void {
    const s = this.st(e);
    if (!s.down) return;
    s.down = false;
    s.backoffMs = this.backoff.initialMs;
    if (s.probeTimer) clearTimeout(s.probeTimer);
    s.probeTimer = null;
    this.logger.info({ event: 'endpoint_up', kind: this.kind, endpoint: e.name }, `${this.kind} ${e.name} is back`);
  }

  /** The endpoint failed as a server (not the message): skip it for the back-off, probe it then. */
  failed(e: Endpoint<T>, why: string): void {
    const s = this.st(e);
    s.failures++;
    s.lastError = why.slice(0, 200);
    if (s.down) return;
    s.down = true;
    s.backoffMs = this.backoff.initialMs;
    s.downUntil = this.now() + s.backoffMs;
    this.logger.warn(
      { event: 'endpoint_down', kind: this.kind, endpoint: e.name, backoffMs: s.backoffMs, detail: s.lastError },
      `${this.kind} ${e.name} marked down for ${s.backoffMs} ms: ${s.lastError}`,
    );
    this.scheduleProbe(e);
  }

  /** A transaction left this endpoint for the next one. */
  failedOver(e: Endpoint<T>): void {
    this.st(e).failovers++;
  }

  statuses(): EndpointStatus[] {
    const t = this.now();
    return this.endpoints.map((e) => {
      const s = this.st(e);
      return {
        kind: this.kind,
        endpoint: e.name,
        priority: e.priority,
        up: !s.down,
        downUntil: s.down ? new Date(Math.max(s.downUntil, t)).toISOString() : null,
        failures: s.failures,
        failovers: s.failovers,
        lastError: s.lastError,
      };
    });
  }

  /**
   * Probes every endpoint now (the /readyz check): updates their state and says which answer. Resolves
   * with one line per endpoint; rejects only when none answers, since one working endpoint carries mail.
   */
  async probeAll(signal: AbortSignal): Promise<string> {
    const results = await Promise.all(
      this.endpoints.map(async (e) => {
        try {
          await this.probe(e.target, signal);
          this.succeeded(e);
          return { e, ok: true, detail: 'ok' };
        } catch (err) {
          const detail = (err as Error).message;
          // Our own deadline running out says nothing about the endpoint.
          if (!signal.aborted) this.failed(e, detail);
          return { e, ok: false, detail };
        }
      }),
    );
    const line = results.map((r) => `${r.e.name} (priority ${r.e.priority}): ${r.ok ? 'ok' : `DOWN ${r.detail}`}`).join('; ');
    if (results.some((r) => r.ok)) return line;
    throw new Error(line);
  }

  close(): void {
    this.closed = true;
    for (const s of this.states.values()) if (s.probeTimer) clearTimeout(s.probeTimer);
  }

  private scheduleProbe(e: Endpoint<T>): void {
    const s = this.st(e);
    if (this.closed) return;
    s.probeTimer = setTimeout(() => {
      s.probeTimer = null;
      if (!s.down || this.closed) return;
      this.probe(e.target, AbortSignal.timeout(Math.max(1_000, Math.min(s.backoffMs, 10_000))))
        .then(() => this.succeeded(e))
        .catch((err: unknown) => {
          if (!s.down || this.closed) return;
          s.failures++;
          s.lastError = (err as Error).message.slice(0, 200);
          s.backoffMs = Math.min(s.backoffMs * 2, this.backoff.maxMs);
          s.downUntil = this.now() + s.backoffMs;
          this.scheduleProbe(e);
        });
    }, s.backoffMs);
    // A probe must never keep a stopping process alive.
    s.probeTimer.unref();
  }

  private st(e: Endpoint<T>): State {
    return this.states.get(e)!;
  }
}

function rotate<X>(xs: X[], by: number): X[] {
  if (xs.length < 2) return xs;
  const k = by % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}
