// SmtpClient's socket side: the error type, the options, TCP/TLS connect and the STARTTLS upgrade (bounded by time and an AbortSignal).
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { Reply } from './reply.js';
import { DlpError } from '../errors.js';

export type ClientPhase = 'connect' | 'greeting' | 'ehlo' | 'tls' | 'auth' | 'mail' | 'rcpt' | 'data' | 'message' | 'rset' | 'quit';
export type ClientErrorKind = 'timeout' | 'closed' | 'protocol' | 'tls' | 'auth' | 'aborted' | 'reply';

export class SmtpClientError extends DlpError {
  readonly errorCode = 'DLP_ERR_SMTP_CLIENT' as const;
  override name = 'SmtpClientError';
  readonly phase: ClientPhase;
  /**
   * timeout: no answer in time; closed: connection lost/ended (or the message stream failed, which
   * also ends the connection); protocol: unparseable or out-of-step reply; tls: STARTTLS/handshake/
   * certificate failed or required but not offered; auth: AUTH refused/not offered; aborted: the
   * AbortSignal fired; reply: a reply that makes the connection unusable.
   */
  readonly kind: ClientErrorKind;
  readonly reply?: Reply;
  constructor(phase: ClientPhase, kind: ClientErrorKind, message: string, opts?: { reply?: Reply | undefined; cause?: unknown }) {
    super(message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.phase = phase;
    this.kind = kind;
    if (opts?.reply) this.reply = opts.reply;
  }
}

export interface SmtpClientOptions {
  host: string;
  port: number;
  /** Implicit TLS (port 465 style). */
  secure?: boolean;
  starttls: 'opportunistic' | 'required' | 'off';
  /** Certificate verification is ON unless rejectUnauthorized is false. servername defaults to host unless host is an IP. */
  tls?: { rejectUnauthorized?: boolean; ca?: string | Buffer; servername?: string };
  /** PLAIN preferred, LOGIN fallback; only after TLS unless allowAuthInClear. */
  auth?: { user: string; pass: string };
  /** Default false (for tests/harness only). */
  allowAuthInClear?: boolean;
  heloName: string;
  timeouts: {
    /** TCP (+TLS for secure) connect. */
    connectMs: number;
    /** 220 greeting. */
    greetingMs: number;
    /** EHLO, STARTTLS (+handshake), AUTH, MAIL, RCPT, RSET, DATA(→354), QUIT; also socket inactivity while streaming. */
    commandMs: number;
    /** Final reply after the terminating dot (RFC 5321 allows 10 min; the caller passes its own). */
    dataDoneMs: number;
  };
}

export type AnySocket = Socket | TLSSocket;

export function describeError(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
}

function tlsOptions(opts: SmtpClientOptions): ConnectionOptions {
  const t = opts.tls ?? {};
  // SNI takes host names only; for an IP the certificate is still checked against the IP (host).
  const servername = t.servername ?? (isIP(opts.host) ? undefined : opts.host);
  return {
    host: opts.host,
    ...(servername !== undefined ? { servername } : {}),
    rejectUnauthorized: t.rejectUnauthorized !== false,
    ...(t.ca !== undefined ? { ca: t.ca } : {}),
  };
}

/** Runs `start` until `ready` fires, bounded by `ms` and the signal; destroys the socket on any failure. */
function settleSocket<S extends AnySocket>(
  sock: S,
  ready: 'connect' | 'secureConnect',
  ms: number,
  phase: ClientPhase,
  failKind: 'closed' | 'tls',
  what: string,
  signal: AbortSignal | undefined,
): Promise<S> {
  return new Promise<S>((resolve, reject) => {
    const finish = (err?: SmtpClientError): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock.off(ready, onReady);
      sock.off('error', onError);
      sock.off('close', onClose);
      if (!err) return resolve(sock);
      sock.destroy();
      reject(err);
    };
    const onReady = (): void => finish();
    const onError = (err: Error): void => finish(new SmtpClientError(phase, failKind, `${what} failed: ${describeError(err)}`, { cause: err }));
    const onClose = (): void => finish(new SmtpClientError(phase, failKind === 'tls' ? 'tls' : 'closed', `${what} failed: connection closed`));
    const onAbort = (): void => finish(new SmtpClientError(phase, 'aborted', `${what} aborted by the caller`));
    const timer = setTimeout(() => finish(new SmtpClientError(phase, 'timeout', `${what} timed out after ${ms} ms`)), ms);
    sock.once(ready, onReady);
    sock.on('error', onError);
    sock.once('close', onClose);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export async function openSocket(opts: SmtpClientOptions, signal: AbortSignal | undefined): Promise<AnySocket> {
  const ms = opts.timeouts.connectMs;
  const where = `connect to ${opts.host}:${opts.port}`;
  if (signal?.aborted) throw new SmtpClientError('connect', 'aborted', `${where} aborted by the caller`);
  if (opts.secure) {
    // Implicit TLS: connect and handshake share connectMs. A certificate failure is kind 'tls'.
    const sock = tlsConnect({ ...tlsOptions(opts), port: opts.port });
    sock.setNoDelay(true);
    const raw = await settleSocket(sock, 'secureConnect', ms, 'connect', 'tls', `TLS ${where}`, signal);
    return raw;
  }
  const sock = netConnect({ host: opts.host, port: opts.port });
  // SMTP is small request/response writes: without this, Nagle holds the last segment for the peer's delayed ACK.
  sock.setNoDelay(true);
  return settleSocket(sock, 'connect', ms, 'connect', 'closed', where, signal);
}

/** STARTTLS upgrade of a connected plaintext socket; a certificate problem fails with kind 'tls' naming Node's code. */
export function upgrade(raw: Socket, opts: SmtpClientOptions, ms: number, phase: ClientPhase, signal: AbortSignal | undefined): Promise<TLSSocket> {
  const sock = tlsConnect({ ...tlsOptions(opts), socket: raw });
  return settleSocket(sock, 'secureConnect', ms, phase, 'tls', 'TLS handshake', signal);
}
