// Connection limits for the admin listener: a total and a per-address cap that make room by closing the oldest idle connection, so idle sockets cannot starve /healthz.
import type { Socket } from 'node:net';
import type { ServerResponse } from 'node:http';
import type { Logger } from '../observability/logger.js';

interface Conn {
  addr: string;
  /** Requests being answered on it now; a connection with none is idle (never sent one, or between keep-alive requests). */
  active: number;
  /** Last time it was accepted or finished a response: the oldest idle one is closed first. */
  since: number;
  /** Closes the connection if no request head arrives in time; cleared by the first request. */
  firstRequest: NodeJS.Timeout | null;
}

export interface ConnectionLimits {
  max: number;
  perAddress: number;
  /**
   * A connection must complete its first request head within this time. Node's headersTimeout does
   * not cover a connection that never sends a byte, and a socket timeout would also cut slow answers.
   */
  firstRequestMs: number;
}

/**
 * Why evict rather than refuse: a refusing cap is exactly what an attacker fills with idle sockets.
 * Closing the oldest idle connection costs a legitimate client nothing it had (it was not waiting
 * for an answer) and always leaves room for a new request such as a health probe. Only when every
 * connection has a request in flight is the newcomer refused.
 */
export class ConnectionLimiter {
  private readonly conns = new Map<Socket, Conn>();
  private evicted = 0;
  private refused = 0;
  private lastReport = 0;

  constructor(
    private readonly limits: ConnectionLimits,
    private readonly logger: Logger,
  ) {}

  get size(): number {
    return this.conns.size;
  }

  admit(sock: Socket): void {
    const addr = sock.remoteAddress ?? 'unknown';
    let fromAddr = 0;
    for (const c of this.conns.values()) if (c.addr === addr) fromAddr++;
    if (fromAddr >= this.limits.perAddress && !this.evictOldestIdle((c) => c.addr === addr)) return this.refuse(sock, addr, 'per-address');
    if (this.conns.size >= this.limits.max && !this.evictOldestIdle(() => true)) return this.refuse(sock, addr, 'total');
    const timer = setTimeout(() => sock.destroy(), this.limits.firstRequestMs);
    timer.unref();
    this.conns.set(sock, { addr, active: 0, since: Date.now(), firstRequest: timer });
    sock.once('close', () => {
      clearTimeout(timer);
      this.conns.delete(sock);
    });
  }

  /** Marks the connection busy while `res` is being answered. */
  busy(sock: Socket, res: ServerResponse): void {
    const c = this.conns.get(sock);
    if (!c) return;
    if (c.firstRequest) clearTimeout(c.firstRequest);
    c.firstRequest = null;
    c.active++;
    res.once('close', () => {
      c.active--;
      c.since = Date.now();
    });
  }

  private evictOldestIdle(pick: (c: Conn) => boolean): boolean {
    let oldest: [Socket, Conn] | null = null;
    for (const e of this.conns) if (e[1].active === 0 && pick(e[1]) && (!oldest || e[1].since < oldest[1].since)) oldest = e;
    if (!oldest) return false;
    this.conns.delete(oldest[0]);
    oldest[0].destroy();
    this.evicted++;
    this.report();
    return true;
  }

  private refuse(sock: Socket, addr: string, cap: 'per-address' | 'total'): void {
    sock.destroy();
    this.refused++;
    this.report({ remote: addr, cap });
  }

  /** At most one line every 10 s: a flood of idle connections must not become a flood of log lines. */
  private report(last?: { remote: string; cap: string }): void {
    const now = Date.now();
    if (now - this.lastReport < 10_000) return;
    this.lastReport = now;
    // Totals since start; refused ones had every connection busy with a request (the newcomer was closed).
    this.logger.warn(
      { evicted: this.evicted, refused: this.refused, open: this.conns.size, limits: this.limits, ...(last ? { last } : {}) },
      'admin connection limit reached',
    );
  }
}
