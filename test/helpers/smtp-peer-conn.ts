// One connection of the test SMTP peer (test/helpers/smtp-peer.ts): reads commands in order, keeps an MTA's transaction state, answers by script. Shares no code with src/smtp, which it checks.
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { PLAIN_REPLIES, type PeerReplies } from './smtp-peer-replies.js';
import {
  Pending,
  type Answer,
  type Decision,
  type PeerAction,
  type PeerMessage,
  type PeerOptions,
  type PeerPath,
  type PeerSession,
  type SmtpPeer,
} from './smtp-peer-script.js';
import { DataReader, parsePath, unstuff } from './smtp-peer-wire.js';

const toAction = (d: Exclude<Decision, undefined>): PeerAction => (d === null ? {} : typeof d === 'string' ? { reply: d } : d);
const b64 = (s: string): string => Buffer.from(s, 'base64').toString('utf8');

/** One client connection: reads commands in order, one at a time, so a held reply holds everything behind it. */
export class Conn implements PeerSession {
  readonly lines: Buffer[] = [];
  readonly commands: string[] = [];
  readonly messages: Buffer[] = [];
  secure: boolean;
  user: string | null = null;
  helo: string | null = null;
  tx: PeerSession['tx'] = null;
  overlapped = 0;
  partialData = 0;
  sock: Socket;
  readonly closed: Promise<void>;

  private readonly r: PeerReplies;
  private readonly name: string;
  private buf: Buffer = Buffer.alloc(0);
  private mode: 'command' | 'data' | 'bdat' | 'closed' = 'command';
  /** A promise answer (or the greeting, or a TLS handshake) is pending: input waits. */
  private busy = true;
  private reader: DataReader | null = null;
  private received = 0;
  private bdat: { left: number; last: boolean; chunks: Buffer[] } | null = null;
  private authStep: ((line: string) => string) | null = null;
  private heldBack: string[] = [];
  /** Bytes received so far, and how many of them had arrived when the last reply was written. */
  private receivedTotal = 0;
  private repliedAt = 0;
  private readonly onData = (chunk: Buffer): void => {
    this.receivedTotal += chunk.length;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    this.pump();
  };

  constructor(
    private readonly peer: SmtpPeer,
    private readonly o: PeerOptions,
    readonly index: number,
    sock: Socket,
  ) {
    this.sock = sock;
    this.secure = sock instanceof TLSSocket;
    this.r = { ...PLAIN_REPLIES, ...o.replies };
    this.name = o.name ?? 'peer.test';
    let resolveClosed!: () => void;
    this.closed = new Promise<void>((r) => (resolveClosed = r));
    // A relay SIGKILLed mid-transfer resets the socket: that is a test case, never an uncaught error here.
    sock.on('error', () => {});
    sock.on('data', this.onData);
    sock.on('close', () => {
      peer.closedConnections++;
      if (this.mode === 'data' || this.mode === 'bdat') peer.partial++;
      this.mode = 'closed';
      resolveClosed();
    });
    this.settle(peer.script.greeting?.(this), (d) => {
      this.reply(d !== undefined ? d : o.greeting !== undefined ? o.greeting : this.r.greeting(this.name));
      this.busy = false;
    });
  }

  write(text: string | Buffer): void {
    if (!this.sock.destroyed) this.sock.write(text);
  }

  private get alive(): boolean {
    return !this.sock.destroyed && this.sock.writable;
  }

  private pump(): void {
    while (!this.busy && this.mode !== 'closed' && this.buf.length > 0) {
      if (this.mode === 'data') this.readData();
      else if (this.mode === 'bdat') this.readChunk();
      else {
        const nl = this.buf.indexOf(0x0a);
        if (nl < 0) return;
        const end = nl > 0 && this.buf[nl - 1] === 0x0d ? nl - 1 : nl;
        const line = Buffer.from(this.buf.subarray(0, end));
        this.buf = this.buf.subarray(nl + 1);
        this.onLine(line, this.receivedTotal - this.buf.length);
      }
    }
  }

  /** Runs `apply` on the decision now, or once a promise settles (input waiting meanwhile). */
  private settle(answer: Answer, apply: (d: Decision) => void): void {
    if (!(answer instanceof Promise) && !(answer instanceof Pending)) return apply(answer);
    this.busy = true;
    const go = (d: Decision): void => {
      this.busy = false;
      apply(d);
      this.pump();
    };
    if (answer instanceof Pending) answer.onGiven(go);
    else answer.then(go, () => this.sock.destroy());
  }

  /** Writes a reply (unless held back for the next one), then closes if asked to or after a 421. */
  private emit(a: PeerAction): boolean {
    const alive = this.alive;
    if (a.reply !== undefined) {
      this.heldBack.push(a.reply + '\r\n');
      if (!a.withNext) {
        this.write(this.heldBack.splice(0).join(''));
        this.repliedAt = this.receivedTotal;
      }
    }
    const close = a.close ?? (a.reply?.startsWith('421') ? 'end' : undefined);
    if (close) {
      // Replies held back for this one still go out before the connection ends.
      if (this.heldBack.length) this.write(this.heldBack.splice(0).join(''));
      this.mode = 'closed';
      if (close === 'end') this.sock.end();
      else this.sock.destroy();
    }
    return alive;
  }

  /** `end`: where the line ended in the received byte stream. */
  private onLine(raw: Buffer, end: number): void {
    const line = raw.toString('utf8');
    this.lines.push(raw);
    this.commands.push(line);
    // Pipelined: the line was already here when the last reply went out, or a reply before it is still held back.
    if (end <= this.repliedAt || this.heldBack.length > 0) this.overlapped++;
    const step = this.authStep;
    if (step) {
      this.authStep = null;
      return this.reply(step(line));
    }
    const verb = (/^\S*/.exec(line)?.[0] ?? '').toUpperCase();
    this.settle(this.peer.script.command?.(line, this), (d) => (d === undefined ? this.dispatch(verb, line) : this.after(verb, line, toAction(d))));
  }

  private reply(d: Decision): void {
    if (d !== undefined) this.emit(toAction(d));
  }

  /** The default handling: an MTA's checks, then the per-verb hook, then the default reply. */
  private dispatch(verb: string, line: string): void {
    const r = this.r;
    const s = this.peer.script;
    const go = (answer: Answer, dflt: string): void => this.settle(answer, (d) => this.after(verb, line, toAction(d === undefined ? dflt : d)));
    const arg = line.slice(verb.length).trim();
    switch (verb) {
      case 'EHLO': {
        if (!arg) return this.after(verb, line, { reply: r.syntax });
        const kw = this.keywords();
        const first = r.ehlo(this.name, this.sock.remoteAddress ?? '');
        return this.after(verb, line, { reply: [first, ...kw].map((k, i, a) => `250${i === a.length - 1 ? ' ' : '-'}${k}`).join('\r\n') });
      }
      case 'HELO':
        return this.after(verb, line, { reply: arg ? r.helo(this.name, this.sock.remoteAddress ?? '') : r.syntax });
      case 'MAIL': {
        if (this.o.requireHelo !== false && !this.helo) return this.after(verb, line, { reply: r.heloFirst });
        if (this.o.authRequired && !this.user) return this.after(verb, line, { reply: r.authRequired });
        if (this.tx && this.o.nestedMail !== 'reset') return this.after(verb, line, { reply: r.nestedMail });
        const p = this.path(line);
        if (!p || !/^MAIL FROM:/i.test(line)) return this.after(verb, line, { reply: r.syntax });
        const limit = this.o.extensions?.size;
        if (limit && typeof p.args['SIZE'] === 'string' && Number(p.args['SIZE']) > limit) return this.after(verb, line, { reply: r.tooBig(limit) });
        return go(s.mail?.(p, this), r.mail);
      }
      case 'RCPT': {
        if (!this.tx) return this.after(verb, line, { reply: r.needMail });
        const p = this.path(line);
        if (!p || !p.address || !/^RCPT TO:/i.test(line)) return this.after(verb, line, { reply: r.syntax });
        return go(s.rcpt?.(p, this), r.rcpt);
      }
      case 'DATA':
        if (!this.tx?.rcpts.length) return this.after(verb, line, { reply: r.needRcpt });
        return go(s.data?.(this), r.data);
      case 'BDAT':
        return this.startChunk(line);
      case 'RSET':
        return this.after(verb, line, { reply: r.rset });
      case 'NOOP':
        return this.after(verb, line, { reply: r.noop });
      case 'QUIT':
        return this.after(verb, line, { reply: r.quit, close: 'end' });
      case 'STARTTLS':
        return this.after(verb, line, { reply: this.o.tls && !this.secure ? r.starttls : r.unknown });
      case 'AUTH':
        return this.after(verb, line, toAction(this.auth(arg)));
      default:
        return this.after(verb, line, { reply: r.unknown });
    }
  }

  /** What the reply actually said decides the state, whoever wrote it (default or script): like a real MTA. */
  private after(verb: string, line: string, a: PeerAction): void {
    // A reply decided after the client left (a slow step) changes nothing: no DATA is started on a dead connection.
    if (this.mode === 'closed') return;
    // The client said goodbye: the connection ends after whatever reply it gets.
    if (verb === 'QUIT' && a.reply !== undefined) a = { close: 'end', ...a };
    const code = a.reply?.slice(0, 3) ?? '';
    const ok = code.startsWith('2');
    if (verb === 'STARTTLS' && code === '220' && this.o.tls && !this.secure) return this.upgrade(a.reply!);
    if ((verb === 'EHLO' || verb === 'HELO') && ok) {
      this.helo = line.slice(5).trim().toLowerCase();
      this.tx = null;
    } else if (verb === 'RSET' && ok) this.tx = null;
    else if (verb === 'MAIL' && ok) this.tx = { from: this.path(line) ?? { address: '', args: {}, line }, rcpts: [] };
    else if (verb === 'RCPT' && ok && this.tx) this.tx.rcpts.push(this.path(line) ?? { address: '', args: {}, line });
    else if (verb === 'DATA' && code === '354') {
      this.peer.dataStarted++;
      this.mode = 'data';
      this.reader = new DataReader();
      this.received = 0;
    }
    this.emit(a);
  }

  private path(line: string): PeerPath | null {
    const p = parsePath(line);
    return p.address === null ? null : { address: p.address, args: p.args, line };
  }

  private keywords(): string[] {
    if (this.o.ehlo) return this.o.ehlo(this);
    const x = this.o.extensions ?? {};
    const kw: string[] = [];
    if (x.pipelining !== false) kw.push('PIPELINING');
    if (x.eightBitMime !== false) kw.push('8BITMIME');
    if (x.smtpUtf8 !== false) kw.push('SMTPUTF8');
    if (x.enhancedStatusCodes !== false) kw.push('ENHANCEDSTATUSCODES');
    if (x.dsn !== false) kw.push('DSN');
    if (x.chunking) kw.push('CHUNKING');
    if (this.o.auth && !this.user) kw.push('AUTH PLAIN LOGIN');
    if (this.o.tls && !this.secure) kw.push('STARTTLS');
    if (x.size) kw.push(`SIZE ${x.size}`);
    return kw;
  }

  private auth(arg: string): string {
    const r = this.r;
    const [mech, initial] = arg.split(/\s+/);
    if (!this.o.auth) return r.unknown;
    const check = (user: string, pass: string): string => {
      const ok = user === this.o.auth?.user && pass === this.o.auth.pass;
      this.peer.auths.push({ user, ok });
      if (ok) this.user = user;
      return ok ? r.authOk : r.authFailed;
    };
    const plain = (token: string): string => {
      if (token === '*') return r.authAborted;
      const [, user = '', pass = ''] = b64(token).split('\0');
      return check(user, pass);
    };
    const password = (user: string) => (line: string) => (line === '*' ? r.authAborted : check(user, b64(line)));
    switch (mech?.toUpperCase()) {
      case 'PLAIN':
        if (initial) return plain(initial);
        this.authStep = plain;
        return '334 ';
      case 'LOGIN':
        if (initial) {
          this.authStep = password(b64(initial));
          return '334 UGFzc3dvcmQ6';
        }
        this.authStep = (line) => {
          if (line === '*') return r.authAborted;
          this.authStep = password(b64(line));
          return '334 UGFzc3dvcmQ6';
        };
        return '334 VXNlcm5hbWU6';
      default:
        return r.authUnknown;
    }
  }

  /** STARTTLS accepted: the 220 goes out in clear, everything the client pipelined after it is dropped (RFC 3207). */
  private upgrade(reply: string): void {
    this.write(reply + '\r\n' + (this.o.afterStarttls ?? ''));
    this.sock.off('data', this.onData);
    this.buf = Buffer.alloc(0);
    this.busy = true;
    const tls = new TLSSocket(this.sock, { isServer: true, key: this.o.tls!.key, cert: this.o.tls!.cert });
    tls.on('error', () => {});
    tls.once('secure', () => {
      this.secure = true;
      this.sock = tls;
      this.helo = null;
      this.tx = null;
      this.busy = false;
      this.pump();
    });
    tls.on('data', this.onData);
  }

  private readData(): void {
    const chunk = this.buf;
    this.buf = Buffer.alloc(0);
    const reader = this.reader!;
    const rest = reader.feed(chunk);
    this.received += chunk.length;
    this.partialData = rest < 0 ? reader.size : 0;
    const cut = this.peer.script.dataBytes?.(this.received, this, rest >= 0);
    if (cut !== undefined) {
      // The script ends the transaction inside DATA: no final dot, nothing of it is kept.
      this.peer.partial++;
      this.endTransaction();
      return this.settle(cut, (d) => this.reply(d ?? null));
    }
    if (rest < 0) return;
    this.buf = chunk.subarray(rest);
    this.finish(reader.raw(), true);
  }

  private endTransaction(): void {
    this.mode = this.mode === 'closed' ? 'closed' : 'command';
    this.reader = null;
    this.bdat = null;
    this.partialData = 0;
    this.tx = null;
  }

  /** A final dot (or BDAT LAST): build the message, ask the script, then accept or refuse it by what was said. */
  private finish(raw: Buffer, stuffed: boolean): void {
    // A script may have answered 354 without a recipient (a rogue server): the message then has an empty envelope.
    const tx = this.tx ?? { from: { address: '', args: {}, line: '' }, rcpts: [] };
    this.endTransaction();
    this.messages.push(raw);
    this.peer.dots++;
    const data = stuffed ? unstuff(raw) : raw;
    const msg: PeerMessage = {
      session: this.index,
      from: tx.from.address,
      mailArgs: tx.from.args,
      to: tx.rcpts,
      raw,
      data,
      sha256: createHash('sha256').update(data).digest('hex'),
      size: data.length,
      secure: this.secure,
      user: this.user,
      helo: this.helo,
      acknowledged: false,
    };
    const limit = this.o.extensions?.size;
    const answer = limit && data.length > limit ? this.r.tooBig(limit) : this.peer.script.message?.(msg, this);
    this.settle(answer, (d) => {
      const a = toAction(d === undefined ? this.r.queued(this.peer.messages.length + 1) : d);
      const accept = a.accept ?? a.reply?.startsWith('2') ?? false;
      if (accept) this.peer.messages.push(msg);
      const alive = this.emit(a);
      msg.acknowledged = accept && alive && a.reply !== undefined;
      if (accept) this.peer.script.accepted?.(msg, this);
    });
  }

  /** BDAT <size> [LAST] (RFC 3030): the chunk follows the command line at once; the reply comes after it. */
  private startChunk(line: string): void {
    const m = /^BDAT (\d+)( LAST)?$/i.exec(line);
    if (!this.o.extensions?.chunking || !m) return this.after('BDAT', line, { reply: m ? this.r.unknown : this.r.syntax });
    if (!this.tx?.rcpts.length) return this.after('BDAT', line, { reply: this.r.needRcpt });
    const chunks = this.bdat?.chunks ?? [];
    this.bdat = { left: Number(m[1]), last: !!m[2], chunks };
    this.mode = 'bdat';
    if (this.bdat.left === 0) this.readChunk();
  }

  private readChunk(): void {
    const b = this.bdat!;
    const take = this.buf.subarray(0, b.left);
    this.buf = this.buf.subarray(take.length);
    b.chunks.push(take);
    b.left -= take.length;
    if (b.left > 0) return;
    this.mode = 'command';
    const size = b.chunks.reduce((n, c) => n + c.length, 0);
    if (b.last) return this.finish(Buffer.concat(b.chunks), false);
    this.emit({ reply: this.r.bdat(size) });
  }
}
