// Several next hops with MX-style priorities: one NextHopPool each, failover only where the message cannot be duplicated (nothing accepted yet, never after DATA).
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { SmtpClientError, type Reply } from '../smtp/client.js';
import type { Envelope } from '../smtp/envelope.js';
import { EndpointSet, type BackoffOptions, type Endpoint, type EndpointStatus } from './endpoints.js';
import { DeliveryError, fromClientError } from './next-hop-errors.js';
import { NextHopPool, type DeliveryReport, type NextHopOptions, type NextHopTransaction } from './pool.js';

export interface NextHopEndpoint {
  host: string;
  port: number;
  /** Lower first; equal priorities share the load (as MX preferences). */
  priority: number;
}

/** Client phases in which the next hop has accepted nothing that a retry elsewhere could duplicate. */
const BEFORE_MAIL_ACCEPTED = new Set(['connect', 'greeting', 'ehlo', 'tls', 'auth', 'mail']);
const BEFORE_DATA = new Set([...BEFORE_MAIL_ACCEPTED, 'rcpt']);

/**
 * The next hops of one relay. With a single endpoint it behaves exactly as that endpoint's pool does
 * (no retry of its own), so the single host/port configuration keeps its semantics.
 */
export class NextHopGroup {
  private readonly set: EndpointSet<NextHopPool>;

  constructor(endpoints: readonly NextHopEndpoint[], base: Omit<NextHopOptions, 'host' | 'port'>, logger: Logger, backoff?: BackoffOptions) {
    const list: Array<Endpoint<NextHopPool>> = endpoints.map((e) => ({
      name: `${e.host}:${e.port}`,
      priority: e.priority,
      target: new NextHopPool({ ...base, host: e.host, port: e.port }, logger),
    }));
    this.set = new EndpointSet('next hop', list, (pool, signal) => pool.verify(signal), logger, backoff);
  }

  get describe(): string {
    const l = this.set.endpoints;
    return l.length === 1 ? l[0]!.target.describe : `next hops ${l.map((e) => `${e.name} (priority ${e.priority})`).join(', ')}`;
  }

  /** Connections in use by transactions right now, over all endpoints. */
  get busy(): number {
    return this.set.endpoints.reduce((n, e) => n + e.target.busy, 0);
  }

  statuses(): EndpointStatus[] {
    return this.set.statuses();
  }

  /**
   * NextHopPool.begin on the first endpoint that opens a transaction. A connection failure, or a 4xx to
   * MAIL, moves on to the next endpoint: MAIL was not accepted, so nothing can be duplicated. A 5xx to MAIL
   * is that next hop's decision and is passed through, as an MTA does not try further MX hosts after one.
   */
  async begin(env: Envelope, signal: AbortSignal): Promise<{ reply: Reply; tx: NextHopTransaction | null }> {
    let lastReply: { reply: Reply; tx: null } | null = null;
    let lastErr: DeliveryError | null = null;
    const order = this.set.order();
    for (const [i, e] of order.entries()) {
      const more = i < order.length - 1;
      try {
        const r = await e.target.begin(env, signal);
        if (r.tx || r.reply.code >= 500 || !more || signal.aborted) {
          if (r.reply.code !== 421) this.set.succeeded(e);
          else this.set.failed(e, String(r.reply));
          return r;
        }
        // 421 is the next hop going away; another 4xx (greylisting, a full disk) is this endpoint's trouble too.
        if (r.reply.code === 421) this.set.failed(e, String(r.reply));
        lastReply = { reply: r.reply, tx: null };
      } catch (err) {
        const de = fromClientError(err, 'mail');
        if (de.phase === 'aborted' || signal.aborted) throw de;
        if (de.phase !== 'pool') this.set.failed(e, de.message);
        lastErr = de;
        if (!more) throw de;
      }
      this.set.failedOver(e);
    }
    if (lastReply) return lastReply;
    throw lastErr ?? new DeliveryError('no next hop to try', { kind: 'transient', phase: 'connect' });
  }

  /**
   * NextHopPool.deliver (releases, notices) with failover while no DATA went out: connection failures up to
   * RCPT, and reports where every recipient was deferred before any final reply. After DATA (a reply
   * lost after the final dot) the message may have been delivered, so that failure is reported, not retried.
   */
  async deliver(env: Envelope, open: () => Readable, signal: AbortSignal): Promise<DeliveryReport> {
    const order = this.set.order();
    let last: DeliveryReport | null = null;
    for (const [i, e] of order.entries()) {
      const more = i < order.length - 1;
      try {
        const report = await e.target.deliver(env, open, signal);
        const nothingSent = report.response === '' && report.recipients.every((r) => r.status === 'deferred');
        if (!nothingSent || !more || signal.aborted) {
          if (!nothingSent) this.set.succeeded(e);
          return report;
        }
        last = report;
      } catch (err) {
        const de = fromClientError(err, 'data');
        if (de.phase === 'aborted' || signal.aborted || !more || !beforeData(de)) {
          if (beforeData(de) && de.phase !== 'aborted' && de.phase !== 'pool') this.set.failed(e, de.message);
          throw de;
        }
        if (de.phase !== 'pool') this.set.failed(e, de.message);
      }
      this.set.failedOver(e);
    }
    return last!;
  }

  /** Readiness: every endpoint probed; ready while at least one answers. The detail names each one. */
  verify(signal: AbortSignal): Promise<string> {
    return this.set.probeAll(signal);
  }

  async close(): Promise<void> {
    this.set.close();
    await Promise.all(this.set.endpoints.map((e) => e.target.close()));
  }
}

/** True when the failure happened before DATA was sent, so another next hop cannot duplicate the message. */
function beforeData(de: DeliveryError): boolean {
  if (de.phase === 'pool') return true;
  const cause = de.cause;
  if (cause instanceof SmtpClientError) return cause.kind !== 'aborted' && BEFORE_DATA.has(cause.phase);
  return de.phase === 'connect' || de.phase === 'tls' || de.phase === 'auth' || de.phase === 'mail' || de.phase === 'rcpt';
}
