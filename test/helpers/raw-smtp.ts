// The SMTP client of tests that assert exact reply lines (over the test SMTP peer's client, smtp-peer-client.ts); every wait has a timeout so a test can fail but never hang.
import type { ConnectionOptions } from 'node:tls';
import { PeerClient } from './smtp-peer-client.js';
import { dotStuff } from './smtp-peer-wire.js';

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

export { dotStuff };

export class SmtpSession {
  /** The 220 (or 421/554) greeting read by connect(). */
  greeting: Reply = '';
  /** Every reply read, in order, greeting first, for debugging a failed assertion. */
  readonly transcript: Reply[] = [];

  private reading = false;

  private constructor(
    private readonly client: PeerClient,
    private readonly timeoutMs: number,
  ) {}

  /** Connects to host:port and reads the greeting (whatever its code: a 421/554 greeting is a valid test result). */
  static async connect(port: number, opts: SmtpSessionOptions = {}): Promise<SmtpSession> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const client = await PeerClient.open(port, { ...(opts.host ? { host: opts.host } : {}), encoding: 'utf8' }).catch((e: unknown) => {
      throw new Error(`waiting for greeting: ${e instanceof Error ? e.message : String(e)}`);
    });
    const session = new SmtpSession(client, timeoutMs);
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
    return this.client.closed;
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
  async read(what = 'reply'): Promise<Reply> {
    if (this.reading) throw new Error('read() called while another read is pending');
    this.reading = true;
    let reply: Reply | null;
    try {
      reply = await this.client.next(this.timeoutMs);
    } finally {
      this.reading = false;
    }
    if (reply === null) {
      const gone = this.client.closedError;
      if (gone) throw new Error(`waiting for ${what}: ${gone.message}`);
      throw new Error(`no complete reply to ${what} within ${this.timeoutMs} ms (partial: ${JSON.stringify(this.client.pending)})`);
    }
    this.transcript.push(reply);
    return reply;
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
    await this.client.startTls({ rejectUnauthorized: false, ...options }, this.timeoutMs);
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
    this.client.destroy();
  }

  private write(data: string | Buffer): void {
    const gone = this.client.closedError;
    if (gone) throw new Error(`cannot send: ${gone.message}`);
    this.client.write(data);
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
