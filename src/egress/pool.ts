// Next-hop connections on our own SMTP client: a bounded pool with idle reuse, lockstep transactions for live sessions, whole transactions for releases and notices.
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { SmtpClient, SmtpClientError, type Reply, type SmtpClientOptions } from '../smtp/client.js';
import type { Envelope } from '../smtp/envelope.js';
import { OutageLog } from '../observability/outage.js';
import { deadline, type Deadline } from '../util/deadline.js';
import { DeliveryError, fromClientError, mailParamsFor, rcptParamsFor } from './next-hop-errors.js';

export interface NextHopOptions {
  host: string;
  port: number;
  /** Implicit TLS (465-style). */
  secure: boolean;
  starttls: 'opportunistic' | 'required' | 'off';
  tls: { rejectUnauthorized: boolean; ca?: string | Buffer; servername?: string };
  auth?: { user: string; pass: string };
  heloName: string;
  pool: { maxConnections: number; maxMessagesPerConnection: number; idleTimeoutMs: number; acquireTimeoutMs: number };
  timeouts: { connectMs: number; greetingMs: number; socketMs: number; dataDoneMs: number };
}

/** One recipient's fate at the next hop, as a release or notice reports it. */
export interface RecipientResult {
  address: string;
  status: 'accepted' | 'refused' | 'deferred';
  code: number;
  response: string;
}

export interface DeliveryReport {
  /** The next hop's final reply, one line, or '' when no DATA was sent. */
  response: string;
  recipients: RecipientResult[];
}

interface Conn {
  id: number;
  client: SmtpClient;
  idleTimer?: NodeJS.Timeout | undefined;
}

/** What a waiter for a pool slot is given: an idle connection, or the right to open a new one. */
type Grant = { conn: Conn } | { slot: true };

interface Waiter {
  grant(g: Grant): void;
  fail(err: DeliveryError): void;
}

export class NextHopPool {
  private readonly log: Logger;
  /** Connection failures logged at warn, rate-limited, and the first success after them as a recovery. */
  private readonly outage: OutageLog;
  /** Connections open or being opened; at most pool.maxConnections. */
  private count = 0;
  /** Idle connections, most recently used last (reused first, so the others can time out). */
  private readonly idle: Conn[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly leased = new Set<Conn>();
  private closed = false;
  private nextId = 1;

  constructor(
    private readonly opts: NextHopOptions,
    logger: Logger,
  ) {
    this.log = logger.child({ nextHop: `${opts.host}:${opts.port}` });
    this.outage = new OutageLog(this.log, `next hop ${opts.host}:${opts.port}`);
  }

  get describe(): string {
    return `next hop ${this.opts.host}:${this.opts.port}`;
  }

  /** Connections in use by transactions right now. */
  get busy(): number {
    return this.leased.size;
  }

  /**
   * Starts a lockstep transaction: a pooled connection and MAIL FROM with the client's parameters.
   * The next hop's reply to MAIL comes back whatever it is; `tx` is set only when it was 2xx.
   * Connection trouble throws DeliveryError (the caller answers 4xx).
   */
  async begin(env: Envelope, signal: AbortSignal): Promise<{ reply: Reply; tx: NextHopTransaction | null }> {
    for (;;) {
      const { conn, reused } = await this.lease(signal);
      try {
        const reply = await conn.client.mail(env.from, mailParamsFor(env, conn.client), signal);
        if (reply.code >= 200 && reply.code < 300) return { reply, tx: new NextHopTransaction(this, conn, reply) };
        // A refused MAIL leaves no transaction open: the connection stays usable unless the next hop is leaving.
        this.release(conn, reply.code !== 421);
        // A parked connection the next hop timed out ("421 ... timeout exceeded" crossing our MAIL) says
        // nothing about a fresh one; MAIL was not accepted, so trying another connection is safe.
        if (reused && reply.code === 421 && !signal.aborted) continue;
        return { reply, tx: null };
      } catch (err) {
        this.release(conn, false);
        // An idle connection that died while parked: nothing was accepted, so another connection is a safe retry.
        if (reused && err instanceof SmtpClientError && err.kind !== 'aborted' && !signal.aborted) {
          this.log.debug({ conn: conn.id, err: err.message }, 'idle next-hop connection unusable, trying another');
          continue;
        }
        throw fromClientError(err, 'mail');
      }
    }
  }

  /**
   * A whole transaction for releases and notices: pipelined where the next hop allows, each recipient
   * reported. Throws DeliveryError (transient) when the connection fails before the next hop's final
   * reply: nothing is known to be delivered then, so the caller retries the whole message.
   */
  async deliver(env: Envelope, open: () => Readable, signal: AbortSignal): Promise<DeliveryReport> {
    if (env.to.length === 0) throw new DeliveryError('no recipients to deliver to', { kind: 'permanent', phase: 'rcpt' });
    for (;;) {
      const { conn, reused } = await this.lease(signal);
      let r: Awaited<ReturnType<SmtpClient['send']>>;
      try {
        r = await conn.client.send(
          {
            from: env.from,
            mailParams: mailParamsFor(env, conn.client),
            rcpts: env.to.map((t) => ({ address: t.address, params: rcptParamsFor(t, conn.client) })),
          },
          open,
          signal,
        );
      } catch (err) {
        this.release(conn, false);
        if (reused && err instanceof SmtpClientError && (err.phase === 'mail' || err.phase === 'rcpt') && err.kind !== 'aborted' && !signal.aborted) continue;
        throw fromClientError(err, err instanceof SmtpClientError && err.phase === 'message' ? 'data' : 'mail');
      }
      const finalOk = r.final !== null && r.final.code >= 200 && r.final.code < 300;
      // MAIL accepted but no final reply (every RCPT refused, DATA refused): the next hop still holds the
      // transaction, and the next MAIL on this connection would draw "503 nested MAIL". RSET first.
      if (r.final === null && r.mail.code >= 200 && r.mail.code < 300) await this.resetAndRelease(conn);
      else this.release(conn, r.final !== null ? r.final.code !== 421 : r.mail.code !== 421);
      if (reused && r.mail.code === 421 && !signal.aborted) continue;
      if (r.mail.code >= 300) {
        const status = r.mail.code >= 500 ? 'refused' : 'deferred';
        return { response: '', recipients: env.to.map((t) => ({ address: t.address, status, code: r.mail.code, response: String(r.mail) })) };
      }
      const endReply = r.final ?? r.data;
      return {
        response: r.final ? String(r.final) : '',
        recipients: env.to.map((t, i) => {
          const rr = r.rcpts[i];
          if (!rr || rr.code >= 300) {
            const code = rr?.code ?? 451;
            return { address: t.address, status: code >= 500 ? 'refused' : 'deferred', code, response: rr ? String(rr) : 'no reply' };
          }
          if (finalOk) return { address: t.address, status: 'accepted', code: r.final!.code, response: String(r.final) };
          const code = endReply?.code ?? 451;
          return { address: t.address, status: code >= 500 ? 'refused' : 'deferred', code, response: endReply ? String(endReply) : 'no reply' };
        }),
      };
    }
  }

  /** Readiness: a fresh connection outside the pool (never queued behind mail), greeted and closed. */
  async verify(signal?: AbortSignal): Promise<void> {
    if (this.closed) throw closingError();
    let client: SmtpClient;
    try {
      client = await SmtpClient.connect(this.clientOptions(), signal);
    } catch (err) {
      throw fromClientError(err, 'connect');
    }
    await client.quit();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.fail(closingError());
    for (const c of this.idle.splice(0)) this.retire(c, true);
    // Transactions still running are ended by their sessions (ingress closes first); whatever is left goes now.
    for (const c of [...this.leased]) this.retire(c, false);
  }

  // ---- pool ----------------------------------------------------------------------------------

  private clientOptions(): SmtpClientOptions {
    const o = this.opts;
    return {
      host: o.host,
      port: o.port,
      secure: o.secure,
      starttls: o.starttls,
      tls: {
        rejectUnauthorized: o.tls.rejectUnauthorized,
        ...(o.tls.ca !== undefined ? { ca: o.tls.ca } : {}),
        ...(o.tls.servername ? { servername: o.tls.servername } : {}),
      },
      ...(o.auth ? { auth: o.auth } : {}),
      heloName: o.heloName,
      timeouts: { connectMs: o.timeouts.connectMs, greetingMs: o.timeouts.greetingMs, commandMs: o.timeouts.socketMs, dataDoneMs: o.timeouts.dataDoneMs },
    };
  }

  private async lease(signal: AbortSignal): Promise<{ conn: Conn; reused: boolean }> {
    if (this.closed) throw closingError();
    if (signal.aborted) throw abortedError('before a connection was taken');
    let grant: Grant | null = null;
    while (this.idle.length) {
      const conn = this.idle.pop()!;
      clearTimeout(conn.idleTimer);
      if (!conn.client.closed) {
        grant = { conn };
        break;
      }
      this.forget(conn);
    }
    if (!grant && this.count < this.opts.pool.maxConnections) {
      this.count++;
      grant = { slot: true };
    }
    grant ??= await this.wait(signal);
    if ('conn' in grant) {
      this.leased.add(grant.conn);
      return { conn: grant.conn, reused: true };
    }
    // A slot: open a new connection (count already includes it).
    try {
      const client = await SmtpClient.connect(this.clientOptions(), signal);
      const conn: Conn = { id: this.nextId++, client };
      client.on('close', () => {
        // A parked connection the next hop closed: drop it from the idle list so it is not handed out.
        const i = this.idle.indexOf(conn);
        if (i >= 0) {
          this.idle.splice(i, 1);
          clearTimeout(conn.idleTimer);
          this.forget(conn);
        }
      });
      this.leased.add(conn);
      this.log.debug({ conn: conn.id, secure: client.secure }, 'next-hop connection established');
      this.outage.success();
      return { conn, reused: false };
    } catch (err) {
      this.count--;
      this.wakeOne();
      const de = fromClientError(err, 'connect');
      // An abort is the client or the deadline, not the next hop; everything else is an outage (warn, rate-limited).
      if (de.phase !== 'aborted') this.outage.failure(de.phase, de.message);
      throw de;
    }
  }

  private wait(signal: AbortSignal): Promise<Grant> {
    return new Promise<Grant>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
      };
      const waiter: Waiter = {
        grant: (g) => {
          done();
          resolve(g);
        },
        fail: (e) => {
          done();
          reject(e);
        },
      };
      const onAbort = (): void => waiter.fail(abortedError('waiting for a next-hop connection'));
      const timer = setTimeout(
        () => waiter.fail(new DeliveryError(`no next-hop connection free within ${this.opts.pool.acquireTimeoutMs} ms`, { kind: 'transient', phase: 'pool' })),
        this.opts.pool.acquireTimeoutMs,
      );
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** A transaction is over with its connection: park it (clean) or close it. For NextHopTransaction. */
  release(conn: Conn, clean: boolean): void {
    if (!this.leased.delete(conn)) return;
    const c = conn.client;
    if (!clean || this.closed || c.closed || c.messages >= this.opts.pool.maxMessagesPerConnection) {
      this.retire(conn, clean);
      return;
    }
    const w = this.waiters.shift();
    if (w) {
      this.leased.add(conn);
      w.grant({ conn });
      return;
    }
    conn.idleTimer = setTimeout(() => {
      const i = this.idle.indexOf(conn);
      if (i >= 0) this.idle.splice(i, 1);
      this.retire(conn, true);
    }, this.opts.pool.idleTimeoutMs);
    // Idle connections must not keep a process alive on their own.
    conn.idleTimer.unref();
    this.idle.push(conn);
  }

  /** Ends a transaction the next hop still holds (no final reply) with RSET, then parks or drops the connection. For NextHopTransaction. */
  async resetAndRelease(conn: Conn): Promise<void> {
    if (conn.client.closed) return this.release(conn, false);
    try {
      const r = await conn.client.rset();
      this.release(conn, r.code >= 200 && r.code < 300);
    } catch {
      this.release(conn, false);
    }
  }

  /** Takes a connection out of service: QUIT when the dialogue is in step, otherwise drop the socket. */
  private retire(conn: Conn, graceful: boolean): void {
    this.leased.delete(conn);
    clearTimeout(conn.idleTimer);
    if (graceful && !conn.client.closed) void conn.client.quit();
    else conn.client.destroy();
    this.forget(conn);
  }

  private readonly forgotten = new WeakSet<Conn>();
  /** Frees the connection's slot exactly once and lets a waiter open a new one. */
  private forget(conn: Conn): void {
    if (this.forgotten.has(conn)) return;
    this.forgotten.add(conn);
    this.count--;
    this.wakeOne();
  }

  private wakeOne(): void {
    if (this.closed || this.waiters.length === 0 || this.count >= this.opts.pool.maxConnections) return;
    this.count++;
    this.waiters.shift()!.grant({ slot: true });
  }
}

/**
 * A MAIL transaction open at the next hop while the client's own transaction runs (Postfix's
 * before-queue proxy): each RCPT is answered by the next hop, DATA goes out only when the policy says
 * relay, anything else resets it. Every path ends in exactly one of data(), reset() or abort().
 */
export class NextHopTransaction {
  /** 'sending': data() is running (DATA, the message, the final reply); only abort() may cut in. */
  private state: 'open' | 'broken' | 'sending' | 'done' = 'open';
  /** Made by data(), fired by abort() while it runs: the message transfer stops and the connection is dropped. */
  private stop: Deadline | null = null;
  accepted = 0;

  constructor(
    private readonly pool: NextHopPool,
    private readonly conn: Conn,
    readonly mailReply: Reply,
  ) {}

  /** False once the next-hop side broke (connection lost, 421): the client's transaction cannot complete. */
  get usable(): boolean {
    return this.state === 'open';
  }

  async rcpt(r: Envelope['to'][number], signal: AbortSignal): Promise<Reply> {
    if (this.state !== 'open') throw new DeliveryError('next-hop transaction is no longer open', { kind: 'transient', phase: 'rcpt' });
    try {
      const reply = await this.conn.client.rcpt(r.address, rcptParamsFor(r, this.conn.client), signal);
      if (reply.code === 421 || reply.code < 200 || reply.code >= 600 || (reply.code >= 300 && reply.code < 400)) this.breakOff();
      else if (reply.code < 300) this.accepted++;
      return reply;
    } catch (err) {
      this.breakOff();
      throw fromClientError(err, 'rcpt');
    }
  }

  /** DATA with the message (a stream, or a small one in a buffer); the next hop's final reply (or its refusal of DATA). */
  async data(open: () => Readable | Buffer, signal: AbortSignal): Promise<Reply> {
    if (this.state !== 'open') {
      // The transaction cannot go on; data() is still the call that ends it, so the connection goes back.
      if (this.state === 'broken') {
        this.state = 'done';
        this.pool.release(this.conn, false);
      }
      throw new DeliveryError('next-hop transaction is no longer open', { kind: 'transient', phase: 'data' });
    }
    this.state = 'sending';
    const stop = (this.stop = deadline(null, signal));
    try {
      const { dataReply, final } = await this.conn.client.data(open(), stop.signal);
      this.state = 'done';
      if (final === null && dataReply.code !== 421) {
        // DATA refused: the next hop still holds MAIL and RCPT; RSET before the connection serves again.
        await this.pool.resetAndRelease(this.conn);
        return dataReply;
      }
      // After a final reply (any code) the session is in step and can serve the next message.
      this.pool.release(this.conn, (final ?? dataReply).code !== 421);
      return final ?? dataReply;
    } catch (err) {
      this.state = 'done';
      this.pool.release(this.conn, false);
      throw fromClientError(err, 'data');
    } finally {
      stop.dispose();
    }
  }

  /** The client's transaction ended without relaying: RSET the next hop and give the connection back. */
  async reset(): Promise<void> {
    // 'sending': data() owns the connection and gives it back itself (a deadline may answer the client first).
    if (this.state === 'done' || this.state === 'sending') return;
    if (this.state === 'broken') {
      this.state = 'done';
      this.pool.release(this.conn, false);
      return;
    }
    this.state = 'done';
    await this.pool.resetAndRelease(this.conn);
  }

  /** Drop the next-hop connection now (shutdown, a deadline in the middle of DATA). */
  abort(): void {
    if (this.state === 'done') return;
    if (this.state === 'sending') {
      // data() is waiting on the connection: the abort makes it fail, drop the socket and release it.
      this.stop?.abort();
      return;
    }
    this.state = 'done';
    this.pool.release(this.conn, false);
  }

  private breakOff(): void {
    // After abort() or reset() the transaction is over already; a late failure of a RCPT changes nothing.
    if (this.state === 'open') this.state = 'broken';
  }
}

function abortedError(when: string): DeliveryError {
  return new DeliveryError(`next-hop delivery aborted ${when}`, { kind: 'transient', phase: 'aborted' });
}

function closingError(): DeliveryError {
  return new DeliveryError('next-hop relay is shutting down', { kind: 'transient', phase: 'aborted' });
}
