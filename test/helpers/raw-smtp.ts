// A tiny raw-socket SMTP client for tests that assert exact reply lines; every wait has a timeout so a test can fail but never hang.
import { connect as netConnect, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';

export interface SmtpSessionOptions {
  /** Default 127.0.0.1: tests never leave the loopback interface. */
  host?: string;
  /** Limit for each single wait (connect + greeting, or one reply). Default 10000 ms. */
  timeoutMs?: number;
}

export interface DataOptions {
  /** Double leading dots (RFC 5321 4.5.2) before sending; off by default so tests can send exactly the bytes they mean. */
  dotStuff?: boolean;
  /**
   * With dotStuff: also double a dot that follows a bare CR, the rule of our own engine (src/smtp), which reads a
   * line start after CRLF, a bare LF or a bare CR. Needed for payloads holding "\r." (the relay would eat that dot).
   */
  afterBareCr?: boolean;
}

/** A complete reply: multi-line replies are joined with '\n', without CRLF. */
export type Reply = string;

/** Basic status code of a reply ('250-…\n250 OK' → 250). */
export function replyCode(reply: Reply): number {
  return Number(reply.slice(0, 3));
}

/** Last line of a reply, the one carrying the final status. */
export function lastLine(reply: Reply): string {
  return reply.slice(reply.lastIndexOf('\n') + 1);
}

/**
 * RFC 5321 4.5.2 transparency: a line starting with '.' gets a second '.'. A line starts after LF (so after CRLF
 * and a bare LF) and, with `afterBareCr`, after a bare CR too (our engine's rule; see DataOptions.afterBareCr).
 */
export function dotStuff(payload: string | Buffer, opts: { afterBareCr?: boolean } = {}): Buffer {
  const buf = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  const out: number[] = [];
  let atLineStart = true;
  for (const b of buf) {
    if (atLineStart && b === 0x2e) out.push(0x2e);
    out.push(b);
    // A CR followed by LF is no line start yet, but then the next byte is the LF, which makes one anyway.
    atLineStart = b === 0x0a || (opts.afterBareCr === true && b === 0x0d);
  }
  return Buffer.from(out);
}

export class SmtpSession {
  /** The 220 (or 421/554) greeting read by connect(). */
  greeting: Reply = '';
  /** Every reply in order, greeting first, for debugging a failed assertion. */
  readonly transcript: Reply[] = [];

  private socket: Socket | TLSSocket;
  private buffered = '';
  private pendingLines: string[] = [];
  private readonly replies: Reply[] = [];
  private waiter: { resolve: (r: Reply) => void; reject: (e: Error) => void } | undefined;
  private closedError: Error | undefined;
  private readonly timeoutMs: number;

  private constructor(socket: Socket, timeoutMs: number) {
    this.socket = socket;
    this.timeoutMs = timeoutMs;
    this.attach(socket);
  }

  /** Connects to host:port and reads the greeting (whatever its code: a 421/554 greeting is a valid test result). */
  static async connect(port: number, opts: SmtpSessionOptions = {}): Promise<SmtpSession> {
    const host = opts.host ?? '127.0.0.1';
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const socket = netConnect({ host, port });
    const session = new SmtpSession(socket, timeoutMs);
    try {
      session.greeting = await session.read('greeting');
    } catch (e) {
      session.close();
      throw e;
    }
    return session;
  }

  /** True once the server (or close()) ended the connection. */
  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Sends one command line (CRLF appended) and returns its complete reply. */
  async cmd(line: string): Promise<Reply> {
    this.write(line + '\r\n');
    return this.read(line);
  }

  /** Writes bytes exactly as given, without waiting: for pipelining, bare-LF or broken-client tests. Pair with read(). */
  send(raw: string | Buffer): void {
    this.write(raw);
  }

  /** Waits for the next complete reply. */
  read(what = 'reply'): Promise<Reply> {
    const next = this.replies.shift();
    if (next !== undefined) return Promise.resolve(next);
    if (this.closedError) return Promise.reject(new Error(`waiting for ${what}: ${this.closedError.message}`));
    if (this.waiter) return Promise.reject(new Error('read() called while another read is pending'));
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no complete reply to ${what} within ${this.timeoutMs} ms (partial: ${JSON.stringify(this.buffered)})`));
      }, this.timeoutMs);
      this.waiter = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(new Error(`waiting for ${what}: ${e.message}`));
        },
      };
    });
  }

  /**
   * Sends DATA, then (on 354) the payload and the end-of-data marker, and returns the final reply.
   * The marker is '.\r\n' when the payload already ends in CRLF, else '\r\n.\r\n', so the message
   * is never given an extra empty line. If DATA itself is refused, that reply is returned and the
   * payload is not sent.
   */
  async data(payload: string | Buffer, opts: DataOptions = {}): Promise<Reply> {
    const go = await this.cmd('DATA');
    if (replyCode(go) !== 354) return go;
    let buf = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
    if (opts.dotStuff) buf = dotStuff(buf, { afterBareCr: opts.afterBareCr === true });
    const endsWithCrlf = buf.length >= 2 && buf[buf.length - 2] === 0x0d && buf[buf.length - 1] === 0x0a;
    this.write(buf);
    this.write(endsWithCrlf ? '.\r\n' : '\r\n.\r\n');
    return this.read('end of DATA');
  }

  /** STARTTLS and the TLS handshake; returns the 220 reply, or the refusal without upgrading. Self-signed certs accepted by default. */
  async startTls(options: ConnectionOptions = {}): Promise<Reply> {
    const reply = await this.cmd('STARTTLS');
    if (replyCode(reply) !== 220) return reply;
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const secure = tlsConnect({ socket: plain, rejectUnauthorized: false, ...options });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`TLS handshake did not finish within ${this.timeoutMs} ms`)), this.timeoutMs);
      secure.once('secureConnect', () => {
        clearTimeout(timer);
        resolve();
      });
      secure.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    this.socket = secure;
    this.attach(secure);
    return reply;
  }

  /** Sends QUIT and waits for its reply (or the close); never throws, the session is finished either way. */
  async quit(): Promise<Reply | undefined> {
    if (this.closed) return undefined;
    try {
      return await this.cmd('QUIT');
    } catch {
      return undefined;
    } finally {
      this.close();
    }
  }

  /** Drops the connection at once. */
  close(): void {
    this.socket.destroy();
    this.onClosed(new Error('connection closed by client'));
  }

  private write(data: string | Buffer): void {
    if (this.closedError) throw new Error(`cannot send: ${this.closedError.message}`);
    this.socket.write(data);
  }

  private attach(socket: Socket | TLSSocket): void {
    // A decoder per socket so a UTF-8 sequence split across packets is not mangled.
    const decoder = new StringDecoder('utf8');
    socket.on('data', (chunk: Buffer) => this.onData(decoder.write(chunk)));
    socket.on('error', (e) => this.onClosed(e));
    socket.on('close', () => this.onClosed(new Error('connection closed by server')));
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).replace(/\r$/, '');
      this.buffered = this.buffered.slice(nl + 1);
      this.pendingLines.push(line);
      // "250-" continues a multi-line reply; "250 " or a bare "250" ends it (RFC 5321 4.2.1).
      if (/^\d{3}-/.test(line)) continue;
      const reply = this.pendingLines.join('\n');
      this.pendingLines = [];
      this.transcript.push(reply);
      const w = this.waiter;
      if (w) {
        this.waiter = undefined;
        w.resolve(reply);
      } else {
        this.replies.push(reply);
      }
    }
  }

  private onClosed(e: Error): void {
    if (this.closedError) return;
    this.closedError = e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
  }
}

export type DialogStep =
  /** A command line; its reply is collected. */
  | string
  /** Raw bytes written as given (include your own CRLF); a reply is collected unless `reply: false`. */
  | { send: string | Buffer; reply?: boolean }
  /** DATA + payload + end marker; collects the final reply (or DATA's refusal), not the 354. */
  | { data: string | Buffer; dotStuff?: boolean };

/**
 * Runs a whole dialog and returns the replies: the greeting first, then one per step that
 * collects one. Sends QUIT at the end (unless the server already closed). Rejects on the first
 * step whose reply does not arrive within the timeout.
 */
export async function smtpDialog(port: number, steps: DialogStep[], opts: SmtpSessionOptions = {}): Promise<Reply[]> {
  const s = await SmtpSession.connect(port, opts);
  const replies: Reply[] = [s.greeting];
  try {
    for (const step of steps) {
      if (typeof step === 'string') {
        replies.push(await s.cmd(step));
      } else if ('data' in step) {
        replies.push(await s.data(step.data, step.dotStuff === undefined ? {} : { dotStuff: step.dotStuff }));
      } else {
        s.send(step.send);
        if (step.reply !== false) replies.push(await s.read(JSON.stringify(String(step.send).slice(0, 40))));
      }
    }
  } finally {
    await s.quit();
  }
  return replies;
}
