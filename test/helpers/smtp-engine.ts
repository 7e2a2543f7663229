// Test harness for the SMTP engine: starts an SmtpServer on 127.0.0.1 port 0 with recording handlers, plus a raw line client (the test SMTP peer's) for PROXY headers and STARTTLS injection.
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
import { PeerClient } from './smtp-peer-client.js';

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
  // The engine takes these from the config schema in the relay; the tests spell out the relay's defaults.
  greetingDelayMs: 0,
  sessionTimeoutMs: 30 * 60_000,
  minBytesPerSecond: 256,
  bareLineEndings: 'accept',
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
 * A bare line client (the test SMTP peer's client, reading latin1): writes raw bytes (a PROXY header, pipelined
 * STARTTLS injection) and reads complete replies. Every wait is bounded.
 */
export class RawClient {
  private constructor(private readonly c: PeerClient) {}

  static async connect(port: number, preamble?: Buffer | string): Promise<RawClient> {
    return new RawClient(await PeerClient.open(port, { encoding: 'latin1', ...(preamble !== undefined ? { preamble } : {}) }));
  }

  write(data: string | Buffer): void {
    this.c.write(data);
  }

  /** The next complete (possibly multi-line) reply; null when the server closed first or nothing came in `ms`. */
  read(ms = 5000): Promise<string | null> {
    return this.c.next(ms);
  }

  /** Whatever arrived and was not read as a reply. */
  get pending(): string {
    return this.c.pending;
  }

  get closed(): boolean {
    return this.c.closed;
  }

  /** True once the server closed the connection (within `ms`). */
  waitClosed(ms = 5000): Promise<boolean> {
    return this.c.waitClosed(ms);
  }

  /** TLS handshake over the current connection (after the server's 220). */
  upgrade(): Promise<void> {
    return this.c.startTls({ rejectUnauthorized: false }, 5000);
  }

  close(): void {
    this.c.destroy();
  }
}
