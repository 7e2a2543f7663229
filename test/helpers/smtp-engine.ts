// Test harness for the SMTP engine: starts an SmtpServer on 127.0.0.1 port 0 with recording handlers, plus a raw line client for PROXY headers and STARTTLS injection.
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { Readable } from 'node:stream';
import { pino } from 'pino';
import type { SmtpReply } from '../../src/errors.js';
import {
  SmtpServer,
  type MailFromCommand,
  type RcptToCommand,
  type ResetReason,
  type SmtpHandlers,
  type SmtpServerOptions,
  type SmtpSession,
  type SmtpTransaction,
} from '../../src/smtp/server.js';

export const QUEUED: SmtpReply = { code: 250, enhanced: '2.0.0', text: 'Queued' };

export interface DataCall {
  tx: SmtpTransaction;
  /** Bytes the handler read. */
  message: Buffer;
  /** The error the engine destroyed the stream with, if any. */
  error: (Error & { reply?: SmtpReply }) | null;
}

/** Everything the handlers saw, for assertions. */
export class Recorder {
  readonly connects: Array<Pick<SmtpSession, 'remoteAddress' | 'remotePort' | 'localAddress' | 'localPort' | 'peerAddress' | 'proxied'>> = [];
  readonly mails: Array<{ mail: MailFromCommand; transmissionType: string; user: string | null }> = [];
  readonly rcpts: RcptToCommand[] = [];
  readonly data: DataCall[] = [];
  readonly resets: Array<{ reason: ResetReason; from: string }> = [];
  closes = 0;
}

/** Reads a stream to the end (or its error) without throwing. */
export async function drain(message: Readable): Promise<{ body: Buffer; error: (Error & { reply?: SmtpReply }) | null }> {
  const parts: Buffer[] = [];
  try {
    for await (const c of message) parts.push(c as Buffer);
    return { body: Buffer.concat(parts), error: null };
  } catch (e) {
    return { body: Buffer.concat(parts), error: e as Error & { reply?: SmtpReply } };
  }
}

export interface Engine {
  server: SmtpServer;
  port: number;
  rec: Recorder;
  stop(): Promise<void>;
}

export const baseOptions: SmtpServerOptions = {
  hostname: 'mx.test',
  maxMessageBytes: 10 * 1024 * 1024,
  maxRecipients: 100,
  idleTimeoutMs: 10_000,
  dsn: true,
};

/** A server with recording handlers; `handlers` replace the defaults (which accept everything). */
export async function startEngine(opts: Partial<SmtpServerOptions> = {}, handlers: Partial<SmtpHandlers> = {}): Promise<Engine> {
  const rec = new Recorder();
  const h: SmtpHandlers = {
    connect: (s) => {
      rec.connects.push({
        remoteAddress: s.remoteAddress,
        remotePort: s.remotePort,
        localAddress: s.localAddress,
        localPort: s.localPort,
        peerAddress: s.peerAddress,
        proxied: s.proxied,
      });
    },
    mail: (s, mail) => {
      rec.mails.push({ mail, transmissionType: s.transmissionType, user: s.user });
    },
    rcpt: (_s, rcpt) => {
      rec.rcpts.push(rcpt);
    },
    data: async (_s, tx, message) => {
      const { body, error } = await drain(message);
      rec.data.push({ tx, message: body, error });
      return QUEUED;
    },
    reset: (_s, tx, reason) => {
      rec.resets.push({ reason, from: tx.mail.address });
    },
    close: () => {
      rec.closes++;
    },
    ...handlers,
  };
  const server = new SmtpServer({ ...baseOptions, ...opts }, h, pino({ level: 'silent' }));
  const { port } = await server.listen(0, '127.0.0.1');
  return { server, port, rec, stop: () => server.close(2000) };
}

/** Polls `cond` every 10 ms up to `ms`; false when it never held. */
export async function eventually(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return cond();
}

/**
 * A bare line client: writes raw bytes (a PROXY header, pipelined STARTTLS injection) and reads complete
 * replies. Every wait is bounded.
 */
export class RawClient {
  private buf = '';
  private socket: Socket;
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.attach(socket);
  }

  static connect(port: number, preamble?: Buffer | string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = netConnect({ host: '127.0.0.1', port }, () => {
        if (preamble !== undefined) s.write(preamble);
        resolve(new RawClient(s));
      });
      s.once('error', reject);
    });
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** The next complete (possibly multi-line) reply; null when the server closed first or nothing came in `ms`. */
  async read(ms = 5000): Promise<string | null> {
    const end = Date.now() + ms;
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\n/.exec(this.buf);
      if (m) {
        this.buf = this.buf.slice(m[0].length);
        return m[0].replace(/\r\n/g, '\n').trimEnd();
      }
      const left = end - Date.now();
      if (this.closed || left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Whatever arrived and was not read as a reply. */
  get pending(): string {
    return this.buf;
  }

  /** True once the server closed the connection (within `ms`). */
  async waitClosed(ms = 5000): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return this.closed;
  }

  /** TLS handshake over the current connection (after the server's 220). */
  async upgrade(): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = tlsConnect({ socket: plain, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('TLS handshake timeout')), 5000);
      secure.once('secureConnect', () => {
        clearTimeout(t);
        resolve();
      });
      secure.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
    this.socket = secure;
    this.attach(secure);
  }

  close(): void {
    this.socket.destroy();
  }

  private attach(s: Socket): void {
    s.on('data', (c: Buffer) => {
      this.buf += c.toString('latin1');
      this.notify();
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      this.closed = true;
      this.notify();
    });
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
