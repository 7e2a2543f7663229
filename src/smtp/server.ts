// SmtpServer: the project's own SMTP listener (sessions, connection cap, graceful shutdown); generic engine, no DLP logic.
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { catalogueReply, type SmtpReply } from '../errors.js';
import { NetworkList } from '../util/cidr.js';
import { formatReplyLines } from './command.js';
import { Session, type SessionConfig } from './session.js';
import type { SmtpHandlers, SmtpServerOptions } from './types.js';

export { formatReplyLines } from './command.js';
export { DataPhaseError } from './types.js';
export type { MailFromCommand, RcptToCommand, ResetReason, SmtpHandlers, SmtpServerOptions, SmtpSession, SmtpTransaction } from './types.js';

export class SmtpServer {
  private readonly server: Server;
  private readonly sessions = new Set<Session>();
  private readonly cfg: SessionConfig;
  private closing = false;

  constructor(
    private readonly opts: SmtpServerOptions,
    private readonly handlers: SmtpHandlers,
    private readonly logger: Logger,
  ) {
    this.cfg = {
      opts,
      banner: opts.banner ?? 'dlp-relay',
      greetingDelayMs: opts.greetingDelayMs,
      maxCommandLineBytes: opts.maxCommandLineBytes ?? 512,
      // Without opts.auth the AUTH command is unknown, so the limit is never consulted.
      maxAuthFailures: opts.auth?.maxFailures ?? 0,
      proxyTrusted: opts.proxyProtocol ? new NetworkList(opts.proxyProtocol.trustedPeers) : null,
      proxyTimeoutMs: opts.proxyProtocol?.timeoutMs ?? 3000,
      tlsContext: opts.tls ? createSecureContext({ key: opts.tls.key, cert: opts.tls.cert }) : null,
      clocks: {
        idleTimeoutMs: opts.idleTimeoutMs,
        sessionTimeoutMs: opts.sessionTimeoutMs,
        minBytesPerSecond: opts.minBytesPerSecond,
        minRateWindowMs: opts.minRateWindowMs ?? 30_000,
      },
    };
    // Half-open kept: a client may send QUIT and its FIN together and still deserve the 221.
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.accept(socket));
    this.server.on('error', (e) => this.logger.error({ err: e }, 'SMTP listener error'));
  }

  listen(port: number, host: string): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error): void => reject(e);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const a = this.server.address();
        if (a === null || typeof a === 'string') reject(new Error('SMTP listener has no TCP address'));
        else resolve({ host: a.address, port: a.port });
      });
    });
  }

  /**
   * New certificate and key (reload): sessions that start TLS from now on get them; sessions already
   * encrypted keep theirs. Builds the context first, so a bad pair throws and changes nothing.
   */
  updateSecureContext(material: { key: Buffer | string; cert: Buffer | string }): void {
    const ctx = createSecureContext(material);
    if (this.cfg.tlsContext) this.cfg.tlsContext = ctx;
  }

  /** Sessions currently open. */
  get connections(): number {
    return this.sessions.size;
  }

  /**
   * Stops accepting; idle sessions get `reply` and are closed at once, sessions inside DATA right after their
   * final reply. Resolves when every socket is closed or `graceMs` passed (the rest are then destroyed).
   */
  async close(graceMs: number, reply: SmtpReply = catalogueReply('SHUTTING_DOWN')): Promise<void> {
    this.closing = true;
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions) s.shutdown(reply);
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'grace'>((resolve) => {
      timer = setTimeout(() => resolve('grace'), graceMs);
    });
    const drained = this.drained();
    if ((await Promise.race([drained, graceOver])) === 'grace') {
      this.logger.warn({ sessions: this.sessions.size }, 'SMTP shutdown grace over, dropping sessions');
      for (const s of this.sessions) s.destroy();
      await drained;
    }
    clearTimeout(timer);
    await stopped;
  }

  private drained(): Promise<'drained'> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.sessions.size === 0) resolve('drained');
        else setTimeout(check, 20);
      };
      check();
    });
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    // Errors before the session owns the socket (or after a refusal) must not crash the process.
    socket.on('error', (e) => this.logger.debug({ err: e.message }, 'socket error'));
    if (this.closing) {
      socket.end(formatReplyLines(catalogueReply('SHUTTING_DOWN')));
      return;
    }
    const max = this.opts.maxConnections;
    if (max !== undefined && this.sessions.size >= max) {
      this.logger.warn({ max }, 'connection cap reached, refusing');
      socket.end(formatReplyLines(catalogueReply('SATURATED')));
      setTimeout(() => socket.destroy(), 2000).unref();
      return;
    }
    const session = new Session(socket, this.cfg, this.handlers, this.logger);
    this.sessions.add(session);
    session
      .run()
      .catch((e: unknown) => this.logger.error({ err: e }, 'SMTP session crashed'))
      .finally(() => this.sessions.delete(session));
  }
}
