// SMTP ingress on our own engine: who may connect, and each client transaction run in lockstep with a next-hop transaction (Postfix's before-queue proxy).
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { SmtpServer, type MailFromCommand, type RcptToCommand, type SmtpSession, type SmtpTransaction, type ResetReason } from '../smtp/server.js';
import type { Envelope, Recipient } from '../smtp/envelope.js';
import { SpoolFilePool } from '../spool/spool.js';
import type { PipelineDeps, Outcome } from '../pipeline/process.js';
import { catalogueReply, nextHopFailureReply, type SmtpReply } from '../errors.js';
import { NetworkList } from '../util/cidr.js';
import type { NextHopTransaction } from '../egress/pool.js';
import type { NextHopGroup } from '../egress/next-hops.js';
import { DeliveryError, passThrough } from '../egress/next-hop-errors.js';
import type { LocalOutbox } from '../egress/outbox.js';
import type { UserDb } from './auth.js';
import { handleMessage } from './message.js';

export interface IngressOptions {
  host: string;
  port: number;
  hostname: string;
  maxMessageBytes: number;
  maxClients: number;
  maxRecipients: number;
  idleTimeoutMs: number;
  sessionTimeoutMs: number;
  minBytesPerSecond: number;
  greetingDelayMs: number;
  bareLineEndings: 'accept' | 'reject';
  allowedClients: readonly string[];
  trustedNetworks: readonly string[];
  tls: { certFile: string | null; keyFile: string | null; require: boolean };
  dsn: boolean;
  /** PROXY protocol from these load balancers only; empty: off. */
  proxyProtocolFrom: readonly string[];
  /**
   * True while a downstream (UCWI) is saturated: new sessions then get 421 4.3.2 so the sessions
   * already in flight keep their latency instead of queueing behind newcomers.
   */
  saturated?: (() => boolean) | undefined;
  /** SMTP AUTH (PLAIN, LOGIN) after STARTTLS; `required` refuses MAIL FROM without it. */
  auth?: { users: UserDb; required: boolean; maxFailures: number } | undefined;
  spoolDir: string;
  /**
   * A policy rule's own next hop for this transaction (policy.rules[].nextHop), decided at MAIL FROM from what is known
   * then; null: the default next hop. Only consulted when a next hop is configured.
   */
  routeFor?: ((ctx: { sender: string; clientAddress: string; authUser: string | null }) => Pick<NextHopGroup, 'begin'> | null) | undefined;
  /** Where relayed mail goes: a next hop in lockstep, or else the local outbox. */
  delivery: { pool: NextHopGroup; outbox?: undefined } | { pool?: undefined; outbox: LocalOutbox };
}

/** Observers for metrics; every member optional. */
export interface IngressObserver {
  sessionOpened?(): void;
  sessionClosed?(): void;
  messageDone?(o: Outcome, sizeBytes: number): void;
  refused?(reason: 'not_allowed' | 'saturated' | 'shutting_down'): void;
}

/** One client transaction: the envelope as accepted so far and, with a next hop, its open transaction there. */
export interface ClientTransaction {
  envelope: Envelope;
  /** Every RCPT with the reply the client got (for the summary log line). */
  rcptLog: Array<{ address: string; reply: string }>;
  nextHop: NextHopTransaction | null;
  /** Aborts next-hop commands when the client goes away. */
  abort: AbortController;
}

export function envelopeFromMail(m: MailFromCommand): Envelope {
  const env: Envelope = { from: m.address, to: [], smtpUtf8: m.smtpUtf8, params: [...m.params] };
  if (m.bodyType) env.bodyType = m.bodyType;
  if (m.ret) env.ret = m.ret;
  if (m.envid !== undefined) env.envid = m.envid;
  if (m.size !== undefined) env.size = m.size;
  return env;
}

function recipientFromRcpt(r: RcptToCommand): Recipient {
  return { address: r.address, params: [...r.params], ...(r.notify ? { notify: [...r.notify] } : {}), ...(r.orcpt !== undefined ? { orcpt: r.orcpt } : {}) };
}

export class Ingress {
  private readonly server: SmtpServer;
  private allowed: NetworkList;
  private trusted: NetworkList;
  /** Spool files recycled across messages (creating a file costs ~20× reusing one). */
  readonly spoolFiles: SpoolFilePool;
  private sessions = 0;
  private isDraining = false;
  private readonly txs = new WeakMap<SmtpSession, ClientTransaction>();

  constructor(
    readonly opts: IngressOptions,
    readonly deps: PipelineDeps,
    readonly logger: Logger,
    readonly observer: IngressObserver = {},
  ) {
    this.spoolFiles = new SpoolFilePool(opts.spoolDir);
    this.allowed = new NetworkList(opts.allowedClients);
    this.trusted = new NetworkList(opts.trustedNetworks);
    const tls =
      opts.tls.certFile && opts.tls.keyFile
        ? { key: readFileSync(opts.tls.keyFile), cert: readFileSync(opts.tls.certFile), require: opts.tls.require }
        : undefined;
    this.server = new SmtpServer(
      {
        hostname: opts.hostname,
        greetingDelayMs: opts.greetingDelayMs,
        maxMessageBytes: opts.maxMessageBytes,
        maxRecipients: opts.maxRecipients,
        idleTimeoutMs: opts.idleTimeoutMs,
        sessionTimeoutMs: opts.sessionTimeoutMs,
        minBytesPerSecond: opts.minBytesPerSecond,
        bareLineEndings: opts.bareLineEndings,
        dsn: opts.dsn,
        tls,
        auth: opts.auth ? { required: opts.auth.required, maxFailures: opts.auth.maxFailures } : undefined,
        proxyProtocol: opts.proxyProtocolFrom.length ? { trustedPeers: opts.proxyProtocolFrom } : undefined,
        // Our own cap in connect() answers 421 4.3.2; the engine's is a backstop only.
        maxConnections: opts.maxClients + 16,
      },
      {
        connect: (s) => this.onConnect(s),
        auth: async (s, user, pass) => {
          const ok = (await opts.auth?.users.verify(user, pass)) ?? false;
          this.logger.info({ cid: s.id, user, ok }, 'smtp auth');
          return ok;
        },
        mail: (s, m) => this.onMail(s, m),
        rcpt: (s, r) => this.onRcpt(s, r),
        data: (s, tx, message) => this.onData(s, tx, message),
        reset: (s, _tx, reason) => this.onReset(s, reason),
        close: () => {
          this.sessions = Math.max(0, this.sessions - 1);
          this.observer.sessionClosed?.();
        },
      },
      logger,
    );
  }

  private onConnect(s: SmtpSession): SmtpReply | void {
    this.sessions++;
    this.observer.sessionOpened?.();
    if (!this.allowed.has(s.remoteAddress)) {
      this.observer.refused?.('not_allowed');
      this.logger.warn({ cid: s.id, client: s.remoteAddress }, 'client not in allowed networks');
      return catalogueReply('CLIENT_NOT_ALLOWED');
    }
    if (this.isDraining) {
      this.observer.refused?.('shutting_down');
      return catalogueReply('SHUTTING_DOWN');
    }
    if (this.sessions > this.opts.maxClients || this.opts.saturated?.()) {
      this.observer.refused?.('saturated');
      return catalogueReply('SATURATED');
    }
  }

  private async onMail(s: SmtpSession, m: MailFromCommand): Promise<SmtpReply | void> {
    if (this.isDraining) return catalogueReply('SHUTTING_DOWN');
    const tx: ClientTransaction = { envelope: envelopeFromMail(m), rcptLog: [], nextHop: null, abort: new AbortController() };
    const pool =
      this.opts.delivery.pool && (this.opts.routeFor?.({ sender: m.address, clientAddress: s.remoteAddress, authUser: s.user }) ?? this.opts.delivery.pool);
    if (!pool) {
      this.txs.set(s, tx);
      return;
    }
    try {
      const { reply, tx: nh } = await pool.begin(tx.envelope, this.commandSignal(tx));
      if (!nh) {
        this.logger.info({ cid: s.id, sender: m.address, reply: String(reply) }, 'next hop refused MAIL FROM');
        return passThrough(reply);
      }
      tx.nextHop = nh;
      this.txs.set(s, tx);
      return passThrough(reply);
    } catch (err) {
      return this.nextHopTrouble(s, err, 'MAIL FROM');
    }
  }

  private async onRcpt(s: SmtpSession, r: RcptToCommand): Promise<SmtpReply | void> {
    const tx = this.txs.get(s);
    if (!tx) return catalogueReply('INTERNAL');
    const rcpt = recipientFromRcpt(r);
    let reply: SmtpReply;
    if (!tx.nextHop) {
      reply = catalogueReply('RCPT_OK');
    } else if (!tx.nextHop.usable) {
      reply = catalogueReply('NEXT_HOP_LOST');
    } else {
      try {
        reply = passThrough(await tx.nextHop.rcpt(rcpt, this.commandSignal(tx)));
      } catch (err) {
        reply = this.nextHopTrouble(s, err, 'RCPT TO');
      }
    }
    if (reply.code < 300) tx.envelope.to.push(rcpt);
    tx.rcptLog.push({ address: r.address, reply: `${reply.code} ${reply.enhanced} ${reply.text}` });
    return reply;
  }

  private async onData(s: SmtpSession, _t: SmtpTransaction, message: import('node:stream').Readable): Promise<SmtpReply> {
    const tx = this.txs.get(s);
    this.txs.delete(s);
    if (!tx) {
      message.resume();
      return catalogueReply('INTERNAL');
    }
    try {
      return await handleMessage(this, s, tx, message, this.trusted.has(s.remoteAddress));
    } finally {
      // Whatever the verdict: a next-hop transaction that did not get DATA is reset (idempotent otherwise).
      void tx.nextHop?.reset();
    }
  }

  private onReset(s: SmtpSession, reason: ResetReason): void {
    const tx = this.txs.get(s);
    this.txs.delete(s);
    if (!tx) return;
    tx.abort.abort();
    if (!tx.nextHop) return;
    if (reason === 'shutdown') tx.nextHop.abort();
    else void tx.nextHop.reset();
  }

  /** Next-hop commands stop when the client goes away; each has its own timeout in the client (nextHop.timeouts.socketMs). */
  private commandSignal(tx: ClientTransaction): AbortSignal {
    return tx.abort.signal;
  }

  private nextHopTrouble(s: SmtpSession, err: unknown, command: string): SmtpReply {
    const de = err instanceof DeliveryError ? err : null;
    this.logger.warn({ cid: s.id, command, phase: de?.phase, err: (err as Error).message }, 'next hop unavailable during the client transaction');
    return de ? nextHopFailureReply(de, s.id) : catalogueReply('INTERNAL');
  }

  get allowedNetworks(): NetworkList {
    return this.allowed;
  }

  /**
   * Reload: new client networks apply to the next connection and new certificates to the next STARTTLS;
   * sessions in flight keep theirs. Returns the settings that need a restart to change.
   */
  reconfigure(s: {
    allowedClients: readonly string[];
    trustedNetworks: readonly string[];
    tls: { certFile: string | null; keyFile: string | null; require: boolean };
  }): string[] {
    const allowed = new NetworkList(s.allowedClients);
    const trusted = new NetworkList(s.trustedNetworks);
    const hadTls = this.opts.tls.certFile !== null && this.opts.tls.keyFile !== null;
    const hasTls = s.tls.certFile !== null && s.tls.keyFile !== null;
    const restart: string[] = [];
    if (hadTls !== hasTls) restart.push('smtp.tls (STARTTLS switched on or off)');
    if (s.tls.require !== this.opts.tls.require) restart.push('smtp.tls.require');
    // Throws on a bad pair before anything changed.
    if (hadTls && hasTls) this.server.updateSecureContext({ key: readFileSync(s.tls.keyFile!), cert: readFileSync(s.tls.certFile!) });
    this.allowed = allowed;
    this.trusted = trusted;
    return restart;
  }

  async listen(): Promise<{ host: string; port: number }> {
    return this.server.listen(this.opts.port, this.opts.host);
  }

  get draining(): boolean {
    return this.isDraining;
  }

  get activeSessions(): number {
    return this.sessions;
  }

  /**
   * Graceful stop: refuse new sessions and transactions with 421, let messages already past the final
   * dot finish within `graceMs`, then close what is left with the catalogue's 421.
   */
  async close(graceMs = 10_000): Promise<void> {
    this.isDraining = true;
    await this.server.close(graceMs, catalogueReply('SHUTTING_DOWN'));
    // Files of messages still settling are discarded as they come back.
    this.spoolFiles.close();
  }
}
