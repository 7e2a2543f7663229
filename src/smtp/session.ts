// Per-connection SMTP state machine: PROXY header, greeting, then one command at a time (pipelined replies in order), handing MAIL/RCPT/DATA/AUTH to the handlers.
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { catalogueReply, type ErrorCode, type SmtpReply } from '../errors.js';
import type { NetworkList } from '../util/cidr.js';
import { decodeBase64, isPositive, parseMailFrom, parseRcptTo, splitCommand, type ParamContext } from './command.js';
import { DataDecoder } from './data-reader.js';
import { parseProxyHeader, unmapIPv4 } from './proxy-protocol.js';
import { SessionEnded, SessionIO, type Line } from './session-io.js';
import { randomHex } from '../util/random-id.js';
import type { MailFromCommand, RcptToCommand, ResetReason, SmtpHandlers, SmtpServerOptions, SmtpSession, SmtpTransaction } from './types.js';

/** Options with every default filled in, shared by all sessions of one server. */
export interface SessionConfig {
  opts: SmtpServerOptions;
  banner: string;
  greetingDelayMs: number;
  maxCommandLineBytes: number;
  maxAuthFailures: number;
  proxyTrusted: NetworkList | null;
  proxyTimeoutMs: number;
  tlsContext: SecureContext | null;
  clocks: { idleTimeoutMs: number; sessionTimeoutMs: number; minBytesPerSecond: number; minRateWindowMs: number };
}

/** RFC 4954 4: AUTH lines may be far longer than ordinary commands. */
const AUTH_LINE_BYTES = 12288;

const LF = 0x0a;
/**
 * After the final reply of a DATA that shutdown waited for: how long the client has to send its QUIT (one round
 * trip, generously) before the session ends with the shutdown reply. The server's grace bounds it as well.
 */
export const QUIT_AFTER_SHUTDOWN_MS = 2_000;

const R = (code: ErrorCode): SmtpReply => catalogueReply(code);

interface Credentials {
  user: string;
  pass: string;
  /** PLAIN with an authorisation identity other than the user: acting for someone else is not supported. */
  forbidden: boolean;
}

interface OpenTransaction {
  mail: MailFromCommand;
  rcpts: RcptToCommand[];
}

export class Session implements SmtpSession {
  readonly id = randomHex(5);
  readonly openedAt = Date.now();
  remoteAddress: string;
  remotePort: number;
  /** Set from a PROXY header; otherwise read from the socket on first use (getsockname per connection showed in the profile). */
  private local: { address: string; port: number } | null = null;
  readonly peerAddress: string;
  proxied = false;
  heloName: string | null = null;
  esmtp = false;
  secure = false;
  user: string | null = null;

  private readonly io: SessionIO;
  /** Made on first use: most sessions never log, and a pino child per connection showed in the profile. */
  private logChild: Logger | null = null;
  private tx: OpenTransaction | null = null;
  /** Refused by connect() with a 554 greeting: only QUIT is served (RFC 5321 3.1). */
  private refused = false;
  private authFailures = 0;
  /** Between 354 and the final reply: shutdown waits for that reply. */
  private inData = false;
  /** Set by shutdown(): every command but QUIT is answered with it (and ends the session); QUIT still gets 221. */
  private closing: SmtpReply | null = null;

  constructor(
    socket: Socket,
    private readonly cfg: SessionConfig,
    private readonly handlers: SmtpHandlers,
    private readonly logger: Logger,
  ) {
    socket.setNoDelay(true);
    this.peerAddress = unmapIPv4(socket.remoteAddress ?? '');
    this.remoteAddress = this.peerAddress;
    this.remotePort = socket.remotePort ?? 0;
    this.io = new SessionIO(socket, cfg.clocks, (level, fields, msg) => this.logIf(level, fields, msg));
  }

  get localAddress(): string {
    return this.localEnd().address;
  }

  get localPort(): number {
    return this.localEnd().port;
  }

  private localEnd(): { address: string; port: number } {
    const sock = this.io.socket;
    return (this.local ??= { address: unmapIPv4(sock.localAddress ?? ''), port: sock.localPort ?? 0 });
  }

  private get log(): Logger {
    return (this.logChild ??= this.logger.child({ session: this.id }));
  }

  /** Routine lines (a reset connection, DATA received): the logger child is made only when the level is on. */
  private logIf(level: 'debug' | 'info', fields: Record<string, unknown>, msg: string): void {
    if (this.logger.isLevelEnabled(level)) this.log[level](fields, msg);
  }

  get transmissionType(): string {
    if (!this.esmtp) return 'SMTP';
    return `ESMTP${this.secure ? 'S' : ''}${this.user !== null ? 'A' : ''}`;
  }

  /** Runs the whole session; resolves once the connection is closed and the handlers were told. */
  async run(): Promise<void> {
    let reason: ResetReason = 'close';
    try {
      await this.converse();
      reason = 'quit';
    } catch (e) {
      if (e instanceof SessionEnded) reason = e.reason;
      else {
        this.log.error({ err: e }, 'SMTP session failed');
        this.io.end(R('SESSION_FAILED'), 'close');
      }
    }
    this.io.end(null, reason);
    await this.resetTx(reason);
    await this.io.closed;
    try {
      this.handlers.close?.(this);
    } catch (e) {
      this.log.error({ err: e }, 'close handler failed');
    }
  }

  /**
   * Server shutdown: an idle session ends at once with `reply`. A DATA phase gets its final reply first (see
   * dataCommand), and a complete command line already received is answered by the loop: QUIT with 221 (RFC
   * 5321 4.1.1.10: QUIT is always answered 221), anything else with `reply`.
   */
  shutdown(reply: SmtpReply): void {
    this.closing = reply;
    if (this.inData) return;
    if (!this.io.peek().includes(LF)) this.io.end(reply, 'shutdown');
  }

  /** Grace period over. */
  destroy(): void {
    this.io.destroy();
  }

  private async converse(): Promise<void> {
    if (this.cfg.proxyTrusted && !(await this.readProxyHeader(this.cfg.proxyTrusted))) return;
    const refusal = await this.call('connect', () => this.handlers.connect?.(this));
    if (refusal === undefined) {
      this.io.end(R('SESSION_FAILED'), 'close');
      return;
    }
    if (refusal) {
      if (refusal.code !== 554) {
        this.io.end(refusal, 'close');
        return;
      }
      this.refused = true;
    }
    if (this.cfg.greetingDelayMs > 0 && (this.io.peek().length > 0 || (await this.io.waitInput(this.cfg.greetingDelayMs)))) {
      this.log.info('client talked before the greeting');
      this.io.end(R('EARLY_TALKER'), 'close');
      return;
    }
    if (refusal) this.io.reply(refusal);
    else {
      const b = this.cfg.banner;
      this.io.reply({ code: 220, enhanced: '', text: `${this.cfg.opts.hostname} ${/\bESMTP\b/i.test(b) ? b : `ESMTP ${b}`}` }, false);
    }
    for (;;) {
      if (this.io.expired) this.io.end(R('SESSION_TIMEOUT'), 'timeout');
      // Under TLS with AUTH on offer, read up to the AUTH limit; command() holds other verbs to the usual one.
      const authLines = this.secure && !!this.cfg.opts.auth;
      const line = await this.io.readLine(authLines ? Math.max(AUTH_LINE_BYTES, this.cfg.maxCommandLineBytes) : this.cfg.maxCommandLineBytes);
      if (await this.command(line)) return;
    }
  }

  /** Reads and applies the PROXY header; false when the connection was dropped. */
  private async readProxyHeader(trusted: NetworkList): Promise<boolean> {
    if (!trusted.has(this.peerAddress)) {
      this.log.warn({ peer: this.peerAddress }, 'PROXY protocol: connection from an untrusted peer dropped');
      this.io.end(null, 'close');
      return false;
    }
    const deadline = Date.now() + this.cfg.proxyTimeoutMs;
    for (;;) {
      const r = parseProxyHeader(this.io.peek());
      if (r.status === 'ok') {
        this.io.consume(r.length);
        if (r.source && r.destination) {
          this.remoteAddress = r.source.address;
          this.remotePort = r.source.port;
          this.local = { address: r.destination.address, port: r.destination.port };
          this.proxied = true;
        }
        return true;
      }
      const left = deadline - Date.now();
      if (r.status === 'invalid' || left <= 0 || !(await this.io.waitInput(left))) {
        const why = r.status === 'invalid' ? r.reason : 'no complete header in time';
        this.log.warn({ peer: this.peerAddress, reason: why }, 'PROXY protocol: bad header, connection dropped');
        this.io.end(null, 'close');
        return false;
      }
    }
  }

  /** One command; true when the session is over (QUIT). */
  private async command(line: Line): Promise<boolean> {
    if (line.tooLong) return this.say('LINE_TOO_LONG');
    if (line.badLine) return this.say('BAD_LINE');
    const { verb, arg } = splitCommand(line.text);
    if (line.bytes > this.cfg.maxCommandLineBytes && verb !== 'AUTH') return this.say('LINE_TOO_LONG');
    if (verb === 'QUIT') {
      this.io.end(R('QUIT'), 'quit');
      await this.resetTx('quit');
      return true;
    }
    if (this.closing) {
      // The next readLine() throws SessionEnded('shutdown'), so run() resets the transaction as a shutdown.
      this.io.end(this.closing, 'shutdown');
      return false;
    }
    if (this.refused) return this.say('BAD_SEQUENCE');
    switch (verb) {
      case 'EHLO':
      case 'HELO':
        return this.helo(verb === 'EHLO', arg);
      case 'MAIL':
        return this.mail(arg);
      case 'RCPT':
        return this.rcpt(arg);
      case 'DATA':
        return this.dataCommand(arg);
      case 'RSET':
        await this.resetTx('rset');
        return this.say('SMTP_OK');
      case 'NOOP':
        return this.say('SMTP_OK');
      case 'VRFY':
        return this.say('VRFY');
      case 'EXPN':
        return this.say('EXPN');
      case 'HELP':
        return this.say('HELP');
      case 'STARTTLS':
        return this.startTls(arg);
      case 'AUTH':
        return this.auth(arg);
      default:
        return this.say('UNKNOWN_COMMAND');
    }
  }

  private say(code: ErrorCode): false {
    this.io.reply(R(code));
    return false;
  }

  private async helo(esmtp: boolean, arg: string): Promise<false> {
    if (arg === '' || /\s/.test(arg)) return this.say('SYNTAX');
    await this.resetTx('helo');
    this.heloName = arg;
    this.esmtp = esmtp;
    if (!esmtp) {
      this.io.reply({ code: 250, enhanced: '', text: this.cfg.opts.hostname }, false);
      return false;
    }
    const o = this.cfg.opts;
    const lines = [o.hostname, 'PIPELINING', `SIZE ${o.maxMessageBytes}`, '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES'];
    if (o.dsn) lines.push('DSN');
    if (this.cfg.tlsContext && !this.secure) lines.push('STARTTLS');
    if (o.auth && this.secure) lines.push('AUTH PLAIN LOGIN');
    this.io.reply({ code: 250, enhanced: '', text: lines.join('\n') }, false);
    return false;
  }

  private paramContext(): ParamContext {
    return { dsn: this.cfg.opts.dsn, maxMessageBytes: this.cfg.opts.maxMessageBytes, authOffered: !!this.cfg.opts.auth && this.secure };
  }

  /** A 421 from a handler means "closing" (RFC 5321 3.8): say it, end the transaction and the session. */
  private async closeWith(r: SmtpReply): Promise<true> {
    this.io.end(r, 'close');
    await this.resetTx('close');
    return true;
  }

  private async mail(arg: string): Promise<boolean> {
    if (this.heloName === null || this.tx) return this.say('BAD_SEQUENCE');
    const o = this.cfg.opts;
    if (o.tls?.require && !this.secure) return this.say('TLS_REQUIRED');
    if (o.auth?.required && this.user === null) return this.say('AUTH_REQUIRED');
    const parsed = parseMailFrom(arg, this.paramContext());
    if (!parsed.ok) {
      this.io.reply(parsed.reply);
      return false;
    }
    const reply = await this.call('mail', () => this.handlers.mail?.(this, parsed.value));
    if (reply === undefined) return this.say('INTERNAL');
    const r = reply ?? R('MAIL_OK');
    if (r.code === 421) return this.closeWith(r);
    if (isPositive(r)) this.tx = { mail: parsed.value, rcpts: [] };
    this.io.reply(r);
    return false;
  }

  private async rcpt(arg: string): Promise<boolean> {
    const tx = this.tx;
    if (!tx) return this.say('BAD_SEQUENCE');
    const parsed = parseRcptTo(arg, this.paramContext(), tx.mail.smtpUtf8);
    if (!parsed.ok) {
      this.io.reply(parsed.reply);
      return false;
    }
    if (tx.rcpts.length >= this.cfg.opts.maxRecipients) return this.say('TOO_MANY_RECIPIENTS');
    const snapshot: SmtpTransaction = { mail: tx.mail, rcpts: [...tx.rcpts] };
    const reply = await this.call('rcpt', () => this.handlers.rcpt?.(this, parsed.value, snapshot));
    if (reply === undefined) return this.say('INTERNAL');
    const r = reply ?? R('RCPT_OK');
    if (r.code === 421) return this.closeWith(r);
    // The transaction may have gone meanwhile (session ended while the handler ran).
    if (isPositive(r) && this.tx === tx) tx.rcpts.push(parsed.value);
    this.io.reply(r);
    return false;
  }

  private async dataCommand(arg: string): Promise<boolean> {
    if (arg !== '') return this.say('SYNTAX');
    const tx = this.tx;
    if (!tx) return this.say('BAD_SEQUENCE');
    if (tx.rcpts.length === 0) return this.say('NO_VALID_RECIPIENTS');
    // From here on the transaction belongs to data(): reset() is never called for it.
    this.tx = null;
    this.inData = true;
    this.io.reply(R('DATA_GO'));
    this.io.flush();
    const o = this.cfg.opts;
    const decoder = new DataDecoder({
      maxMessageBytes: o.maxMessageBytes,
      maxLineBytes: o.maxDataLineBytes ?? 0,
      rejectBareLineEndings: o.bareLineEndings === 'reject',
    });
    const message = new Readable({ read: () => this.io.resumeData() });
    // The handler may not listen for 'error'; the destroy() that tells it the DATA phase broke must not crash us.
    message.on('error', () => undefined);
    const txView: SmtpTransaction = { mail: tx.mail, rcpts: tx.rcpts };
    const handled = this.call('data', () => this.handlers.data(this, txView, message)).finally(() => this.io.discardData());
    let broken: { error: unknown } | null = null;
    try {
      await this.io.receiveData(decoder, message);
    } catch (e) {
      broken = { error: e };
    }
    const reply = await handled;
    this.inData = false;
    if (broken) throw broken.error;
    this.logIf('debug', { bytes: decoder.bytes, violation: decoder.violation }, 'DATA received');
    this.io.reply(SessionIO.violationReply(decoder.violation) ?? reply ?? R('INTERNAL'));
    if (this.closing) {
      // Shutdown waited for this reply. The client's usual next word is QUIT, sent once it has read the reply:
      // give it a moment to arrive so it gets 221 (command() answers anything else with the shutdown reply).
      this.io.flush();
      if (!this.io.peek().includes(LF)) await this.io.waitInput(QUIT_AFTER_SHUTDOWN_MS);
      if (!this.io.peek().includes(LF)) this.io.end(this.closing, 'shutdown');
    }
    return false;
  }

  private async startTls(arg: string): Promise<false> {
    if (!this.cfg.tlsContext) return this.say('TLS_NOT_AVAILABLE');
    if (arg !== '') return this.say('SYNTAX');
    if (this.secure || this.tx) return this.say('BAD_SEQUENCE');
    this.io.reply(R('STARTTLS_GO'));
    await this.io.startTls(this.cfg.tlsContext);
    // RFC 3207 4.2: forget everything learnt in clear; the client starts over with EHLO.
    this.secure = true;
    this.heloName = null;
    this.esmtp = false;
    this.user = null;
    return false;
  }

  private async auth(arg: string): Promise<boolean> {
    const authOpts = this.cfg.opts.auth;
    if (!authOpts) return this.say('UNKNOWN_COMMAND');
    if (!this.secure) return this.say('AUTH_NEEDS_TLS');
    if (this.heloName === null || this.user !== null || this.tx) return this.say('BAD_SEQUENCE');
    const [mech = '', initial, extra] = arg.split(' ');
    if (extra !== undefined) return this.say('SYNTAX');
    let creds: Credentials | ErrorCode;
    if (mech.toUpperCase() === 'PLAIN') creds = await this.authPlain(initial);
    else if (mech.toUpperCase() === 'LOGIN') creds = await this.authLogin(initial);
    else return this.say('AUTH_MECHANISM');
    if (typeof creds === 'string') return this.say(creds);
    const { user, pass } = creds;
    const check = this.handlers.auth;
    const ok = creds.forbidden || !check ? false : await this.call('auth', () => check(this, user, pass));
    if (ok === undefined) return this.say('INTERNAL');
    if (ok) {
      this.user = user;
      this.log.info({ user }, 'authenticated');
      return this.say('AUTH_OK');
    }
    this.authFailures++;
    // Never the password in the log.
    this.log.info({ user, failures: this.authFailures }, 'authentication failed');
    if (this.authFailures >= this.cfg.maxAuthFailures) {
      this.io.end(R('AUTH_TOO_MANY_FAILURES'), 'close');
      return true;
    }
    return this.say('AUTH_FAILED');
  }

  /** One base64 response after a 334; an ErrorCode when cancelled or unreadable. */
  private async authResponse(challenge: ErrorCode): Promise<Buffer | ErrorCode> {
    this.io.reply(R(challenge), false);
    const line = await this.io.readLine(AUTH_LINE_BYTES);
    if (line.tooLong) return 'LINE_TOO_LONG';
    if (line.badLine) return 'BAD_LINE';
    return decodeAuth(line.text);
  }

  private async authPlain(initial: string | undefined): Promise<Credentials | ErrorCode> {
    const raw = initial === undefined ? await this.authResponse('AUTH_CONTINUE') : decodeAuth(initial);
    if (typeof raw === 'string') return raw;
    const parts = raw.toString('utf8').split('\0');
    if (parts.length !== 3) return 'AUTH_BAD_RESPONSE';
    const [authzid, user, pass] = parts as [string, string, string];
    // Acting for someone else (authzid) is not supported: that is a failed attempt, not a syntax error.
    return { user, pass, forbidden: authzid !== '' && authzid !== user };
  }

  private async authLogin(initial: string | undefined): Promise<Credentials | ErrorCode> {
    const u = initial === undefined ? await this.authResponse('AUTH_USERNAME') : decodeAuth(initial);
    if (typeof u === 'string') return u;
    const p = await this.authResponse('AUTH_PASSWORD');
    if (typeof p === 'string') return p;
    return { user: u.toString('utf8'), pass: p.toString('utf8'), forbidden: false };
  }

  /** Ends an open transaction that never reached data(): reset() exactly once. */
  private async resetTx(reason: ResetReason): Promise<void> {
    const tx = this.tx;
    if (!tx) return;
    this.tx = null;
    if (!this.handlers.reset) return;
    try {
      await this.handlers.reset(this, tx, reason);
    } catch (e) {
      this.log.error({ err: e, reason }, 'reset handler failed');
    }
  }

  /** Runs a handler; undefined when it threw (logged), so the caller answers INTERNAL. */
  private async call<T>(name: string, fn: () => T | Promise<T>): Promise<Awaited<T> | null | undefined> {
    try {
      const v = await fn();
      return v === undefined ? null : v;
    } catch (e) {
      this.log.error({ err: e, handler: name }, 'SMTP handler failed');
      return undefined;
    }
  }
}

/** '*' cancels, '=' is an empty response (RFC 4954 4), else strict base64. */
function decodeAuth(s: string): Buffer | ErrorCode {
  if (s === '*') return 'AUTH_CANCELLED';
  if (s === '=') return Buffer.alloc(0);
  return decodeBase64(s) ?? 'AUTH_BAD_RESPONSE';
}
