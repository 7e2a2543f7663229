// Per-connection byte I/O for the SMTP engine: input buffer and command lines, batched replies, the DATA stream with backpressure, STARTTLS upgrade and the client-time clocks (idle, minimum rate, session cap).
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import { catalogueReply, type SmtpReply, DlpError } from '../errors.js';
import { formatReplyLines } from './command.js';
import type { DataDecoder, DataViolation } from './data-reader.js';
import { DataPhaseError, type ResetReason } from './types.js';
import { attachHandlers, detachHandlers } from '../util/event-handlers.js';

/** Thrown out of every wait once the session is over; carries the reset reason for the open transaction. */
export class SessionEnded extends DlpError {
  readonly errorCode = 'DLP_ERR_SESSION_ENDED' as const;
  constructor(readonly reason: ResetReason) {
    // Made once per session as a signal, never reported with a stack: capturing one cost more than the rest of a
    // connection's teardown in the profile.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`session ended (${reason})`);
    Error.stackTraceLimit = limit;
    this.name = 'SessionEnded';
  }
}

export interface ClockOptions {
  idleTimeoutMs: number;
  sessionTimeoutMs: number;
  /** 0 = off. */
  minBytesPerSecond: number;
  minRateWindowMs: number;
}

export interface Line {
  text: string;
  /** Longer than the limit: its bytes were dropped up to the LF. */
  tooLong: boolean;
  /** Ended in a bare LF, or holds a CR or NUL. */
  badLine: boolean;
  /** Length on the wire including the line ending. */
  bytes: number;
}

const EMPTY = Buffer.alloc(0);
/** Command-phase input beyond this stops reading the socket until the session catches up (pipelining floods). */
const INPUT_CAP = 64 * 1024;
/** Unread replies beyond this mean the client is not reading: stop reading its commands until they drain. */
const OUTPUT_CAP = 256 * 1024;
/** After our FIN a client that never closes is cut off. */
const LINGER_MS = 2000;

const VIOLATION_REPLY: Record<DataViolation, SmtpReply> = {
  size: catalogueReply('SIZE_EXCEEDED'),
  line: catalogueReply('DATA_LINE_TOO_LONG'),
  bare: catalogueReply('BARE_LINE_ENDING'),
};

interface DataPhase {
  decoder: DataDecoder;
  message: Readable;
  /** Nothing more goes into `message` (handler finished, stream destroyed or a limit broken). */
  discard: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class SessionIO {
  socket: Socket;
  /** The session cap passed: the session ends at the next client turn. */
  expired = false;
  /** Resolves when the TCP connection is closed. */
  readonly closed: Promise<void>;

  private inbuf: Buffer = EMPTY;
  private eof = false;
  private out = '';
  private ended: SessionEnded | null = null;
  private wake: (() => void) | null = null;
  private discardingLong = false;
  private inputPaused = false;
  private data: DataPhase | null = null;
  private dataPaused = false;

  // Clocks run only while it is the client's turn: time inside handlers never counts against it.
  private waiting = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private readonly sessionTimer: NodeJS.Timeout;
  private rateTimer: NodeJS.Timeout | null = null;
  private rateSince = 0;
  private rateAccMs = 0;
  private rateBytes = 0;
  private lingerTimer: NodeJS.Timeout | null = null;

  constructor(
    socket: Socket,
    private readonly clocks: ClockOptions,
    /** Logs through the session's logger, which is made only when the level is enabled. */
    private readonly log: (level: 'debug' | 'info', fields: Record<string, unknown>, msg: string) => void,
  ) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    // The TCP socket's close ends the session whatever layer is on top of it.
    socket.once('close', () => this.end(null, 'close'));
    this.attach(socket);
    this.sessionTimer = setTimeout(() => {
      this.expired = true;
      if (this.waiting) this.end(catalogueReply('SESSION_TIMEOUT'), 'timeout');
    }, clocks.sessionTimeoutMs);
  }

  get isEnded(): boolean {
    return this.ended !== null;
  }

  /** Queues a reply; it goes out with the next flush (one write per pipelined batch). */
  reply(r: SmtpReply, enhanced = true): void {
    if (!this.ended) this.out += formatReplyLines(r, enhanced);
  }

  flush(): void {
    if (this.out && !this.ended) {
      this.socket.write(this.out);
      this.out = '';
    }
  }

  /**
   * Ends the session: queued replies and `reply` are written, then our side is closed. Every pending wait
   * rejects with SessionEnded(reason); a running DATA stream is destroyed with `reply` (INTERNAL when the
   * client is simply gone, nobody will see it).
   */
  end(reply: SmtpReply | null, reason: ResetReason): void {
    if (this.ended) return;
    this.ended = new SessionEnded(reason);
    this.setWaiting(false);
    clearTimeout(this.sessionTimer);
    const d = this.data;
    if (d) {
      this.data = null;
      if (!d.message.destroyed) d.message.destroy(new DataPhaseError(reply ?? catalogueReply('INTERNAL'), `DATA phase broken: ${reason}`));
      d.reject(this.ended);
    }
    const s = this.socket;
    if (!s.destroyed && s.writable) s.end(this.out + (reply ? formatReplyLines(reply) : ''));
    else if (!s.destroyed) s.destroy();
    this.out = '';
    this.lingerTimer = setTimeout(() => this.destroy(), LINGER_MS);
    this.lingerTimer.unref();
    this.wakeUp();
  }

  /** Hard stop (shutdown grace over, or a client that does not close after our FIN). */
  destroy(): void {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.end(null, 'close');
    this.socket.destroy();
  }

  /** Next command line. Flushes queued replies before waiting (RFC 2920: reply once the input is drained). */
  async readLine(limit: number): Promise<Line> {
    for (;;) {
      if (this.ended) throw this.ended;
      const line = this.takeLine(limit);
      if (line) return line;
      if (this.eof) {
        this.end(null, 'close');
        throw this.ended!;
      }
      this.flush();
      if (this.socket.writableLength > OUTPUT_CAP) {
        await this.clientTurn(false, (done) => this.socket.once('drain', done), true);
      } else {
        await this.clientTurn(this.inbuf.length > 0 || this.discardingLong);
      }
    }
  }

  /** Raw buffered input (PROXY header, early-talker check); consumes `n` bytes when given. */
  peek(): Buffer {
    return this.inbuf;
  }
  consume(n: number): void {
    this.inbuf = this.inbuf.subarray(n);
  }

  /** Waits (server's turn: no client clocks) for more input or `ms`; true when input arrived. */
  async waitInput(ms: number): Promise<boolean> {
    this.throwIfEnded();
    let arrived = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        this.wake = null;
        clearTimeout(timer);
        arrived = true;
        resolve();
      };
    });
    // A call, not an inline check: the session may have ended while we waited, which TS narrowing cannot see.
    this.throwIfEnded();
    return arrived || this.eof;
  }

  private throwIfEnded(): void {
    if (this.ended) throw this.ended;
  }

  /**
   * Streams the DATA phase into `message` until the terminator. Stops reading the socket while `message` is
   * full; `resumeData` (wired to the stream's read()) starts it again. A broken limit destroys `message`
   * with a DataPhaseError but reading goes on to the end. Rejects with SessionEnded when the session ends.
   */
  receiveData(decoder: DataDecoder, message: Readable): Promise<void> {
    if (this.ended) return Promise.reject(this.ended);
    return new Promise<void>((resolve, reject) => {
      this.data = { decoder, message, discard: false, resolve, reject };
      this.setWaiting(true, true);
      const pending = this.inbuf;
      this.inbuf = EMPTY;
      if (pending.length > 0) this.feedData(pending);
      if (this.data && this.eof) this.end(null, 'close');
    });
  }

  /** message.read() asked for more. */
  resumeData(): void {
    if (!this.data || !this.dataPaused) return;
    this.dataPaused = false;
    this.socket.resume();
    this.setWaiting(true, true);
  }

  /** The data handler is finished: whatever still comes is read to the end and dropped. */
  discardData(): void {
    if (!this.data) return;
    this.data.discard = true;
    this.resumeData();
  }

  /**
   * STARTTLS after the queued 220: the 220 is written in clear first, plaintext pipelined behind STARTTLS is
   * thrown away (CVE-2011-0411: it must never run as if it came over TLS), then the handshake runs on the
   * client's clock.
   */
  async startTls(context: SecureContext): Promise<void> {
    const plain = this.socket;
    const out = this.out;
    this.out = '';
    await new Promise<void>((resolve) => plain.write(out, () => resolve()));
    if (this.ended) throw this.ended;
    this.detach(plain);
    plain.on('error', () => undefined);
    this.inbuf = EMPTY;
    this.discardingLong = false;
    const secure = new TLSSocket(plain, { isServer: true, secureContext: context });
    this.socket = secure;
    this.attach(secure);
    await this.clientTurn(false, (done) => secure.once('secure', done), true);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.rateBytes += chunk.length;
    if (this.waiting) this.idleTimer?.refresh();
    if (this.data) {
      this.feedData(chunk);
      return;
    }
    this.inbuf = this.inbuf.length === 0 ? chunk : Buffer.concat([this.inbuf, chunk]);
    if (this.inbuf.length > INPUT_CAP && !this.inputPaused) {
      this.inputPaused = true;
      this.socket.pause();
    }
    this.wakeUp();
  };

  private readonly onEnd = (): void => {
    this.eof = true;
    if (this.data) this.end(null, 'close');
    this.wakeUp();
  };

  private readonly onError = (e: Error): void => {
    this.log('debug', { err: e.message }, 'socket error');
    this.end(null, 'close');
  };

  private readonly handlers = { data: this.onData, end: this.onEnd, error: this.onError };

  private attach(s: Socket): void {
    attachHandlers(s, this.handlers);
  }

  private detach(s: Socket): void {
    detachHandlers(s, this.handlers);
  }

  private wakeUp(): void {
    const w = this.wake;
    if (w) w();
  }

  /**
   * Waits for the client: the next input (default) or `until` (drain, handshake). Idle and session clocks
   * run meanwhile, the rate clock only when `partial` (a command line is under way).
   */
  private clientTurn(partial: boolean, until?: (done: () => void) => void, onlyUntil = false): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const done = (): void => {
        if (settled) return;
        settled = true;
        this.wake = null;
        this.setWaiting(false);
        if (this.ended) reject(this.ended);
        else resolve();
      };
      // When waiting for something else than input, input must not end the wait (it is only buffered).
      this.wake = onlyUntil ? () => (this.ended ? done() : undefined) : done;
      if (until) until(done);
      this.setWaiting(true, partial);
      if (this.ended) done();
    });
  }

  private takeLine(limit: number): Line | null {
    const lf = this.inbuf.indexOf(0x0a);
    if (lf < 0) {
      // No LF within the limit: the line is too long; drop what we have and keep dropping up to its LF.
      if (this.inbuf.length >= limit) {
        this.discardingLong = true;
        this.inbuf = EMPTY;
        this.resumeInput();
      }
      return null;
    }
    const raw = this.inbuf.subarray(0, lf + 1);
    this.inbuf = this.inbuf.subarray(lf + 1);
    this.resumeInput();
    if (this.discardingLong || lf + 1 > limit) {
      this.discardingLong = false;
      return { text: '', tooLong: true, badLine: false, bytes: lf + 1 };
    }
    const bareLf = lf === 0 || raw[lf - 1] !== 0x0d;
    const content = raw.subarray(0, bareLf ? lf : lf - 1);
    const badLine = bareLf || content.includes(0x0d) || content.includes(0);
    return { text: content.toString('utf8'), tooLong: false, badLine, bytes: lf + 1 };
  }

  private resumeInput(): void {
    if (this.inputPaused && this.inbuf.length < INPUT_CAP / 2) {
      this.inputPaused = false;
      this.socket.resume();
    }
  }

  private feedData(chunk: Buffer): void {
    const d = this.data!;
    const r = d.decoder.write(chunk);
    let full = false;
    if (!d.discard && d.message.destroyed) d.discard = true;
    if (!d.discard) for (const c of r.data) if (!d.message.push(c)) full = true;
    if (d.decoder.violation && !d.discard) {
      d.discard = true;
      d.message.destroy(new DataPhaseError(VIOLATION_REPLY[d.decoder.violation], `DATA limit broken: ${d.decoder.violation}`));
    }
    if (r.ended) {
      this.data = null;
      this.setWaiting(false);
      if (!d.discard) d.message.push(null);
      if (r.rest) this.inbuf = r.rest;
      if (this.dataPaused) {
        this.dataPaused = false;
        this.socket.resume();
      }
      d.resolve();
      return;
    }
    if (full && !d.discard && !this.dataPaused) {
      // Backpressure: the reader is behind, so stop reading the client; that time is not the client's.
      this.dataPaused = true;
      this.socket.pause();
      this.setWaiting(false);
    }
  }

  /** The reply a broken DATA phase gets (null when no limit was broken). */
  static violationReply(v: DataViolation | null): SmtpReply | null {
    return v ? VIOLATION_REPLY[v] : null;
  }

  private setWaiting(on: boolean, partial = false): void {
    if (on && !this.ended) {
      if (this.expired) {
        this.end(catalogueReply('SESSION_TIMEOUT'), 'timeout');
        return;
      }
      this.waiting = true;
      if (this.idleTimer) this.idleTimer.refresh();
      else this.idleTimer = setTimeout(() => this.end(catalogueReply('IDLE_TIMEOUT'), 'timeout'), this.clocks.idleTimeoutMs);
      if (partial && this.clocks.minBytesPerSecond > 0) this.startRate();
      else this.stopRate();
      return;
    }
    this.waiting = false;
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    this.stopRate();
  }

  private startRate(): void {
    if (this.rateTimer) return;
    this.rateSince = Date.now();
    this.rateTimer = setTimeout(this.onRateWindow, Math.max(0, this.clocks.minRateWindowMs - this.rateAccMs));
  }

  private stopRate(): void {
    if (!this.rateTimer) return;
    clearTimeout(this.rateTimer);
    this.rateTimer = null;
    this.rateAccMs += Date.now() - this.rateSince;
  }

  /** One full window of client time has passed: it must have brought at least rate × window bytes. */
  private readonly onRateWindow = (): void => {
    this.rateTimer = null;
    const required = (this.clocks.minBytesPerSecond * this.clocks.minRateWindowMs) / 1000;
    if (this.rateBytes < required) {
      this.log('info', { bytes: this.rateBytes, windowMs: this.clocks.minRateWindowMs }, 'client below the minimum data rate');
      this.end(catalogueReply('SLOW_CLIENT'), 'timeout');
      return;
    }
    this.rateAccMs = 0;
    this.rateBytes = 0;
    this.startRate();
  };
}
