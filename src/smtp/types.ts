// Public types of the SMTP server engine: options, the session view, parsed commands and the handler contract (re-exported by server.ts).
import type { Readable } from 'node:stream';
import type { SmtpReply } from '../errors.js';
import type { EsmtpParam } from './envelope.js';
import { DlpError } from '../errors.js';

export interface SmtpServerOptions {
  /** Name in the greeting and the EHLO reply. */
  hostname: string;
  /** Greeting is `220 <hostname> ESMTP <banner>`; default banner 'dlp-relay'. Never says ESMTP twice. */
  banner?: string;
  /** Early-talker pause before the greeting (0: greet at once). A client that talks before a delayed
   *  greeting gets `554 5.5.0` (catalogue) and is disconnected (Postfix's smtpd_forbid_unauth_pipelining idea).
   *  This and the other settings that are config keys have no default here: the config schema holds it. */
  greetingDelayMs: number;
  /** Advertised as SIZE; DATA over it → read to the end, then 552 5.3.4. */
  maxMessageBytes: number;
  /** Past it RCPT gets 452 4.5.3. */
  maxRecipients: number;
  /** No byte from the client for this long → 421 4.4.2 and close. */
  idleTimeoutMs: number;
  /** Whole session cap → 421 4.4.2 and close (checked between commands and in DATA). */
  sessionTimeoutMs: number;
  /** Slowloris guard: a command line, and DATA, must progress at least this many bytes/s averaged over
   *  `minRateWindowMs` (default 30 s); 0 = off. Violation → 421 4.4.2 and close. A waiting
   *  server (handler running) never counts against the client. */
  minBytesPerSecond: number;
  minRateWindowMs?: number;
  /** Default 512 incl CRLF (RFC 5321 4.5.3.1.4) → 500 5.5.6 Line too long. */
  maxCommandLineBytes?: number;
  /** DATA text lines longer than this (excluding CRLF) → read to the end, then 552 5.3.4; default 0 = no limit. */
  maxDataLineBytes?: number;
  /** 'accept': bare CR / bare LF in DATA pass through as data; 'reject': read to the end, then 550 5.5.2. */
  bareLineEndings: 'accept' | 'reject';
  /** Advertise DSN and parse RET/ENVID/NOTIFY/ORCPT. */
  dsn: boolean;
  /** STARTTLS when set; `require`: MAIL before STARTTLS → 530 5.7.0. */
  tls?: { key: Buffer | string; cert: Buffer | string; require: boolean } | undefined;
  /** AUTH PLAIN and LOGIN, advertised and accepted ONLY on a TLS session (in clear: 538 5.7.11 / not advertised).
   *  `required`: MAIL before AUTH → 530 5.7.0. After `maxFailures` failed attempts → 421 4.7.0 and close. */
  auth?: { required: boolean; maxFailures: number } | undefined;
  /** PROXY protocol v1/v2, only from these peers (CIDR list). When set, EVERY connection must start with a PROXY
   *  header; a peer outside the list, a malformed header or no complete header within `timeoutMs` (default 3000)
   *  → socket closed without a greeting (log at warn). v1 UNKNOWN / v2 LOCAL keep the socket's own addresses. */
  proxyProtocol?: { trustedPeers: readonly string[]; timeoutMs?: number } | undefined;
  /** Hard cap of concurrent sockets; past it: `421 4.3.2` and close (a backstop; ingress has its own cap). */
  maxConnections?: number;
}

export interface SmtpSession {
  /** Short random id for logs. */
  readonly id: string;
  /** Client IP (from the PROXY header when proxied), IPv4-mapped IPv6 unmapped. */
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
  /** The TCP peer (the load balancer when proxied). */
  readonly peerAddress: string;
  readonly proxied: boolean;
  readonly heloName: string | null;
  /** EHLO (true) or HELO (false). */
  readonly esmtp: boolean;
  /** TLS is up. */
  readonly secure: boolean;
  /** Authenticated user. */
  readonly user: string | null;
  /** RFC 3848 "with" value for a Received: line: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA. */
  readonly transmissionType: string;
  /** Date.now() at connect. */
  readonly openedAt: number;
}

export interface MailFromCommand {
  /** '' for the null sender <>. */
  address: string;
  /** Verbatim, keyword upper-cased, in order. */
  params: EsmtpParam[];
  size?: number;
  bodyType?: '7bit' | '8bitmime';
  smtpUtf8: boolean;
  /** Only when dsn. */
  ret?: 'FULL' | 'HDRS';
  /** xtext-decoded, only when dsn. */
  envid?: string;
}

export interface RcptToCommand {
  address: string;
  params: EsmtpParam[];
  /** NOTIFY= split on ',' upper-cased (only when dsn). */
  notify?: string[];
  /** ORCPT= xtext-decoded (only when dsn). */
  orcpt?: string;
}

export interface SmtpTransaction {
  readonly mail: MailFromCommand;
  /** Recipients whose RCPT got a 2xx reply, in order. */
  readonly rcpts: readonly RcptToCommand[];
}

export type ResetReason = 'rset' | 'mail' | 'helo' | 'quit' | 'close' | 'timeout' | 'shutdown' | 'data-error';

/** All optional except data. A returned reply is sent as is (code, enhanced, text). */
export interface SmtpHandlers {
  /** After PROXY (if any), before the greeting. Return a reply to refuse: a 421 is sent and the connection closed;
   *  a 554 is sent as the greeting and every later command but QUIT gets 503 5.5.1 (RFC 5321 3.1). */
  connect?(s: SmtpSession): SmtpReply | void | Promise<SmtpReply | void>;
  /** Credentials from AUTH PLAIN/LOGIN (already decoded). true → 235 2.7.0; false → 535 5.7.8. */
  auth?(s: SmtpSession, username: string, password: string): Promise<boolean>;
  /** After the engine's own checks. void → `250 2.1.0 Ok`. A non-2xx reply leaves no transaction open. */
  mail?(s: SmtpSession, mail: MailFromCommand): SmtpReply | void | Promise<SmtpReply | void>;
  /** After the engine's own checks. void → `250 2.1.5 Ok`; a 2xx reply accepts the recipient; anything else
   *  refuses it (the transaction stays open). */
  rcpt?(s: SmtpSession, rcpt: RcptToCommand, tx: SmtpTransaction): SmtpReply | void | Promise<SmtpReply | void>;
  /** After 354: `message` yields the unstuffed message bytes (CRLF kept, terminator removed). Its reply is the
   *  final reply. If the DATA phase breaks the engine destroys `message` with an Error that has a `reply`
   *  property, still awaits this promise, then sends its own reply instead (or nothing if the client is gone). */
  data(s: SmtpSession, tx: SmtpTransaction, message: Readable): Promise<SmtpReply>;
  /** A transaction (MAIL accepted) ended without reaching data(). Called exactly once per such transaction. */
  reset?(s: SmtpSession, tx: SmtpTransaction, reason: ResetReason): void | Promise<void>;
  /** The connection is gone (after any reset). */
  close?(s: SmtpSession): void;
}

/** The Error a broken DATA phase destroys the message stream with. */
export class DataPhaseError extends DlpError {
  readonly errorCode = 'DLP_ERR_DATA_PHASE' as const;
  readonly reply: SmtpReply;
  constructor(reply: SmtpReply, message: string) {
    super(message);
    this.name = 'DataPhaseError';
    this.reply = reply;
  }
}
