// The one scriptable SMTP peer of the tests: every fake next hop is this server on raw node:net/node:tls sockets. Written apart from src/smtp on purpose (it is what checks our engine): records every command line and message byte for byte, keeps transaction state like an MTA, answers by script.
import { createHash } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, TLSSocket } from 'node:tls';
import { PLAIN_REPLIES, type PeerReplies } from './smtp-peer-replies.js';
import { DataReader, parsePath, unstuff, type PathArgs } from './smtp-peer-wire.js';

export { mtaReplies, mtaReply, PLAIN_REPLIES, type PeerReplies } from './smtp-peer-replies.js';
export { dotStuff, unstuff, type PathArgs } from './smtp-peer-wire.js';

export interface PeerAction {
  /** Reply line(s) to write, CRLF added; lines of a multi-line reply joined by CRLF. No reply when absent. */
  reply?: string;
  /** Keep this reply back and send it in one write with the next one (a server batching pipelined replies). */
  withNext?: boolean;
  /** After the reply: 'end' closes the connection, 'destroy' resets it. A 421 reply always closes. */
  close?: 'end' | 'destroy';
  /** At the final dot: whether the message counts as accepted. By default: when the reply is a 2xx. */
  accept?: boolean;
}

/** A reply (string), no reply at all (null), the default handling (undefined) or an action. */
export type Decision = string | null | undefined | PeerAction;
/** A promise (or a Pending) holds the reply and everything the client sends after the command until it settles. */
export type Answer = Decision | Promise<Decision> | Pending;

export interface PeerPath {
  /** Address between the angle brackets ('' for the null sender), UTF-8 decoded. */
  address: string;
  args: PathArgs;
  line: string;
}

export interface PeerMessage {
  /** Index of the connection in peer.sessions. */
  session: number;
  from: string;
  mailArgs: PathArgs;
  to: PeerPath[];
  /** As on the wire: dot-stuffed, with its last CRLF, without the final ".\r\n". */
  raw: Buffer;
  /** The message: dot-stuffing undone. */
  data: Buffer;
  sha256: string;
  size: number;
  secure: boolean;
  user: string | null;
  helo: string | null;
  /** True once the accepting reply went to a client still connected (false for a dropped or late reply). */
  acknowledged: boolean;
}

export interface PeerSession {
  readonly index: number;
  /** Every line the client sent outside DATA, byte for byte without its CRLF (AUTH exchanges included). */
  readonly lines: Buffer[];
  /** The same lines, UTF-8 decoded. */
  readonly commands: string[];
  /** Every message that reached its final dot, as on the wire (see PeerMessage.raw), accepted or not. */
  readonly messages: Buffer[];
  secure: boolean;
  user: string | null;
  /** Name given in EHLO/HELO; reset by STARTTLS. */
  helo: string | null;
  /** The open transaction: MAIL accepted, until RSET, EHLO, STARTTLS or the reply to its final dot. */
  tx: { from: PeerPath; rcpts: PeerPath[] } | null;
  /** Commands that came while an earlier reply was still unsent (the client pipelined). */
  overlapped: number;
  /** Bytes of the current DATA received without a terminator yet (0 outside DATA). */
  partialData: number;
  /** The current socket (a TLSSocket after STARTTLS). */
  sock: Socket;
  /** Writes raw bytes to the client now (unsolicited replies, garbage). */
  write(text: string | Buffer): void;
  readonly closed: Promise<void>;
}

export interface PeerScript {
  /** The greeting; a promise delays it (commands wait). */
  greeting?: (s: PeerSession) => Answer;
  /** Every command line before the default handling (checks, state, the per-verb hooks below). */
  command?: (line: string, s: PeerSession) => Answer;
  mail?: (from: PeerPath, s: PeerSession) => Answer;
  rcpt?: (rcpt: PeerPath, s: PeerSession) => Answer;
  /** The DATA command (after the recipients check). */
  data?: (s: PeerSession) => Answer;
  /**
   * Each chunk read in DATA, before the message is finished: `received` counts every byte since the 354 and `ends`
   * says the terminator is among them. Anything but undefined cuts the message short (it never gets a dot).
   */
  dataBytes?: (received: number, s: PeerSession, ends: boolean) => Answer;
  /** The final dot. */
  message?: (msg: PeerMessage, s: PeerSession) => Answer;
  /** Called once a message is accepted (after peer.messages has it). */
  accepted?: (msg: PeerMessage, s: PeerSession) => void;
}

export interface PeerExtensions {
  pipelining?: boolean;
  eightBitMime?: boolean;
  smtpUtf8?: boolean;
  enhancedStatusCodes?: boolean;
  dsn?: boolean;
  /** BDAT (RFC 3030); off unless asked for. */
  chunking?: boolean;
  /** SIZE with this limit: MAIL declaring more, or a longer message, gets the tooBig reply. */
  size?: number;
}

export interface PeerOptions {
  /** Host name in the default greeting and EHLO reply. */
  name?: string;
  /** The greeting line instead of the default one; null: never greet (commands are still answered). */
  greeting?: string | null;
  replies?: Partial<PeerReplies>;
  /** EHLO keywords; default PIPELINING 8BITMIME SMTPUTF8 ENHANCEDSTATUSCODES DSN, plus AUTH, STARTTLS and SIZE when set. */
  extensions?: PeerExtensions;
  /** The EHLO keywords, replacing what `extensions` would give. */
  ehlo?: (s: PeerSession) => string[];
  /** Certificate for STARTTLS (or for TLS from the first byte with `implicitTls`). */
  tls?: { key: string | Buffer; cert: string | Buffer };
  implicitTls?: boolean;
  /** Written right after the 220 to STARTTLS, in the same write (an injection attempt). */
  afterStarttls?: string;
  /** AUTH PLAIN and LOGIN are offered and checked against these credentials (in clear too: loopback only). */
  auth?: { user: string; pass: string };
  /** MAIL before a successful AUTH is refused. */
  authRequired?: boolean;
  /** MAIL before EHLO/HELO is refused, like an MTA (default true). */
  requireHelo?: boolean;
  /** MAIL inside an open transaction: 'refuse' (503, like Postfix; the default) or 'reset' (a lenient server). */
  nestedMail?: 'refuse' | 'reset';
  script?: PeerScript;
}

export interface SmtpPeer {
  port: number;
  /** Mutable: tests switch behaviours between messages. */
  script: PeerScript;
  sessions: PeerSession[];
  /** Accepted messages, in order. */
  messages: PeerMessage[];
  /** Every AUTH attempt: user name and whether it was accepted (never the password). */
  auths: Array<{ user: string; ok: boolean }>;
  connections: number;
  closedConnections: number;
  /** DATA commands answered with 354. */
  dataStarted: number;
  /** Final dots read. */
  dots: number;
  /** Transactions that ended inside DATA without a final dot (connection gone, or cut short by the script). */
  partial: number;
  /** Command lines over all connections that start with `prefix` (a verb, or more), case-insensitively. */
  count(prefix: string): number;
  /** Ends every open connection and stops listening. */
  close(): Promise<void>;
}

/** A reply after `ms` (a slow server); undefined for the default one. */
export function later(ms: number, decision?: Decision): Promise<Decision> {
  return new Promise((resolve) => setTimeout(() => resolve(decision), ms));
}

/** A decision given later, and applied the moment it is given (not a turn later, as a promise's would be). */
export class Pending {
  private given: { d: Decision } | null = null;
  private apply: ((d: Decision) => void) | null = null;
  give(d: Decision): void {
    if (this.given) return;
    this.given = { d };
    this.apply?.(d);
  }
  onGiven(apply: (d: Decision) => void): void {
    if (this.given) apply(this.given.d);
    else this.apply = apply;
  }
}

/**
 * Replies held until release(): return `hold.until(...)` from a hook, a next hop stalling at that step. By the time
 * release() returns, every held decision has been applied (a held message is committed, its reply queued).
 */
export class Hold {
  private readonly waiting: Array<() => void> = [];
  get held(): number {
    return this.waiting.length;
  }
  /** Gives `decide()` once released; decide runs at release time (undefined: the default reply). */
  until(decide: () => Decision = () => undefined): Pending {
    const p = new Pending();
    this.waiting.push(() => p.give(decide()));
    return p;
  }
  release(): void {
    for (const go of this.waiting.splice(0)) go();
  }
}

export async function startSmtpPeer(o: PeerOptions = {}): Promise<SmtpPeer> {
  const sockets = new Set<Socket>();
  const peer: SmtpPeer = {
    port: 0,
    script: o.script ?? {},
    sessions: [],
    messages: [],
    auths: [],
    connections: 0,
    closedConnections: 0,
    dataStarted: 0,
    dots: 0,
    partial: 0,
    count: (prefix) => peer.sessions.reduce((n, s) => n + s.commands.filter((l) => l.toUpperCase().startsWith(prefix.toUpperCase())).length, 0),
    close: async () => {},
  };
  const onConnection = (sock: Socket): void => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    peer.connections++;
    peer.sessions.push(new Conn(peer, o, peer.sessions.length, sock));
  };
  const server: Server = o.implicitTls && o.tls ? createTlsServer({ key: o.tls.key, cert: o.tls.cert }, onConnection) : createServer(onConnection);
  // A client failing its TLS handshake is a test case, not an error of the peer.
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  peer.port = (server.address() as AddressInfo).port;
  peer.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return peer;
}

const toAction = (d: Exclude<Decision, undefined>): PeerAction => (d === null ? {} : typeof d === 'string' ? { reply: d } : d);
const b64 = (s: string): string => Buffer.from(s, 'base64').toString('utf8');

/** One client connection: reads commands in order, one at a time, so a held reply holds everything behind it. */
class Conn implements PeerSession {
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
