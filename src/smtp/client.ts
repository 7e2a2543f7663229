// SmtpClient: the relay's own strict SMTP client (connect, EHLO, STARTTLS, AUTH, pipelined transactions, byte-exact DATA).
import type { Readable } from 'node:stream';
import { mailLine, rcptLine, type EsmtpParam } from './envelope.js';
import { DotStuffer, dotStuffWhole } from './dot-stuff.js';
import { parseExtensions, ReplyReader, type Reply } from './reply.js';
import { describeError, openSocket, SmtpClientError, upgrade, type AnySocket, type ClientPhase, type SmtpClientOptions } from './client-socket.js';
import { attachHandlers, detachHandlers } from '../util/event-handlers.js';
import { authenticate, ehloOrHelo } from './client-hello.js';

export type { Reply } from './reply.js';
export { parseReply, ReplySyntaxError } from './reply.js';
export { SmtpClientError, type ClientErrorKind, type ClientPhase, type SmtpClientOptions } from './client-socket.js';

export interface SendEnvelope {
  from: string;
  mailParams: readonly EsmtpParam[];
  rcpts: ReadonlyArray<{ address: string; params: readonly EsmtpParam[] }>;
}

export interface SendResult {
  mail: Reply;
  /** rcpts[i] answers env.rcpts[i]; shorter when the transaction stopped early (MAIL refused, 421). */
  rcpts: Reply[];
  /** Reply to DATA, or null when DATA was not sent (or not answered after a 421). */
  data: Reply | null;
  /** Final reply after the message, or null when it was not streamed. */
  final: Reply | null;
}

/** A command waiting for its reply; replies are matched to these strictly in order (RFC 2920). */
interface Pending {
  phase: ClientPhase;
  /** null: the timer starts later (the final reply after DATA waits until the message is written). */
  timeoutMs: number | null;
  resolve(r: Reply): void;
  reject(e: SmtpClientError): void;
  /** STARTTLS: nothing may follow this reply in plaintext (CVE-2011-0411); reading stops right after it. */
  lastInPlaintext?: boolean;
}

const is2xx = (r: Reply): boolean => r.code >= 200 && r.code < 300;

export class SmtpClient {
  private sock: AnySocket;
  private readonly reader = new ReplyReader();
  private readonly queue: Pending[] = [];
  private headTimer: NodeJS.Timeout | undefined;
  private isClosed = false;
  private closeEmitted = false;
  private readonly closeListeners: Array<() => void> = [];
  /** Last socket error, for the 'closed' message (ECONNRESET and the like). */
  private lastSocketError: Error | undefined;
  private exts = new Map<string, string>();
  private isSecure: boolean;
  private isAuthenticated = false;
  private greetingReply: Reply | undefined;
  private completed = 0;
  readonly connectedAt: number;
  private readonly onData = (chunk: Buffer): void => this.receive(chunk);
  private readonly onSockError = (err: Error): void => {
    this.lastSocketError = err;
  };
  private readonly onSockClose = (): void => this.socketGone();
  private readonly sockHandlers = { data: this.onData, error: this.onSockError, close: this.onSockClose };

  private constructor(
    private readonly opts: SmtpClientOptions,
    sock: AnySocket,
  ) {
    this.sock = sock;
    this.isSecure = opts.secure === true;
    this.connectedAt = Date.now();
    this.attach(sock);
  }

  get greeting(): Reply {
    return this.greetingReply!;
  }
  get extensions(): ReadonlyMap<string, string> {
    return this.exts;
  }
  has(keyword: string): boolean {
    return this.exts.has(keyword.toUpperCase());
  }
  get maxSize(): number | null {
    const v = this.exts.get('SIZE');
    const n = v === undefined ? NaN : Number(v.split(' ')[0]);
    // "SIZE" or "SIZE 0" means no fixed limit (RFC 1870 §4).
    return Number.isSafeInteger(n) && n > 0 ? n : null;
  }
  get secure(): boolean {
    return this.isSecure;
  }
  get authenticated(): boolean {
    return this.isAuthenticated;
  }
  get closed(): boolean {
    return this.isClosed;
  }
  get messages(): number {
    return this.completed;
  }

  on(event: 'close', fn: () => void): this {
    if (event !== 'close') return this;
    if (this.closeEmitted) queueMicrotask(fn);
    else this.closeListeners.push(fn);
    return this;
  }

  static async connect(opts: SmtpClientOptions, signal?: AbortSignal): Promise<SmtpClient> {
    const sock = await openSocket(opts, signal);
    const client = new SmtpClient(opts, sock);
    try {
      await client.handshake(signal);
      return client;
    } catch (e) {
      client.destroy();
      throw e;
    }
  }

  private async handshake(signal: AbortSignal | undefined): Promise<void> {
    const t = this.opts.timeouts;
    const greeting = await this.expect([{ line: null, phase: 'greeting', timeoutMs: t.greetingMs }], signal)[0]!;
    this.greetingReply = greeting;
    if (!is2xx(greeting)) {
      throw new SmtpClientError('greeting', 'reply', `server refused the session: ${greeting.toString()}`, { reply: greeting });
    }
    this.exts = await ehloOrHelo((line) => this.command(line, 'ehlo', signal), this.opts.heloName);
    if (!this.isSecure && this.opts.starttls !== 'off') await this.startTls(signal);
    if (this.opts.auth) {
      const ctx = { secure: this.isSecure, allowInClear: this.opts.allowAuthInClear === true, offered: this.exts.get('AUTH') };
      await authenticate((line) => this.command(line, 'auth', signal), ctx, this.opts.auth);
      this.isAuthenticated = true;
    }
  }

  private async startTls(signal: AbortSignal | undefined): Promise<void> {
    const required = this.opts.starttls === 'required';
    if (!this.has('STARTTLS')) {
      if (required) throw new SmtpClientError('tls', 'tls', 'STARTTLS required but the server does not offer it');
      return;
    }
    const reply = await this.expect([{ line: 'STARTTLS', phase: 'tls', timeoutMs: this.opts.timeouts.commandMs, lastInPlaintext: true }], signal)[0]!;
    if (reply.code !== 220) {
      // Reading was stopped for the upgrade; the session goes on in plaintext, so resume it.
      this.sock.on('data', this.onData);
      this.sock.resume();
      if (reply.code === 421) throw new SmtpClientError('tls', 'reply', `STARTTLS answered ${reply.toString()}`, { reply });
      if (required) throw new SmtpClientError('tls', 'tls', `STARTTLS refused: ${reply.toString()}`, { reply });
      return;
    }
    const raw = this.sock;
    this.detach(raw);
    // The plaintext socket stays watched for errors only: the TLS socket now owns its reads and close.
    raw.on('error', () => {});
    const secured = await upgrade(raw, this.opts, this.opts.timeouts.commandMs, 'tls', signal).catch((e: unknown) => {
      // The TLS layer never took over: the raw socket's close must still reach this client.
      this.attach(raw);
      throw e;
    });
    this.sock = secured;
    this.isSecure = true;
    this.attach(secured);
    // RFC 3207 §4.2: the server forgets everything from before the handshake; its extensions may differ now.
    this.exts = new Map();
    const ehlo = await this.command(`EHLO ${this.opts.heloName}`, 'ehlo', signal);
    if (!is2xx(ehlo)) throw new SmtpClientError('ehlo', 'reply', `EHLO after STARTTLS refused: ${ehlo.toString()}`, { reply: ehlo });
    this.exts = parseExtensions(ehlo);
  }

  mail(from: string, params: readonly EsmtpParam[], signal?: AbortSignal): Promise<Reply> {
    return this.command(mailLine(from, params), 'mail', signal);
  }

  rcpt(to: string, params: readonly EsmtpParam[], signal?: AbortSignal): Promise<Reply> {
    return this.command(rcptLine(to, params), 'rcpt', signal);
  }

  rset(signal?: AbortSignal): Promise<Reply> {
    return this.command('RSET', 'rset', signal);
  }

  /** DATA, then the message: a stream, or a small message already in one buffer (sent in one write). */
  async data(message: Readable | Buffer, signal?: AbortSignal): Promise<{ dataReply: Reply; final: Reply | null }> {
    if (Buffer.isBuffer(message)) {
      const dataReply = await this.command('DATA', 'data', signal);
      return { dataReply, final: dataReply.code === 354 ? await this.sendWhole(message, signal) : null };
    }
    // The stream may fail (a missing file) while DATA waits for its 354: keep that from being an
    // unhandled 'error' event; stream() sees it through `errored`.
    const early = (): void => {};
    message.on('error', early);
    try {
      const dataReply = await this.command('DATA', 'data', signal).catch((e: unknown) => {
        message.destroy();
        throw e;
      });
      if (dataReply.code !== 354) {
        message.destroy();
        return { dataReply, final: null };
      }
      const final = this.stream(message, signal);
      message.off('error', early);
      return { dataReply, final: await final };
    } finally {
      message.off('error', early);
    }
  }

  async send(env: SendEnvelope, message: () => Readable, signal?: AbortSignal): Promise<SendResult> {
    if (!this.has('PIPELINING')) return this.sendInSteps(env, message, signal);
    const cmds = [
      { line: mailLine(env.from, env.mailParams), phase: 'mail' as const },
      ...env.rcpts.map((r) => ({ line: rcptLine(r.address, r.params), phase: 'rcpt' as const })),
      { line: 'DATA', phase: 'data' as const },
    ];
    const t = this.opts.timeouts.commandMs;
    const waits = this.expect(
      cmds.map((c) => ({ ...c, timeoutMs: t })),
      signal,
    );
    // Every promise gets a handler now: after a 421 the later ones reject and must not go unhandled.
    for (const w of waits) w.catch(() => {});
    const replies: Reply[] = [];
    for (const w of waits) {
      try {
        replies.push(await w);
      } catch (e) {
        // The server said 421 and closed: what it answered so far is the result (a 4xx for the caller).
        if (replies.some((r) => r.code === 421)) break;
        throw e;
      }
    }
    const mail = replies[0]!;
    const rcpts = replies.slice(1, 1 + env.rcpts.length);
    const dataReply = replies.length === cmds.length ? replies[cmds.length - 1]! : null;
    if (dataReply?.code !== 354) return { mail, rcpts, data: dataReply, final: null };
    if (!is2xx(mail) || !rcpts.some(is2xx)) {
      // RFC 2920 §3.1 case: 354 although nothing can be delivered. Sending an empty message could
      // deliver one; sending nothing leaves the server waiting. Neither is safe: drop the connection.
      this.destroy();
      return { mail, rcpts, data: dataReply, final: null };
    }
    return { mail, rcpts, data: dataReply, final: await this.stream(message(), signal) };
  }

  /** Without PIPELINING: one command per round trip; DATA only after an accepted MAIL and at least one accepted RCPT. */
  private async sendInSteps(env: SendEnvelope, message: () => Readable, signal?: AbortSignal): Promise<SendResult> {
    const mail = await this.mail(env.from, env.mailParams, signal);
    const rcpts: Reply[] = [];
    if (!is2xx(mail)) return { mail, rcpts, data: null, final: null };
    for (const r of env.rcpts) {
      const reply = await this.rcpt(r.address, r.params, signal);
      rcpts.push(reply);
      if (reply.code === 421) return { mail, rcpts, data: null, final: null };
    }
    if (!rcpts.some(is2xx)) return { mail, rcpts, data: null, final: null };
    const { dataReply, final } = await this.data(message(), signal);
    return { mail, rcpts, data: dataReply, final };
  }

  async quit(): Promise<void> {
    if (this.isClosed) return;
    const wait = Math.min(this.opts.timeouts.commandMs, 2_000);
    try {
      await this.expect([{ line: 'QUIT', phase: 'quit', timeoutMs: wait }], undefined)[0];
    } catch {
      // QUIT is a courtesy: a server that does not answer or hangs up first changes nothing.
    }
    this.destroy();
  }

  destroy(): void {
    this.fail(new SmtpClientError('connect', 'closed', 'connection destroyed by the client'));
  }

  // ---- internals -------------------------------------------------------------------------------

  private command(line: string, phase: ClientPhase, signal: AbortSignal | undefined): Promise<Reply> {
    return this.expect([{ line, phase, timeoutMs: this.opts.timeouts.commandMs }], signal)[0]!;
  }

  /**
   * Queues commands (line null: only a reply is awaited, e.g. the greeting) and writes all their
   * lines in ONE socket write; the replies are matched in order. An abort or timeout destroys the
   * connection, since an unanswered command leaves it out of step.
   */
  private expect(
    cmds: Array<{ line: string | null; phase: ClientPhase; timeoutMs: number | null; lastInPlaintext?: boolean }>,
    signal: AbortSignal | undefined,
  ): Array<Promise<Reply>> {
    const first = cmds[0]!.phase;
    if (this.isClosed) return cmds.map((c) => Promise.reject(new SmtpClientError(c.phase, 'closed', 'connection is closed')));
    if (signal?.aborted) return cmds.map((c) => Promise.reject(new SmtpClientError(c.phase, 'aborted', 'aborted before the command was sent')));
    const bad = cmds.find((c) => c.line !== null && /[\r\n]/.test(c.line));
    if (bad) {
      // A CR or LF inside a parameter would smuggle a second command; nothing is sent.
      return cmds.map((c) => Promise.reject(new SmtpClientError(c.phase, 'protocol', `refusing to send a ${bad.phase} command containing CR or LF`)));
    }
    const onAbort = (): void => this.fail(new SmtpClientError(first, 'aborted', 'aborted by the caller'));
    signal?.addEventListener('abort', onAbort, { once: true });
    let open = cmds.length;
    const settled = (): void => {
      if (--open === 0) signal?.removeEventListener('abort', onAbort);
    };
    const promises = cmds.map(
      (c) =>
        new Promise<Reply>((resolve, reject) => {
          this.queue.push({
            phase: c.phase,
            timeoutMs: c.timeoutMs,
            ...(c.lastInPlaintext ? { lastInPlaintext: true } : {}),
            resolve: (r) => (settled(), resolve(r)),
            reject: (e) => (settled(), reject(e)),
          });
        }),
    );
    const text = cmds.flatMap((c) => (c.line === null ? [] : [c.line + '\r\n'])).join('');
    if (text) this.sock.write(text);
    if (this.queue.length === cmds.length) this.armHead();
    return promises;
  }

  /** (Re)starts the reply timer for the command at the head of the queue. */
  private armHead(): void {
    clearTimeout(this.headTimer);
    this.headTimer = undefined;
    const head = this.queue[0];
    if (!head || head.timeoutMs === null) return;
    const ms = head.timeoutMs;
    this.headTimer = setTimeout(() => {
      this.fail(new SmtpClientError(head.phase, 'timeout', `no reply to ${head.phase} within ${ms} ms`));
    }, ms);
  }

  private receive(chunk: Buffer): void {
    let replies: Reply[];
    try {
      replies = this.reader.push(chunk);
    } catch (e) {
      const phase = this.queue[0]?.phase ?? 'connect';
      return this.fail(new SmtpClientError(phase, 'protocol', (e as Error).message, { cause: e }));
    }
    for (let i = 0; i < replies.length; i++) {
      const reply = replies[i]!;
      const head = this.queue.shift();
      if (!head) {
        // RFC 5321 §3.8: a server may announce 421 at any time and close; anything else is out of step.
        if (reply.code === 421) return this.fail(new SmtpClientError('connect', 'reply', `server closing: ${reply.toString()}`, { reply }));
        return this.fail(new SmtpClientError('connect', 'protocol', `unsolicited reply: ${reply.toString()}`, { reply }));
      }
      if (head.lastInPlaintext) {
        // Stop reading plaintext now; bytes already behind the reply could only be injected (CVE-2011-0411).
        this.sock.off('data', this.onData);
        this.sock.pause();
        if (i < replies.length - 1 || this.reader.buffered > 0) {
          this.queue.unshift(head);
          return this.fail(new SmtpClientError(head.phase, 'protocol', 'data received after the STARTTLS reply'));
        }
      }
      this.armHead();
      head.resolve(reply);
      if (reply.code === 421) {
        // The server is closing; the caller got the reply, everything else fails as 'closed'.
        return this.fail(new SmtpClientError(head.phase, 'closed', `server closed the session: ${reply.toString()}`, { reply }));
      }
      if (head.lastInPlaintext) return;
    }
  }

  /** Marks the connection unusable, rejects every waiting command (each with its own phase) and drops the socket. */
  private fail(err: SmtpClientError): void {
    this.isClosed = true;
    clearTimeout(this.headTimer);
    this.headTimer = undefined;
    for (const p of this.queue.splice(0)) {
      p.reject(p.phase === err.phase ? err : new SmtpClientError(p.phase, err.kind, err.message, { reply: err.reply, cause: err.cause }));
    }
    this.sock.destroy();
  }

  private socketGone(): void {
    if (!this.isClosed) {
      const why = this.lastSocketError ? `: ${describeError(this.lastSocketError)}` : '';
      this.fail(new SmtpClientError(this.queue[0]?.phase ?? 'connect', 'closed', `connection closed by the server${why}`, { cause: this.lastSocketError }));
    }
    if (this.closeEmitted) return;
    this.closeEmitted = true;
    for (const fn of this.closeListeners.splice(0)) fn();
  }

  private attach(sock: AnySocket): void {
    attachHandlers(sock, this.sockHandlers);
  }

  private detach(sock: AnySocket): void {
    detachHandlers(sock, this.sockHandlers);
  }

  /**
   * A small message in one buffer: stuffed and handed to the socket in one write, then its final reply.
   * No stream, pipe or cork per message (the stream path's machinery cost more than the bytes). Until
   * the kernel took it all, commandMs bounds the write as in stream(); then dataDoneMs counts.
   */
  private sendWhole(message: Buffer, signal: AbortSignal | undefined): Promise<Reply> {
    const t = this.opts.timeouts;
    const reply = this.expect([{ line: null, phase: 'message', timeoutMs: t.commandMs }], signal)[0]!;
    const pending = this.queue[this.queue.length - 1];
    if (pending?.phase === 'message') {
      this.sock.write(dotStuffWhole(message), () => {
        if (this.queue[0] !== pending) return;
        pending.timeoutMs = t.dataDoneMs;
        this.armHead();
      });
    }
    return reply.then((r) => {
      if (is2xx(r)) this.completed++;
      return r;
    });
  }

  /**
   * Streams message → DotStuffer → socket with backpressure and waits for the final reply. A reply
   * before the end (a server refusing mid-stream) is returned, but the connection is dropped: the
   * server and we no longer agree where the message ends.
   */
  private stream(message: Readable, signal: AbortSignal | undefined): Promise<Reply> {
    const t = this.opts.timeouts;
    const sock = this.sock;
    const stuffer = new DotStuffer();
    if (this.isClosed) {
      message.destroy();
      return Promise.reject(new SmtpClientError('message', 'closed', 'connection is closed'));
    }
    let done = false;
    let ended = false;
    const cleanup = (): void => {
      done = true;
      sock.setTimeout(0);
      sock.off('timeout', onIdle);
      message.unpipe(stuffer);
      stuffer.unpipe(sock);
      signal?.removeEventListener('abort', onAbort);
    };
    const onIdle = (): void => this.fail(new SmtpClientError('message', 'timeout', `no write progress for ${t.commandMs} ms while sending the message`));
    const onAbort = (): void => this.fail(new SmtpClientError('message', 'aborted', 'aborted by the caller while sending the message'));
    const reply = this.expect([{ line: null, phase: 'message', timeoutMs: null }], undefined)[0]!;
    const pending = this.queue[this.queue.length - 1]!;
    const result = reply.then(
      (r) => {
        const early = !ended;
        cleanup();
        message.destroy();
        if (early) this.fail(new SmtpClientError('message', 'protocol', `reply before the end of the message: ${r.toString()}`, { reply: r }));
        else if (is2xx(r)) this.completed++;
        return r;
      },
      (e: unknown) => {
        cleanup();
        message.destroy();
        throw e;
      },
    );
    if (signal?.aborted) {
      onAbort();
      return result;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    if (message.errored) {
      this.fail(new SmtpClientError('message', 'closed', `reading the message failed: ${describeError(message.errored)}`, { cause: message.errored }));
      return result;
    }
    // No progress on the socket (the server stopped reading) for commandMs fails the transfer.
    sock.setTimeout(t.commandMs);
    sock.on('timeout', onIdle);
    message.once('error', (err) => {
      if (!done) this.fail(new SmtpClientError('message', 'closed', `reading the message failed: ${describeError(err)}`, { cause: err }));
    });
    // What the stuffer yields within one event-loop turn leaves in one socket write: a small message
    // and its end marker cost one segment instead of two (the data handler runs before pipe's write).
    let corked = false;
    stuffer.on('data', () => {
      if (corked || done) return;
      corked = true;
      sock.cork();
      setImmediate(() => {
        corked = false;
        sock.uncork();
      });
    });
    stuffer.once('end', () => {
      if (done) return;
      ended = true;
      // Everything is handed to the socket: now the server's end-of-data processing time counts.
      sock.setTimeout(0);
      sock.off('timeout', onIdle);
      pending.timeoutMs = t.dataDoneMs;
      if (this.queue[0] === pending) this.armHead();
    });
    message.pipe(stuffer);
    stuffer.pipe(sock, { end: false });
    return result;
  }
}
