// A minimal SMTP client over a raw socket for the benchmark: one session, sequential transactions, and a precise timer from the end-of-data write to the reply.
import { connect, type Socket } from 'node:net';
import { createReadStream } from 'node:fs';
import { once } from 'node:events';

export interface Reply {
  code: number;
  text: string;
}

export interface SendResult {
  reply: Reply;
  /** Milliseconds from writing the final "." line (together with the last body bytes) to the complete reply. */
  dotMs: number;
  /** Milliseconds for the whole transaction, MAIL FROM to the DATA reply. */
  totalMs: number;
}

/**
 * One SMTP session. Replies are read strictly in order (no pipelining), multi-line replies joined.
 * Every wait is bounded by `timeoutMs`; a timeout destroys the socket and rejects.
 */
export class SmtpSession {
  private buf = '';
  private waiting: { resolve: (r: Reply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  private lines: string[] = [];
  private failed: Error | null = null;

  private constructor(
    private readonly socket: Socket,
    private readonly timeoutMs: number,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (b: Buffer) => this.onData(b));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  static async open(host: string, port: number, opts: { timeoutMs?: number; helo?: string } = {}): Promise<SmtpSession> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const socket = connect({ host, port });
    const s = new SmtpSession(socket, timeoutMs);
    const greeting = await s.read();
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.code} ${greeting.text}`);
    const ehlo = await s.command(`EHLO ${opts.helo ?? 'bench.example.test'}`);
    if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.code} ${ehlo.text}`);
    return s;
  }

  private fail(e: Error): void {
    if (!this.failed) this.failed = e;
    const w = this.waiting;
    if (w) {
      this.waiting = null;
      clearTimeout(w.timer);
      w.reject(e);
    }
  }

  private onData(b: Buffer): void {
    this.buf += b.toString('latin1');
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      this.lines.push(line);
      // "250-..." continues a reply, "250 ..." (or a bare code) ends it.
      if (line.length < 4 || line[3] !== '-') {
        const code = Number(line.slice(0, 3));
        const text = this.lines.map((l) => l.slice(4)).join('\n');
        this.lines = [];
        const w = this.waiting;
        if (w) {
          this.waiting = null;
          clearTimeout(w.timer);
          w.resolve({ code, text });
        } else {
          this.fail(new Error(`unexpected reply: ${line}`));
        }
      }
    }
  }

  /** Waits for the next complete reply. */
  read(): Promise<Reply> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        this.socket.destroy();
        reject(new Error(`no reply within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting = { resolve, reject, timer };
    });
  }

  async command(line: string): Promise<Reply> {
    const p = this.read();
    this.socket.write(`${line}\r\n`);
    return p;
  }

  /**
   * One transaction with an in-memory message (CRLF line ends, already dot-safe: no line starts with ".").
   * The last body bytes and the final "." go out in one write; the timer starts just before it.
   */
  async send(from: string, to: string[], message: Buffer): Promise<SendResult> {
    const t0 = performance.now();
    await this.envelope(from, to);
    const tail = message.subarray(Math.max(0, message.length - 4096));
    const head = message.subarray(0, message.length - tail.length);
    if (head.length && !this.socket.write(head)) await once(this.socket, 'drain');
    const end = message.length === 0 || message[message.length - 1] === 0x0a ? '.\r\n' : '\r\n.\r\n';
    const p = this.read();
    const tDot = performance.now();
    this.socket.write(Buffer.concat([tail, Buffer.from(end)]));
    const reply = await p;
    const tEnd = performance.now();
    return { reply, dotMs: tEnd - tDot, totalMs: tEnd - t0 };
  }

  /** One transaction streaming the message from a file (CRLF, dot-safe), with backpressure. */
  async sendFile(from: string, to: string[], path: string): Promise<SendResult> {
    const t0 = performance.now();
    await this.envelope(from, to);
    let last = 0x0a;
    for await (const chunk of createReadStream(path, { highWaterMark: 256 * 1024 })) {
      const b = chunk as Buffer;
      if (b.length) last = b[b.length - 1]!;
      if (!this.socket.write(b)) await once(this.socket, 'drain');
      if (this.failed) throw this.failed;
    }
    const p = this.read();
    const tDot = performance.now();
    this.socket.write(last === 0x0a ? '.\r\n' : '\r\n.\r\n');
    const reply = await p;
    const tEnd = performance.now();
    return { reply, dotMs: tEnd - tDot, totalMs: tEnd - t0 };
  }

  private async envelope(from: string, to: string[]): Promise<void> {
    const mail = await this.command(`MAIL FROM:<${from}>`);
    if (mail.code !== 250) throw new Error(`MAIL FROM: ${mail.code} ${mail.text}`);
    for (const r of to) {
      const rcpt = await this.command(`RCPT TO:<${r}>`);
      if (rcpt.code !== 250 && rcpt.code !== 251) throw new Error(`RCPT TO: ${rcpt.code} ${rcpt.text}`);
    }
    const data = await this.command('DATA');
    if (data.code !== 354) throw new Error(`DATA: ${data.code} ${data.text}`);
  }

  async quit(): Promise<void> {
    try {
      if (!this.failed) await this.command('QUIT');
    } catch {
      // the server may close first
    } finally {
      this.socket.destroy();
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** The Message-ID header value makeMessage writes for `id`; the relay's "message" log line carries it as messageId. */
export const messageIdOf = (id: string): string => `<${id}@bench.example.test>`;

/** A plain-text message of about `bodyBytes` body bytes (72-character lines, CRLF), dot-safe. */
export function makeMessage(bodyBytes: number, opts: { from: string; to: string; subject: string; id: string }): Buffer {
  const head =
    `From: <${opts.from}>\r\nTo: <${opts.to}>\r\nSubject: ${opts.subject}\r\n` +
    `Date: ${new Date().toUTCString()}\r\nMessage-ID: ${messageIdOf(opts.id)}\r\nMIME-Version: 1.0\r\n` +
    `Content-Type: text/plain; charset=us-ascii\r\n\r\n`;
  const line = 'The quick brown fox jumps over the lazy dog, then files a status report.\r\n';
  const body = line.repeat(Math.max(1, Math.ceil(bodyBytes / line.length)));
  return Buffer.from(head + body.slice(0, Math.max(bodyBytes, line.length)).replace(/[^\n]*$/, ''), 'latin1');
}
