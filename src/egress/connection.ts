// nodemailer SMTPConnection subclass that relays the client's original per-recipient DSN and MAIL FROM parameters unchanged.
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import type { Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { createRequire } from 'node:module';

/*
 * PRIVATE API WARNING
 * -------------------
 * nodemailer's public SMTPConnection API applies ONE DSN NOTIFY/ORCPT to every recipient and adds
 * SMTPUTF8 only when an address is non-ASCII. A relay must forward what the client sent, per
 * recipient, so this class hooks into underscore-prefixed internals of nodemailer 7.0.13 (pinned
 * exactly in package.json for this reason):
 *   - `_getDsnRcptToArgs()`: called right after the current recipient was pushed onto
 *     `_recipientQueue` while building each `RCPT TO:` line (index.js ~1192 and ~1660-1725);
 *   - `_sendCommand(str)`: every command line goes through it (used to add SMTPUTF8 to MAIL FROM,
 *     to follow the transaction phase, and to detect that the hook above was skipped);
 *   - `_onConnect()`: fixes a socket leak when the connection is cancelled during DNS resolution;
 *   - `_createSendStream(cb)` (index.js ~1207): replaced so the message goes out byte for byte (only
 *     dot-stuffed); it queues `_actionSMTPStream` on `_responseActions` exactly as the original does;
 *   - `_setEnvelope(env, cb)` (index.js ~1042): with PIPELINING, called as is (it builds and sends MAIL
 *     FROM and queues `_actionMAIL` last), then that action is replaced by handlers for MAIL, each RCPT
 *     and DATA sent in the same write; they fill `_envelope.accepted/rejected/rejectedErrors` and use
 *     `_formatError` and `_ehloLines` as `_actionMAIL/_actionRCPT/_actionDATA` (~1644-1760) do;
 *   - fields `_supportedExtensions`, `_envelope` (incl. `rcptQueue`), `_recipientQueue`, `_socket`,
 *     `_destroyed`, `_usingSmtpUtf8`, `_ehloLines`, `_responseActions`.
 * Before upgrading nodemailer, re-read those places. The assertion below fails at import time if a
 * hooked method disappears; test/integration/egress.test.ts checks the pinned version and that the
 * per-recipient parameters reach a real server, and `_sendCommand` turns a skipped hook into a
 * transient delivery error instead of silently dropping NOTIFY/ORCPT.
 */

/** The nodemailer version whose internals this file was written against. */
export const NODEMAILER_PINNED_VERSION = '7.0.13';
/** The nodemailer version actually installed; the relay warns when it differs from the pinned one. */
export const NODEMAILER_VERSION: string = (createRequire(import.meta.url)('nodemailer/package.json') as { version: string }).version;

/** Where in the session a connection is; the relay reports failures with this. */
export type SmtpPhase = 'connect' | 'tls' | 'auth' | 'mail' | 'rcpt' | 'data';

/** DSN parameters of one recipient as the original client sent them (xtext already decoded). */
export interface RcptDsnParams {
  notify?: string[];
  orcpt?: string;
}

/** Extra transaction parameters travelling on the nodemailer envelope object, keyed by symbols so nodemailer never sees them. */
const RCPT_PARAMS = Symbol('dlp-relay.rcptParams');
const SMTPUTF8 = Symbol('dlp-relay.smtpUtf8');

interface RelayEnvelopeFields {
  [RCPT_PARAMS]?: Map<string, RcptDsnParams[]>;
  [SMTPUTF8]?: boolean;
}

type NodemailerEnvelope = SMTPConnection.Envelope & RelayEnvelopeFields;

/** How nodemailer's _setEnvelope reports: an error, or the recipients the next hop accepted and refused. */
type EnvelopeCallback = (err: Error | null, info?: { accepted: string[]; rejected: string[]; rejectedErrors?: Error[]; ehlo?: string[] }) => void;

/** The slice of nodemailer 7.0.13 internals we read or call (see the warning above). */
interface Internals {
  _supportedExtensions: string[];
  _envelope: (NodemailerEnvelope & { to: string[]; rcptQueue: string[]; accepted: string[]; rejected: string[]; rejectedErrors: Error[] }) | false;
  _ehloLines?: string[];
  _setEnvelope(envelope: NodemailerEnvelope, callback: EnvelopeCallback): void;
  _formatError(message: string, type: string, response: string | false, command: string): Error & { recipient?: string; rejected?: string[]; rejectedErrors?: Error[] };
  _recipientQueue: string[];
  _socket: Socket | false;
  _destroyed: boolean;
  _usingSmtpUtf8?: boolean;
  _sendCommand(str: string, logStr?: string): void;
  _getDsnRcptToArgs(): string;
  _onConnect(): void;
  _onError(err: Error | string, type: string, data: string | false, command: string): void;
  _responseActions: Array<(str: string) => void>;
  _actionSMTPStream(str: string, callback: (err: Error | null, str?: string) => void): void;
}

const baseProto = SMTPConnection.prototype as unknown as Internals;
for (const name of ['_sendCommand', '_getDsnRcptToArgs', '_onConnect', '_onError', '_setEnvelope', '_createSendStream', '_actionSMTPStream', '_formatError'] as const) {
  if (typeof (baseProto as unknown as Record<string, unknown>)[name] !== 'function') {
    // Fail loudly at startup: without the hook the relay would silently drop NOTIFY/ORCPT.
    throw new Error(`nodemailer SMTPConnection.${name} is missing: src/egress/connection.ts needs review for this nodemailer version`);
  }
}

/** What the relay wants on the wire for one transaction, on top of nodemailer's envelope. */
export interface RelayTransaction {
  from: string;
  to: Array<{ address: string; notify?: string[]; orcpt?: string }>;
  smtpUtf8: boolean;
  use8BitMime: boolean;
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  size?: number;
}

/**
 * xtext (RFC 3461 §4): octets outside "!".."~", "+" and "=" become "+XX". smtp-server decodes xtext to
 * one char per octet, so strings whose chars all fit in a byte are re-encoded octet for octet
 * (latin1) to round-trip exactly; anything wider can only be real Unicode and goes out as UTF-8.
 */
export function encodeXText(value: string): string {
  // eslint-disable-next-line no-control-regex
  const buf = Buffer.from(value, /^[\u0000-\u00ff]*$/.test(value) ? 'latin1' : 'utf8');
  let out = '';
  for (const c of buf) {
    out += c < 0x21 || c > 0x7e || c === 0x2b || c === 0x3d ? '+' + c.toString(16).toUpperCase().padStart(2, '0') : String.fromCharCode(c);
  }
  return out;
}

/** Builds the nodemailer envelope for a transaction, carrying our per-recipient parameters alongside. */
export function toNodemailerEnvelope(tx: RelayTransaction): SMTPConnection.Envelope {
  const params = new Map<string, RcptDsnParams[]>();
  for (const r of tx.to) {
    // nodemailer trims addresses before queueing them, so the lookup key must be trimmed too.
    const key = r.address.trim();
    const list = params.get(key) ?? [];
    // One FIFO per address: a repeated address gets its own parameters in order.
    list.push({ ...(r.notify ? { notify: r.notify } : {}), ...(r.orcpt ? { orcpt: r.orcpt } : {}) });
    params.set(key, list);
  }
  const env: NodemailerEnvelope = {
    from: tx.from,
    to: tx.to.map((r) => r.address),
    use8BitMime: tx.use8BitMime,
    [RCPT_PARAMS]: params,
    [SMTPUTF8]: tx.smtpUtf8,
  };
  if (tx.size !== undefined) env.size = tx.size;
  if (tx.ret || tx.envid) {
    // nodemailer's own MAIL FROM code adds RET/ENVID (xtext-encoded) when the server has DSN.
    // The typings spell RET 'Full' but the runtime upper-cases and accepts 'FULL'.
    env.dsn = { ...(tx.ret ? { ret: tx.ret } : {}), ...(tx.envid ? { envid: tx.envid } : {}) } as SMTPConnection.DSNOptions;
  }
  return env;
}

const DOT = Buffer.from('.');

/**
 * The DATA stream the relay sends: RFC 5321 dot-stuffing and the end marker, nothing else. nodemailer's
 * own DataStream also rewrites every bare LF as CRLF, so a message with bare line feeds reached the next
 * hop changed (not what UCWI scanned, not "byte for byte"). A dot after any LF is doubled, bare LF
 * included: that is where smtp-server and Postfix unstuff, and it keeps "<LF>.<CR><LF>" (SMTP smuggling)
 * from ever reaching the next hop unstuffed.
 */
export class TransparentDataStream extends Transform {
  /** Read by nodemailer for `info.messageSize`. */
  inByteCount = 0;
  outByteCount = 0;
  /** The last two bytes written; the start of the message counts as the start of a line. */
  private tail = Buffer.from('\r\n');

  override _transform(chunk: Buffer | string, _enc: BufferEncoding, done: TransformCallback): void {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (buf.length === 0) return done();
    this.inByteCount += buf.length;
    const parts: Buffer[] = [];
    let from = 0;
    // Native indexOf finds the candidates; only a dot right after a LF is doubled.
    for (let i = buf.indexOf(0x2e); i !== -1; i = buf.indexOf(0x2e, i + 1)) {
      if ((i > 0 ? buf[i - 1] : this.tail[1]) === 0x0a) {
        parts.push(buf.subarray(from, i + 1), DOT);
        from = i + 1;
      }
    }
    if (from < buf.length) parts.push(buf.subarray(from));
    const out = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    this.tail = Buffer.concat([this.tail, buf.subarray(-2)]).subarray(-2);
    this.outByteCount += out.length;
    this.push(out);
    done();
  }

  override _flush(done: TransformCallback): void {
    // The marker needs the CRLF in front of it; spooled mail always ends with one (smtp-server keeps it).
    const end = Buffer.from(this.tail[0] === 0x0d && this.tail[1] === 0x0a ? '.\r\n' : '\r\n.\r\n');
    this.outByteCount += end.length;
    this.push(end);
    done();
  }
}

export class RelayConnection extends SMTPConnection {
  /** Transaction phase, followed from the commands we send; the relay sets 'auth'/'mail' itself. */
  phase: SmtpPhase = 'connect';
  /** Set once `connect` has completed (greeting, EHLO, STARTTLS done). */
  handshakeDone = false;
  /** Hook calls not yet matched by a RCPT TO line: detects a nodemailer change that bypasses the hook. */
  private pendingRcptHooks = 0;
  /** True while a pipelined command group is written: the phase then follows the replies, not the commands. */
  private sendingGroup = false;
  /** Set when a MAIL FROM line went out (tells _setEnvelope that nodemailer's checks passed). */
  private mailSent = false;

  private get internals(): Internals {
    return this as unknown as Internals;
  }

  /** Whether the next hop's EHLO reply announced AUTH (runtime field the typings leave out). */
  get offersAuth(): boolean {
    return (this as unknown as { allowsAuth?: boolean }).allowsAuth === true;
  }

  /** Extensions the next hop announced in its (last) EHLO reply, as nodemailer recorded them. */
  get supportedExtensions(): readonly string[] {
    return this.internals._supportedExtensions;
  }

  /** Drops the TCP connection at once (no QUIT): used on abort and on any state we cannot trust. */
  destroyNow(): void {
    const sock = this.internals._socket;
    if (sock && !sock.destroyed) sock.destroy();
    // close() marks the object destroyed and emits 'end'; the socket is already gone, so no FIN/QUIT.
    this.close();
  }

  /** Private-API override: per-recipient NOTIFY/ORCPT instead of nodemailer's single envelope-wide pair. */
  _getDsnRcptToArgs(): string {
    const self = this.internals;
    const env = self._envelope;
    const params = env ? env[RCPT_PARAMS] : undefined;
    if (!params) return baseProto._getDsnRcptToArgs.call(this);
    this.pendingRcptHooks++;
    // nodemailer pushed the recipient it is about to send just before calling us (with PIPELINING
    // several are queued, and the current one is always the last).
    const current = self._recipientQueue[self._recipientQueue.length - 1];
    const p = current === undefined ? undefined : params.get(current)?.shift();
    // DSN parameters may only be sent to a server that announced DSN (RFC 3461 §4).
    if (!p || !self._supportedExtensions.includes('DSN')) return '';
    const args: string[] = [];
    if (p.notify && p.notify.length) args.push('NOTIFY=' + encodeXText(p.notify.join(',')));
    if (p.orcpt) args.push('ORCPT=' + encodeXText(p.orcpt));
    return args.length ? ' ' + args.join(' ') : '';
  }

  /** Private-API override: every command line passes here. */
  _sendCommand(str: string, logStr?: string): void {
    const self = this.internals;
    const env = self._envelope;
    const ours = !!(env && env[RCPT_PARAMS]);
    if (str === 'STARTTLS') this.phase = 'tls';
    else if (str === 'DATA' && ours) {
      if (!this.sendingGroup) this.phase = 'data';
    } else if (ours && /^MAIL FROM:</i.test(str)) {
      this.phase = 'mail';
      this.mailSent = true;
      this.pendingRcptHooks = 0;
      // nodemailer only adds SMTPUTF8 for non-ASCII addresses; the client may have asked for it for
      // its headers alone, and the next hop must get the same promise (RFC 6531 §3.4).
      const params = str.slice(str.lastIndexOf('>') + 1);
      if (env && env[SMTPUTF8] && self._supportedExtensions.includes('SMTPUTF8') && !/(^|\s)SMTPUTF8(\s|$)/i.test(params)) {
        str += ' SMTPUTF8';
        self._usingSmtpUtf8 = true;
      }
    } else if (ours && /^RCPT TO:</i.test(str)) {
      if (!this.sendingGroup) this.phase = 'rcpt';
      if (this.pendingRcptHooks <= 0) {
        // nodemailer built this RCPT line without asking us: its internals changed. Refuse to send a
        // RCPT without the client's DSN parameters; the error surfaces as a transient failure.
        self._onError(
          new Error('nodemailer did not call _getDsnRcptToArgs; per-recipient DSN parameters would be lost (check NODEMAILER_PINNED_VERSION)'),
          'EINTERNAL',
          false,
          'RCPT TO',
        );
        return;
      }
      this.pendingRcptHooks--;
    }
    baseProto._sendCommand.call(this, str, logStr);
  }

  /**
   * Private-API override: with PIPELINING (RFC 2920) MAIL FROM, every RCPT TO and DATA leave in one
   * write and the replies are read in order, one round trip where nodemailer takes three (it pipelines
   * only the RCPTs, after MAIL's reply). nodemailer still builds and checks MAIL FROM; only its reply
   * handling for MAIL, RCPT and DATA is replaced, with the same results and errors as its own.
   */
  _setEnvelope(envelope: NodemailerEnvelope, callback: EnvelopeCallback): void {
    const self = this.internals;
    const socket = self._socket as Socket | false;
    if (!envelope[RCPT_PARAMS] || !self._supportedExtensions.includes('PIPELINING') || !socket) {
      return baseProto._setEnvelope.call(this, envelope, callback);
    }
    this.mailSent = false;
    socket.cork();
    this.sendingGroup = true;
    try {
      baseProto._setEnvelope.call(this, envelope, callback);
      const env = self._envelope;
      // nodemailer refused the envelope (callback already called) or found no recipients: nothing to add.
      if (!this.mailSent || !env || env.rcptQueue.length === 0) return;
      // nodemailer's MAIL reply handler is the last action queued; ours replace it for the whole group.
      self._responseActions.pop();
      this.sendPipelinedGroup(env, callback);
    } finally {
      this.sendingGroup = false;
      socket.uncork();
    }
  }

  private sendPipelinedGroup(env: Exclude<Internals['_envelope'], false>, callback: EnvelopeCallback): void {
    const self = this.internals;
    let mailError: Error | null = null;
    let lastRcptReply = '';
    self._responseActions.push((str) => {
      if (Number(str.charAt(0)) !== 2) mailError = self._formatError('Mail command failed', 'EENVELOPE', str, 'MAIL FROM');
      else this.phase = 'rcpt';
    });
    self._recipientQueue = [];
    for (const rcpt of env.rcptQueue.splice(0)) {
      self._recipientQueue.push(rcpt);
      self._responseActions.push((str) => {
        const current = self._recipientQueue.shift()!;
        lastRcptReply = str;
        if (mailError) return; // 503 after a refused MAIL: the MAIL reply is the one that counts
        if (Number(str.charAt(0)) !== 2) {
          const err = self._formatError('Recipient command failed', 'EENVELOPE', str, 'RCPT TO');
          err.recipient = current;
          env.rejected.push(current);
          env.rejectedErrors.push(err);
        } else env.accepted.push(current);
        if (self._recipientQueue.length === 0) this.phase = 'data';
      });
      // Same order as nodemailer: the recipient is queued before the DSN hook reads it.
      self._sendCommand('RCPT TO:<' + rcpt + '>' + this._getDsnRcptToArgs());
    }
    self._responseActions.push((str) => {
      // A server that answered 354 although nothing can be delivered expects a message we will not send:
      // the session is out of step, so the connection is dropped after the error is reported.
      const outOfStep = str.charAt(0) === '3';
      const fail = (err: Error): void => {
        callback(err);
        if (outOfStep) this.destroyNow();
      };
      if (mailError) return fail(mailError);
      if (env.rejected.length >= env.to.length) {
        const err = self._formatError("Can't send mail - all recipients were rejected", 'EENVELOPE', lastRcptReply, 'RCPT TO');
        err.rejected = env.rejected;
        err.rejectedErrors = env.rejectedErrors;
        return fail(err);
      }
      // nodemailer accepts 2xx as well as 354 here (some servers answer DATA with 250).
      if (!/^[23]/.test(str)) return callback(self._formatError('Data command failed', 'EENVELOPE', str, 'DATA'));
      callback(null, {
        accepted: env.accepted,
        rejected: env.rejected,
        ...(self._ehloLines && self._ehloLines.length ? { ehlo: self._ehloLines } : {}),
        ...(env.rejectedErrors.length ? { rejectedErrors: env.rejectedErrors } : {}),
      });
    });
    self._sendCommand('DATA');
  }

  /** Private-API override: nodemailer's DataStream (bare LF → CRLF) replaced by the byte-exact one; same wiring otherwise. */
  _createSendStream(callback: (err: Error | null, str?: string) => void): TransparentDataStream {
    const self = this.internals;
    const stream = new TransparentDataStream();
    self._responseActions.push((str) => self._actionSMTPStream(str, callback));
    const socket = self._socket as Socket;
    // What the stream yields within one turn of the event loop leaves in one socket write: a small
    // message's bytes and the end marker then cost one syscall instead of two. Registered before the
    // pipe so the cork comes before the pipe's write; a trickling source still goes out every turn.
    let corked = false;
    stream.on('data', () => {
      if (corked) return;
      corked = true;
      socket.cork();
      setImmediate(() => {
        corked = false;
        socket.uncork();
      });
    });
    stream.pipe(socket, { end: false });
    return stream;
  }

  /** Private-API override: nodemailer's own cancel path (close() during DNS) leaves the late socket open. */
  _onConnect(): void {
    const self = this.internals;
    if (self._destroyed) {
      const sock = self._socket;
      if (sock && !sock.destroyed) sock.destroy();
      return;
    }
    // SMTP is request/response with small writes (a command, the end-of-data marker): with Nagle on,
    // the last small segment waits for the peer's delayed ACK, ~40 ms per message. Set before the base
    // handler runs, so the TLS upgrade (which wraps this socket) inherits it.
    (self._socket as Socket | undefined)?.setNoDelay?.(true);
    baseProto._onConnect.call(this);
  }
}
