// Delivers accepted messages to the configured next hop over a small pool of RelayConnections and classifies every failure as permanent or transient.
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { RelayConnection, toNodemailerEnvelope, NODEMAILER_PINNED_VERSION, NODEMAILER_VERSION } from './connection.js';

export interface NextHopOptions {
  host: string;
  port: number;
  /** Implicit TLS (465-style). */
  secure: boolean;
  starttls: 'opportunistic' | 'required' | 'off';
  tls: { rejectUnauthorized: boolean; ca?: string | Buffer; servername?: string };
  auth?: { user: string; pass: string };
  heloName: string;
  pool: { maxConnections: number; maxMessagesPerConnection: number; idleTimeoutMs: number };
  timeouts: { connectMs: number; greetingMs: number; socketMs: number };
}

export interface OutboundRecipient {
  address: string;
  /** NOTIFY values as the client sent them (upper case), e.g. ['FAILURE','DELAY'] or ['NEVER']. */
  notify?: string[];
  /** ORCPT as the client sent it, xtext-decoded, e.g. 'rfc822;user@example.com'. */
  orcpt?: string;
}

export interface OutboundEnvelope {
  /** '' = null sender. */
  from: string;
  to: OutboundRecipient[];
  smtpUtf8: boolean;
  bodyType?: '7bit' | '8bitmime';
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  size?: number;
}

export interface DeliveryResult {
  accepted: string[];
  rejected: Array<{ address: string; code: number; response: string }>;
  /** The next hop's reply to the end of DATA. */
  response: string;
  elapsedMs: number;
}

export type DeliveryPhase = 'connect' | 'tls' | 'auth' | 'mail' | 'rcpt' | 'data' | 'timeout' | 'aborted';

export interface DeliveryErrorInit {
  kind: 'permanent' | 'transient';
  phase: DeliveryPhase;
  code?: number;
  enhanced?: string;
  response?: string;
  rejected?: DeliveryResult['rejected'];
  cause?: unknown;
}

export class DeliveryError extends Error {
  kind: 'permanent' | 'transient';
  phase: DeliveryPhase;
  code?: number;
  enhanced?: string;
  /** The next hop's full reply as one line (see oneLineReply), when the failure was a reply. */
  response?: string;
  rejected?: DeliveryResult['rejected'];
  constructor(message: string, init: DeliveryErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'DeliveryError';
    this.kind = init.kind;
    this.phase = init.phase;
    if (init.code !== undefined) this.code = init.code;
    if (init.enhanced !== undefined) this.enhanced = init.enhanced;
    if (init.response !== undefined) this.response = init.response;
    if (init.rejected !== undefined) this.rejected = init.rejected;
  }
}

/** Enhanced status code (RFC 3463) at the start of a reply's text, e.g. "550 5.1.1 No such user" → "5.1.1". */
export function parseEnhancedCode(reply: string): string | undefined {
  const m = /^([245])\d\d[ -]([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)/.exec(reply);
  // The class digit must agree with the basic code (RFC 3463 §2), otherwise it is just text.
  return m && m[1] === m[2] ? `${m[2]}.${m[3]}.${m[4]}` : undefined;
}

/**
 * nodemailer joins a multi-line reply with "\n". Callers echo replies into logs and into our own SMTP
 * reply, so they get one line: the first line whole, continuation lines without their code prefixes.
 */
export function oneLineReply(reply: string): string {
  const lines = reply.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (lines.length <= 1) return reply.trim();
  const first = lines[0]!.replace(/^(\d{3})-/, '$1 ');
  const rest = lines.slice(1).map((l) => l.replace(/^\d{3}[ -]/, '').replace(/^[245]\.\d{1,3}\.\d{1,3}\s+/, '').trim());
  return [first.trim(), ...rest].join(' ');
}

function replyCode(reply: string | undefined): number | undefined {
  const m = reply ? /^([1-5]\d\d)\b/.exec(reply) : null;
  return m ? Number(m[1]) : undefined;
}

/** nodemailer's error objects: an Error with extra fields (SMTPError plus what the runtime adds). */
type NmError = SMTPConnection.SMTPError & {
  rejectedErrors?: Array<SMTPConnection.SMTPError & { recipient?: string }>;
  recipient?: string;
};

interface Pooled {
  id: number;
  conn: RelayConnection;
  messages: number;
  /** Errored or closed: never handed out again. */
  broken: boolean;
  ended: boolean;
  lastError?: NmError;
  idleTimer?: NodeJS.Timeout;
  ended$: Promise<void>;
}

interface Waiter {
  give(pc: Pooled, reused: boolean): void;
  fail(err: DeliveryError): void;
}

/** Errors after which the SMTP dialogue is still in step (a reply we understood), so QUIT is safe. */
const inSync = new WeakSet<DeliveryError>();

export class NextHopRelay {
  private readonly log: Logger;
  private readonly open = new Set<Pooled>();
  /** Idle connections, most recently used last (reused first, so the others can time out). */
  private readonly idle: Pooled[] = [];
  private readonly waiters: Waiter[] = [];
  /** verify() connections: outside the pool's limit so readiness checks never queue behind mail. */
  private readonly extra = new Set<Pooled>();
  private inFlight = 0;
  private drained: Array<() => void> = [];
  private closed = false;
  private nextId = 1;

  constructor(
    private readonly opts: NextHopOptions,
    logger: Logger,
  ) {
    // The caller names the component; we only add which next hop this is.
    this.log = logger.child({ nextHop: `${opts.host}:${opts.port}` });
    if (NODEMAILER_VERSION !== NODEMAILER_PINNED_VERSION) {
      this.log.warn(
        { installed: NODEMAILER_VERSION, pinned: NODEMAILER_PINNED_VERSION },
        'nodemailer version differs from the one src/egress/connection.ts was written against; DSN relaying relies on its internals',
      );
    }
  }

  async deliver(env: OutboundEnvelope, openMessage: () => Readable, signal: AbortSignal): Promise<DeliveryResult> {
    const started = performance.now();
    if (signal.aborted) throw abortedError('before delivery started');
    if (this.closed) throw closingError();
    if (env.to.length === 0) throw new DeliveryError('no recipients to deliver to', { kind: 'permanent', phase: 'rcpt' });
    this.inFlight++;
    try {
      for (;;) {
        const { pc, reused } = await this.acquire(signal);
        if (signal.aborted) {
          // Handed over in the same tick as the abort: the connection is untouched, give it back.
          if (reused) this.release(pc);
          else this.retire(pc, false);
          throw abortedError('waiting for a connection');
        }
        if (reused) {
          try {
            // RSET both clears any leftover state and proves the idle connection is still alive.
            await this.run(pc, signal, (cb) => pc.conn.reset(cb));
          } catch (err) {
            this.retire(pc, false);
            if (signal.aborted) throw err;
            // Nothing of this message was sent yet, so another connection is a safe retry.
            this.log.debug({ conn: pc.id, err: (err as Error).message }, 'idle next-hop connection unusable, trying another');
            continue;
          }
        } else {
          try {
            await this.handshake(pc, signal);
          } catch (err) {
            this.retire(pc, false);
            throw err;
          }
        }
        return await this.transact(pc, env, openMessage, signal, started);
      }
    } catch (err) {
      if (err instanceof DeliveryError) {
        this.log.warn({ phase: err.phase, kind: err.kind, code: err.code, response: err.response, err: err.message }, 'next-hop delivery failed');
      }
      throw err;
    } finally {
      this.leave();
    }
  }

  async verify(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw abortedError('before verify started');
    if (this.closed) throw closingError();
    this.inFlight++;
    const pc = this.createConnection();
    this.extra.add(pc);
    try {
      await this.handshake(pc, signal);
      this.retire(pc, true);
    } catch (err) {
      this.retire(pc, false);
      throw err;
    } finally {
      this.leave();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.fail(closingError());
    for (const pc of this.idle.splice(0)) this.retire(pc, true);
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
    // In-flight deliveries retired their connections as they finished (release() sees `closed`).
    const remaining = [...this.open, ...this.extra];
    for (const pc of remaining) if (!pc.broken) this.retire(pc, true);
    await Promise.all(
      remaining.map(async (pc) => {
        // QUIT normally ends the connection within a round trip; a silent next hop must not hold shutdown.
        let timer: NodeJS.Timeout | undefined;
        const grace = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, Math.min(this.opts.timeouts.socketMs, 2_000));
          timer.unref();
        });
        await Promise.race([pc.ended$, grace]);
        clearTimeout(timer);
        if (!pc.ended) pc.conn.destroyNow();
      }),
    );
  }

  // ---- the transaction -------------------------------------------------------------------------

  private async transact(
    pc: Pooled,
    env: OutboundEnvelope,
    openMessage: () => Readable,
    signal: AbortSignal,
    started: number,
  ): Promise<DeliveryResult> {
    const ext = pc.conn.supportedExtensions;
    if (env.bodyType === '8bitmime' && !ext.includes('8BITMIME')) {
      // RFC 6152 would have us downgrade or bounce; like Postfix we send as is (8-bit clean in practice).
      this.log.warn({ conn: pc.id }, 'message is 8BITMIME but the next hop does not announce 8BITMIME; sending unchanged');
    }
    if (env.smtpUtf8 && !ext.includes('SMTPUTF8')) {
      this.log.warn({ conn: pc.id }, 'client used SMTPUTF8 but the next hop does not announce it; sending without');
    }

    let message: Readable;
    try {
      message = openMessage();
    } catch (err) {
      // Nothing was sent on the connection: it is still clean and can serve the next message.
      this.release(pc);
      throw new DeliveryError(`could not open the message for relaying: ${(err as Error).message}`, {
        kind: 'transient',
        phase: 'data',
        cause: err,
      });
    }

    const envelope = toNodemailerEnvelope({
      from: env.from,
      to: env.to,
      smtpUtf8: env.smtpUtf8,
      use8BitMime: env.bodyType === '8bitmime',
      ...(env.ret ? { ret: env.ret } : {}),
      ...(env.envid ? { envid: env.envid } : {}),
      ...(env.size !== undefined ? { size: env.size } : {}),
    });
    pc.conn.phase = 'mail';
    try {
      const info = await this.run<SMTPConnection.SentMessageInfo>(pc, signal, (cb) => pc.conn.send(envelope, message, cb));
      pc.messages++;
      this.release(pc);
      const result: DeliveryResult = {
        accepted: info.accepted.map(String),
        rejected: rejectedList(info.rejectedErrors),
        response: oneLineReply(String(info.response ?? '')),
        elapsedMs: Math.round(performance.now() - started),
      };
      this.log.debug({ conn: pc.id, accepted: result.accepted.length, rejected: result.rejected.length, response: result.response }, 'relayed');
      return result;
    } catch (err) {
      const de = err instanceof DeliveryError ? err : this.mapError(err, pc);
      this.retire(pc, inSync.has(de));
      throw de;
    } finally {
      // Never leave a spool file descriptor open (nodemailer does not close a stream it did not finish).
      if (!message.destroyed && !message.readableEnded) message.destroy();
    }
  }

  /** Connect, EHLO, STARTTLS as configured, AUTH when configured. */
  private async handshake(pc: Pooled, signal: AbortSignal | undefined): Promise<void> {
    const conn = pc.conn;
    conn.phase = 'connect';
    await this.run<void>(pc, signal, (cb) => conn.connect(cb));
    conn.handshakeDone = true;
    this.log.debug({ conn: pc.id, secure: conn.secure, extensions: conn.supportedExtensions }, 'next-hop connection established');
    if (this.opts.starttls === 'required' && !conn.secure) {
      // nodemailer's requireTLS already insists; this keeps the guarantee independent of its internals.
      throw new DeliveryError('next hop connection is not encrypted but STARTTLS is required', { kind: 'transient', phase: 'tls' });
    }
    if (this.opts.auth) {
      if (!conn.offersAuth) {
        throw new DeliveryError('next hop does not offer AUTH but credentials are configured', { kind: 'transient', phase: 'auth' });
      }
      conn.phase = 'auth';
      const { user, pass } = this.opts.auth;
      await this.run<void>(pc, signal, (cb) => conn.login({ credentials: { user, pass } }, cb));
    }
  }

  /**
   * Runs one nodemailer operation to completion. nodemailer reports protocol failures through the
   * callback but socket failures only as 'error'/'end' events (the callback then never fires), so
   * all three race, plus the abort signal.
   */
  private run<T>(pc: Pooled, signal: AbortSignal | undefined, start: (cb: (err?: NmError | null, value?: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const conn = pc.conn;
      let settled = false;
      const finish = (err: DeliveryError | undefined, value?: T): void => {
        if (settled) return;
        settled = true;
        conn.off('error', onError);
        conn.off('end', onEnd);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(value as T);
      };
      const onError = (err: NmError): void => finish(this.mapError(err, pc));
      const onEnd = (): void => finish(this.mapError(pc.lastError ?? closedError(), pc));
      const onAbort = (): void => {
        // Settle first: destroying emits 'end' synchronously, which must not win the race.
        finish(abortedError(`during ${conn.phase}`));
        conn.destroyNow();
      };
      if (signal?.aborted) return onAbort();
      if (pc.ended) return finish(this.mapError(pc.lastError ?? closedError(), pc));
      conn.on('error', onError);
      conn.once('end', onEnd);
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        start((err, value) => {
          if (err) {
            const de = this.mapError(err, pc);
            // A reply arrived and was understood: the session is still usable for QUIT.
            if (!pc.broken && (err.code === 'EENVELOPE' || err.code === 'EMESSAGE')) inSync.add(de);
            finish(de);
          } else finish(undefined, value);
        });
      } catch (err) {
        finish(this.mapError(err, pc));
      }
    });
  }

  /** Turns a nodemailer error into a DeliveryError with the right kind and phase. */
  private mapError(raw: unknown, pc: Pooled): DeliveryError {
    if (raw instanceof DeliveryError) return raw;
    const err = (raw instanceof Error ? raw : new Error(String(raw))) as NmError & { syscall?: string };
    const conn = pc.conn;
    const response = typeof err.response === 'string' && err.response ? oneLineReply(err.response) : undefined;
    const code = err.responseCode || replyCode(response);
    const enhanced = response ? parseEnhancedCode(response) : undefined;
    const reply = { ...(code ? { code } : {}), ...(enhanced ? { enhanced } : {}), ...(response ? { response } : {}), cause: err };
    // Only the next hop's own 5xx about this transaction is permanent; everything else is retryable.
    const byCode = (): 'permanent' | 'transient' => (code !== undefined && code >= 500 && code < 600 ? 'permanent' : 'transient');
    const text = response ?? err.message;

    switch (err.code) {
      case 'ETIMEDOUT':
        return new DeliveryError(`next hop timed out during ${conn.handshakeDone ? conn.phase : 'connect'}: ${err.message}`, {
          kind: 'transient',
          phase: 'timeout',
          ...reply,
        });
      case 'EDNS':
        return new DeliveryError(`could not resolve next hop ${this.opts.host}: ${err.message}`, { kind: 'transient', phase: 'connect', ...reply });
      case 'ETLS':
        return new DeliveryError(`TLS with the next hop failed: ${err.message}`, { kind: 'transient', phase: 'tls', ...reply });
      case 'EAUTH':
        // Our credentials are wrong or the next hop's AUTH is broken: not the sender's fault, so never permanent.
        return new DeliveryError(`authentication at the next hop failed: ${err.message}`, { kind: 'transient', phase: 'auth', ...reply });
      case 'EENVELOPE': {
        if (err.command === 'RCPT TO' && err.rejectedErrors && err.rejectedErrors.length) {
          const rejected = rejectedList(err.rejectedErrors);
          const first = rejected[0]!;
          const firstEnhanced = parseEnhancedCode(first.response);
          return new DeliveryError(`next hop refused all recipients: ${first.response}`, {
            kind: rejected.every((r) => r.code >= 500 && r.code < 600) ? 'permanent' : 'transient',
            phase: 'rcpt',
            ...(first.code ? { code: first.code } : {}),
            ...(firstEnhanced ? { enhanced: firstEnhanced } : {}),
            response: first.response,
            rejected,
            cause: err,
          });
        }
        const phase = err.command === 'DATA' ? 'data' : err.command === 'RCPT TO' ? 'rcpt' : 'mail';
        if (code === undefined) {
          // Raised by nodemailer before anything was sent (invalid address syntax): resending cannot help.
          return new DeliveryError(`envelope not acceptable for relaying: ${err.message}`, { kind: 'permanent', phase, cause: err });
        }
        return new DeliveryError(`next hop refused ${err.command ?? 'the envelope'}: ${text}`, { kind: byCode(), phase, ...reply });
      }
      case 'EMESSAGE':
        if (err.command === 'MAIL FROM' && code === undefined) {
          // nodemailer's own check against the SIZE the next hop announced: the message will not shrink.
          return new DeliveryError(`message too large for the next hop: ${err.message}`, {
            kind: 'permanent',
            phase: 'mail',
            code: 552,
            enhanced: '5.3.4',
            cause: err,
          });
        }
        return new DeliveryError(`next hop refused the message data: ${text}`, { kind: byCode(), phase: 'data', ...reply });
      case 'ESTREAM':
        return new DeliveryError(`reading the message failed while relaying: ${err.message}`, { kind: 'transient', phase: 'data', cause: err });
      default: {
        // ESOCKET, ECONNECTION, EPROTOCOL, EINTERNAL: the connection is gone or out of step.
        let phase: DeliveryPhase = conn.phase;
        if (!conn.handshakeDone) {
          const tlsTrouble = conn.phase === 'tls' || (this.opts.secure && !err.syscall);
          phase = tlsTrouble ? 'tls' : 'connect';
        }
        const what = conn.handshakeDone ? `lost during ${phase}` : `failed during ${phase}`;
        return new DeliveryError(`next-hop connection ${what}: ${err.message}`, { kind: 'transient', phase, ...reply });
      }
    }
  }

  // ---- the pool ----------------------------------------------------------------------------------

  private createConnection(): Pooled {
    const o = this.opts;
    const options: SMTPConnection.Options & { allowInternalNetworkInterfaces: boolean } = {
      host: o.host,
      port: o.port,
      secure: o.secure,
      name: o.heloName,
      ignoreTLS: o.starttls === 'off',
      requireTLS: o.starttls === 'required',
      // A next hop that answers STARTTLS with an error is used in clear only when TLS is merely opportunistic.
      opportunisticTLS: o.starttls === 'opportunistic',
      tls: {
        rejectUnauthorized: o.tls.rejectUnauthorized,
        ...(o.tls.ca !== undefined ? { ca: o.tls.ca } : {}),
        ...(o.tls.servername ? { servername: o.tls.servername } : {}),
      },
      // nodemailer's defaults are minutes long; a relay holding a client's DATA cannot wait that long.
      connectionTimeout: o.timeouts.connectMs,
      dnsTimeout: o.timeouts.connectMs,
      greetingTimeout: o.timeouts.greetingMs,
      socketTimeout: o.timeouts.socketMs,
      // The next hop may well be on loopback or a private network.
      allowInternalNetworkInterfaces: true,
      // We log outcomes ourselves; nodemailer's transaction log could carry AUTH exchanges.
      logger: false,
      transactionLog: false,
      debug: false,
    };
    const conn = new RelayConnection(options);
    let markEnded!: () => void;
    const pc: Pooled = {
      id: this.nextId++,
      conn,
      messages: 0,
      broken: false,
      ended: false,
      ended$: new Promise<void>((resolve) => (markEnded = resolve)),
    };
    // Always listening: an idle connection's socket error must not become an unhandled 'error'.
    conn.on('error', (err: NmError) => {
      pc.broken = true;
      pc.lastError ??= err;
      this.log.debug({ conn: pc.id, code: err.code, err: err.message }, 'next-hop connection error');
    });
    conn.once('end', () => {
      pc.broken = true;
      pc.ended = true;
      this.forget(pc);
      markEnded();
    });
    return pc;
  }

  private acquire(signal: AbortSignal): Promise<{ pc: Pooled; reused: boolean }> {
    if (this.closed) return Promise.reject(closingError());
    // Waiters are served by direct hand-over, so idle connections or free slots exist only when nobody waits.
    while (this.idle.length) {
      const pc = this.idle.pop()!;
      clearTimeout(pc.idleTimer);
      if (!pc.broken) return Promise.resolve({ pc, reused: true });
    }
    if (this.open.size < this.opts.pool.maxConnections) {
      const pc = this.createConnection();
      this.open.add(pc);
      return Promise.resolve({ pc, reused: false });
    }
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(abortedError('waiting for a next-hop connection'));
      };
      const waiter: Waiter = {
        give: (pc, reused) => {
          signal.removeEventListener('abort', onAbort);
          resolve({ pc, reused });
        },
        fail: (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** A connection finished a message cleanly: hand it to the next waiter, park it, or retire it. */
  private release(pc: Pooled): void {
    if (pc.broken || this.closed || pc.messages >= this.opts.pool.maxMessagesPerConnection || !this.open.has(pc)) {
      this.retire(pc, true);
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.give(pc, true);
      return;
    }
    pc.idleTimer = setTimeout(() => {
      const i = this.idle.indexOf(pc);
      if (i >= 0) this.idle.splice(i, 1);
      this.log.debug({ conn: pc.id }, 'closing idle next-hop connection');
      this.retire(pc, true);
    }, this.opts.pool.idleTimeoutMs);
    // Idle connections must not keep a process alive on their own.
    pc.idleTimer.unref();
    this.idle.push(pc);
  }

  /** Takes a connection out of service: QUIT when the dialogue is in step, otherwise drop the socket. */
  private retire(pc: Pooled, graceful: boolean): void {
    clearTimeout(pc.idleTimer);
    const i = this.idle.indexOf(pc);
    if (i >= 0) this.idle.splice(i, 1);
    if (pc.ended) return;
    const wasBroken = pc.broken;
    pc.broken = true;
    if (graceful && !wasBroken && pc.conn.handshakeDone) {
      pc.conn.quit();
    } else {
      pc.conn.destroyNow();
    }
    // The pool slot is freed by the 'end' event (forget), so at most maxConnections are ever open.
  }

  /** Called once a connection has ended: free its slot and let a waiter open a new one. */
  private forget(pc: Pooled): void {
    clearTimeout(pc.idleTimer);
    const i = this.idle.indexOf(pc);
    if (i >= 0) this.idle.splice(i, 1);
    this.extra.delete(pc);
    if (!this.open.delete(pc)) return;
    while (this.waiters.length && this.open.size < this.opts.pool.maxConnections && !this.closed) {
      const fresh = this.createConnection();
      this.open.add(fresh);
      this.waiters.shift()!.give(fresh, false);
    }
  }

  private leave(): void {
    this.inFlight--;
    if (this.inFlight === 0) for (const resolve of this.drained.splice(0)) resolve();
  }
}

function rejectedList(errors: NmError['rejectedErrors']): DeliveryResult['rejected'] {
  return (errors ?? []).map((e) => {
    const response = typeof e.response === 'string' && e.response ? oneLineReply(e.response) : e.message;
    return { address: e.recipient ?? '', code: e.responseCode || replyCode(response) || 0, response };
  });
}

function abortedError(when: string): DeliveryError {
  return new DeliveryError(`next-hop delivery aborted ${when}`, { kind: 'transient', phase: 'aborted' });
}

function closingError(): DeliveryError {
  return new DeliveryError('next-hop relay is shutting down', { kind: 'transient', phase: 'aborted' });
}

function closedError(): NmError {
  const err = new Error('Connection closed unexpectedly') as NmError;
  err.code = 'ECONNECTION';
  return err;
}
