// SMTP ingress: smtp-server options and callbacks only — access control, limits, spooling DATA, handing the message to the pipeline, one summary log line.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession, type SMTPServerDataStream } from 'smtp-server';
import type { Logger } from 'pino';
import { spoolMessage, SpoolFilePool } from '../spool/spool.js';
import { processMessage, type PipelineDeps, type Outcome } from '../pipeline/process.js';
import { CATALOGUE, catalogueReply, formatReply, replyError, replyClass, RelayError, type SmtpReply } from '../errors.js';
import { NetworkList } from '../util/cidr.js';
import type { StoredEnvelope } from '../quarantine/types.js';
import { installEnhancedReplyPatch } from './replies.js';
import type { UserDb } from './auth.js';

export interface IngressOptions {
  host: string;
  port: number;
  hostname: string;
  maxMessageBytes: number;
  maxClients: number;
  maxRecipients: number;
  idleTimeoutMs: number;
  allowedClients: readonly string[];
  trustedNetworks: readonly string[];
  tls: { certFile: string | null; keyFile: string | null; require: boolean };
  dsn: boolean;
  /**
   * True while a downstream (UCWI) is saturated: new sessions then get 421 4.3.2 so the sessions
   * already in flight keep their latency instead of queueing behind newcomers.
   */
  saturated?: (() => boolean) | undefined;
  /** SMTP AUTH (PLAIN, LOGIN) after STARTTLS; `required` refuses MAIL FROM without it. */
  auth?: { users: UserDb; required: boolean } | undefined;
  spoolDir: string;
}

/** Observers for metrics; every member optional. */
export interface IngressObserver {
  sessionOpened?(): void;
  sessionClosed?(): void;
  messageDone?(o: Outcome, sizeBytes: number): void;
  refused?(reason: 'not_allowed' | 'saturated' | 'shutting_down'): void;
}

interface EnvelopeView {
  mailFrom: false | { address: string };
  rcptTo: Array<{ address: string; dsn?: { notify?: string[]; orcpt?: string } }>;
  smtpUtf8?: boolean;
  bodyType?: '7bit' | '8bitmime';
  dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string };
}

export function envelopeFromSession(session: SMTPServerSession): StoredEnvelope {
  const e = session.envelope as unknown as EnvelopeView;
  const env: StoredEnvelope = {
    from: e.mailFrom ? e.mailFrom.address : '',
    to: e.rcptTo.map((r) => ({
      address: r.address,
      ...(r.dsn?.notify ? { notify: [...r.dsn.notify] } : {}),
      ...(r.dsn?.orcpt ? { orcpt: r.dsn.orcpt } : {}),
    })),
    smtpUtf8: e.smtpUtf8 === true,
  };
  if (e.bodyType) env.bodyType = e.bodyType;
  if (e.dsn?.ret) env.ret = e.dsn.ret;
  if (e.dsn?.envid) env.envid = e.dsn.envid;
  return env;
}

export class Ingress {
  private readonly server: SMTPServer;
  private allowed: NetworkList;
  private trusted: NetworkList;
  /** Spool files recycled across messages (creating a file costs ~20× reusing one). */
  private readonly spoolFiles: SpoolFilePool;
  private sessions = 0;
  private isDraining = false;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(
    private readonly opts: IngressOptions,
    private readonly deps: PipelineDeps,
    private readonly logger: Logger,
    private readonly observer: IngressObserver = {},
  ) {
    installEnhancedReplyPatch();
    this.spoolFiles = new SpoolFilePool(opts.spoolDir);
    this.allowed = new NetworkList(opts.allowedClients);
    this.trusted = new NetworkList(opts.trustedNetworks);
    const hasTls = opts.tls.certFile !== null && opts.tls.keyFile !== null;
    const disabledCommands = [...(hasTls ? [] : ['STARTTLS']), ...(opts.auth ? [] : ['AUTH'])];
    // smtp-server lists AUTH in EHLO on a plain connection too (it only refuses the command there with
    // 538), so a plain session gets AUTH disabled until STARTTLS: never advertised in clear.
    const hideAuthUntilTls = opts.auth !== undefined && hasTls;
    const options: SMTPServerOptions & Record<string, unknown> = {
      name: opts.hostname,
      banner: 'dlp-relay ESMTP',
      size: opts.maxMessageBytes,
      // Our own cap in onConnect answers 421 4.3.2; smtp-server's is a backstop only.
      maxClients: opts.maxClients + 16,
      maxRecipients: opts.maxRecipients,
      socketTimeout: opts.idleTimeoutMs,
      // close() first lets in-flight messages finish; after that idle sessions only need their 421.
      closeTimeout: 1_000,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: !opts.dsn,
      hideSMTPUTF8: false,
      hide8BITMIME: false,
      hidePIPELINING: false,
      // AUTH is advertised only on a TLS-protected session (allowInsecureAuth false), never in clear.
      authOptional: !opts.auth?.required,
      authMethods: ['PLAIN', 'LOGIN'],
      allowInsecureAuth: false,
      disabledCommands,
      // smtp-server's own check for MAIL/RCPT/DATA before AUTH (it fires before onMailFrom) gives the catalogue reply.
      authRequiredMessage: `${CATALOGUE.AUTH_REQUIRED.enhanced} ${CATALOGUE.AUTH_REQUIRED.text}`,
      onAuth: (auth, session, cb) => {
        const users = opts.auth?.users;
        const { username, password } = auth;
        if (!users || !username || typeof password !== 'string') return cb(replyError({ code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid' }));
        users.verify(username, password).then(
          (ok) => {
            this.logger.info({ cid: session.id, user: username, ok }, 'smtp auth');
            if (ok) cb(null, { user: username });
            else cb(replyError({ code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid' }));
          },
          () => cb(replyError(catalogueReply('INTERNAL'))),
        );
      },
      ...(hasTls ? { key: readFileSync(opts.tls.keyFile!), cert: readFileSync(opts.tls.certFile!) } : {}),
      logger: false,
      onConnect: (session, cb) => {
        if (hideAuthUntilTls && !session.secure) session.disabledCommands = [...disabledCommands, 'AUTH'];
        this.onConnect(session, cb);
      },
      onSecure: (_socket, session, cb) => {
        // TLS is up: back to the server-wide list, which offers AUTH.
        session.disabledCommands = undefined;
        cb();
      },
      onMailFrom: (_addr, session, cb) => {
        if (opts.tls.require && !session.secure) return cb(replyError(catalogueReply('TLS_REQUIRED')));
        if (opts.auth?.required && !session.user) return cb(replyError(catalogueReply('AUTH_REQUIRED')));
        if (this.isDraining) return cb(replyError(catalogueReply('SHUTTING_DOWN')));
        cb();
      },
      onData: (stream, session, cb) => this.onData(stream, session, cb),
      onClose: () => {
        // onClose fires only for sessions onConnect accepted or refused; both were counted.
        this.sessions = Math.max(0, this.sessions - 1);
        this.observer.sessionClosed?.();
      },
    };
    this.server = new SMTPServer(options);
    // Replies are small writes; with Nagle a pipelined reply can wait for the client's delayed ACK.
    this.server.server.on('connection', (socket: import('node:net').Socket) => socket.setNoDelay(true));
    this.server.on('error', (err) => this.logger.warn({ err }, 'smtp connection error'));
  }

  private onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    this.sessions++;
    this.observer.sessionOpened?.();
    if (!this.allowed.has(session.remoteAddress)) {
      this.observer.refused?.('not_allowed');
      this.logger.warn({ cid: session.id, client: session.remoteAddress }, 'client not in allowed networks');
      return cb(replyError(catalogueReply('CLIENT_NOT_ALLOWED')));
    }
    if (this.isDraining) {
      this.observer.refused?.('shutting_down');
      return cb(replyError(catalogueReply('SHUTTING_DOWN')));
    }
    if (this.sessions > this.opts.maxClients || this.opts.saturated?.()) {
      this.observer.refused?.('saturated');
      return cb(replyError(catalogueReply('SATURATED')));
    }
    cb();
  }

  private onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const p = this.handleData(stream, session)
      .then((reply) => {
        if (reply.code < 300) cb(null, `${reply.enhanced} ${reply.text}`);
        else cb(replyError(reply));
      })
      .catch((err: unknown) => {
        this.logger.error({ err, cid: session.id }, 'unexpected ingress failure');
        cb(replyError(catalogueReply('INTERNAL')));
      });
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  private async handleData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<SmtpReply> {
    const queryId = randomUUID();
    const receivedAt = new Date();
    const started = performance.now();
    const envelope = envelopeFromSession(session);
    const log = (o: Partial<Outcome> & { reply: SmtpReply; action: string }, size: number) => {
      // The one summary line per message (Haraka's "message" line): ids, envelope counts, verdict, reply, timings.
      this.logger.info(
        {
          event: 'message',
          cid: session.id,
          queryId,
          client: session.remoteAddress,
          sender: envelope.from,
          rcpts: envelope.to.length,
          size,
          actionCode: o.actionCode ?? null,
          action: o.action,
          reply: formatReply(o.reply),
          replyClass: replyClass(o.reply.code),
          dlpMs: o.dlpMs ?? null,
          relayMs: o.relayMs ?? null,
          totalMs: Math.round(performance.now() - started),
          ...(o.policies && o.policies.length ? { policies: o.policies.map((p) => p.name) } : {}),
          ...(o.errorClass ? { errorClass: o.errorClass } : {}),
          ...(o.detail ? { detail: o.detail } : {}),
          ...(o.rejectedRecipients ? { refusedRecipients: o.rejectedRecipients } : {}),
        },
        'message',
      );
    };

    let spool;
    try {
      spool = await spoolMessage(stream as unknown as Readable, { dir: this.opts.spoolDir, maxBytes: this.opts.maxMessageBytes, pool: this.spoolFiles });
    } catch (err) {
      const reply = catalogueReply('SPOOL_FAILED', queryId);
      this.logger.error({ err, cid: session.id, queryId }, 'spooling failed');
      log({ reply, action: 'tempfail-spool', errorClass: 'spool', detail: (err as Error).message }, stream.byteLength ?? 0);
      return reply;
    }
    if (spool.sizeExceeded || stream.sizeExceeded) {
      await spool.remove();
      // smtp-server itself answers 552 5.3.4 for an oversized DATA whatever we reply; we only log it.
      const reply = catalogueReply('SIZE_EXCEEDED');
      log({ reply, action: 'reject-size' }, spool.size);
      return reply;
    }
    const outcome = await processMessage(this.deps, {
      queryId,
      receivedAt,
      clientAddress: session.remoteAddress,
      clientTrusted: this.trusted.has(session.remoteAddress),
      heloName: session.hostNameAppearsAs || null,
      envelope,
      spool,
    });
    log(outcome, spool.size);
    this.observer.messageDone?.(outcome, spool.size);
    // The file goes when the last user is done, even if a deadline answered the client earlier.
    void outcome.settled.then(() => spool.remove()).catch((err: unknown) => this.logger.warn({ err, queryId }, 'spool cleanup failed'));
    return outcome.reply;
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject);
        const addr = this.server.server.address();
        if (addr && typeof addr === 'object') resolve({ host: addr.address, port: addr.port });
        else reject(new Error('no listening address'));
      });
    });
  }

  get draining(): boolean {
    return this.isDraining;
  }

  /**
   * Reload (SIGHUP): new client networks apply from the next connection, new certificate files from the
   * next STARTTLS; sessions already open keep what they started with. Everything fallible (parsing,
   * reading the files) happens before anything changes, so a throw leaves the old settings in place.
   * Returns the settings that need a restart instead (TLS switched on or off, `require`).
   */
  reconfigure(s: { allowedClients: readonly string[]; trustedNetworks: readonly string[]; tls: { certFile: string | null; keyFile: string | null; require: boolean } }): string[] {
    const allowed = new NetworkList(s.allowedClients);
    const trusted = new NetworkList(s.trustedNetworks);
    const hadTls = this.opts.tls.certFile !== null && this.opts.tls.keyFile !== null;
    const hasTls = s.tls.certFile !== null && s.tls.keyFile !== null;
    const restart: string[] = [];
    if (hadTls !== hasTls) restart.push('smtp.tls (STARTTLS switched on or off)');
    if (s.tls.require !== this.opts.tls.require) restart.push('smtp.tls.require');
    const material = hadTls && hasTls ? { key: readFileSync(s.tls.keyFile!), cert: readFileSync(s.tls.certFile!) } : null;
    // Checked here first: smtp-server replaces its context map before building the new one, so a bad pair would leave it with none.
    if (material) createSecureContext(material);
    if (material) this.server.updateSecureContext(material);
    this.allowed = allowed;
    this.trusted = trusted;
    return restart;
  }

  get activeSessions(): number {
    return this.sessions;
  }

  /**
   * Graceful stop: refuse new sessions and transactions with 421, let messages already past the final
   * dot finish within `graceMs`, then close what is left (smtp-server answers 421 to those).
   */
  async close(graceMs = 10_000): Promise<void> {
    this.isDraining = true;
    const pending = Promise.allSettled([...this.inFlight]);
    await Promise.race([pending, new Promise((r) => setTimeout(r, graceMs).unref())]);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Sessions still open get the catalogue's 421 now; smtp-server's own, after closeTimeout, would be
    // "421 4.4.2 Server shutting down". send(421) also closes the connection. (`connections` is
    // smtp-server's set of open sessions; the version is pinned.)
    const shutting = catalogueReply('SHUTTING_DOWN');
    for (const conn of (this.server as unknown as { connections: Set<{ send(code: number, data: string): void }> }).connections) {
      conn.send(shutting.code, `${shutting.enhanced} ${shutting.text}`);
    }
    await closed;
    // Files of messages still settling are discarded as they come back.
    this.spoolFiles.close();
  }
}

export { RelayError };
