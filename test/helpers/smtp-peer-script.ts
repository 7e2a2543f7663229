// The vocabulary of the test SMTP peer (test/helpers/smtp-peer.ts): what a script answers, what the peer records, its options, and the helpers for slow and held replies.
import type { Socket } from 'node:net';
import type { PeerReplies } from './smtp-peer-replies.js';
import type { PathArgs } from './smtp-peer-wire.js';

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
