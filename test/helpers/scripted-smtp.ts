// A scripted SMTP server for SmtpClient and next-hop pool tests: the test SMTP peer with the "sim.test" replies, held envelope replies, TLS upgrade and misbehaviour by script. Shares no code with src/smtp.
import { startSmtpPeer, unstuff, type PeerSession } from './smtp-peer.js';

/** Every byte and command of one connection (see PeerSession): commands, raw messages, secure, overlapped, partialData, sock, write(), closed. */
export type SimSession = PeerSession;

/** What a script returns for a command: a reply (CRLF added), null for no reply, undefined for the default. */
export type Answer = string | null | undefined;

export interface SimOptions {
  /** Greeting line; null: never greet. */
  greeting?: string | null;
  /** EHLO reply lines (with codes); the default offers PIPELINING, SIZE, 8BITMIME, DSN (and STARTTLS when tls is set, before TLS). */
  ehlo?: (s: SimSession) => string[];
  /** Server key/cert for STARTTLS (or implicit TLS with `implicitTls`). */
  tls?: { key: string; cert: string };
  implicitTls?: boolean;
  /** Sent right after "220" to STARTTLS, in the same write (an injection attempt). */
  afterStarttls?: string;
  /** Hold MAIL/RCPT replies until the next other command (DATA) arrives, then send them all in one write. */
  holdUntilData?: boolean;
  /** Per-command script; undefined falls through to the default behaviour. */
  onCommand?: (line: string, s: SimSession) => Answer;
  /** Reply after the end of a message; default "250 2.0.0 queued". null: never answer. */
  onMessage?: (data: Buffer, s: SimSession) => string | null;
  /** Called for each DATA byte chunk before the terminator is found (to reply or hang up mid-stream). */
  onDataChunk?: (bytesSoFar: number, s: SimSession) => void;
  auth?: { user: string; pass: string };
  /**
   * MAIL inside an open transaction: refused with 503 like Postfix, or (default) a new transaction as RFC 5321 4.1.1.2
   * allows; SmtpClient.send() after every recipient was refused sends its next MAIL without RSET and relies on that.
   */
  nestedMail?: 'refuse' | 'reset';
}

export interface Sim {
  port: number;
  sessions: SimSession[];
  close(): Promise<void>;
}

export async function startSim(o: SimOptions = {}): Promise<Sim> {
  // Only the envelope is held: EHLO and the like are answered at once.
  const envelope = (reply: Answer): Answer | { reply: string; withNext: boolean } =>
    o.holdUntilData && typeof reply === 'string' ? { reply, withNext: true } : reply;
  const peer = await startSmtpPeer({
    name: 'sim.test',
    ...(o.greeting !== undefined ? { greeting: o.greeting } : {}),
    ehlo: (s) => [
      'PIPELINING',
      'SIZE 1000000',
      '8BITMIME',
      ...(o.auth ? ['AUTH LOGIN PLAIN'] : []),
      ...(o.tls && !s.secure && !o.implicitTls ? ['STARTTLS'] : []),
      'DSN',
    ],
    replies: {
      ehlo: (name) => `${name} greets you`,
      helo: (name) => `250 ${name}`,
      data: '354 go ahead',
      needRcpt: '554 5.5.1 no valid recipients',
      noop: '250 ok',
      quit: '221 2.0.0 bye',
      unknown: '502 5.5.2 unknown',
      starttls: '220 2.0.0 ready',
      authOk: '235 2.7.0 ok',
      authFailed: '535 5.7.8 bad credentials',
    },
    ...(o.tls ? { tls: o.tls } : {}),
    ...(o.implicitTls ? { implicitTls: true } : {}),
    ...(o.afterStarttls !== undefined ? { afterStarttls: o.afterStarttls } : {}),
    ...(o.auth ? { auth: o.auth } : {}),
    nestedMail: o.nestedMail ?? 'reset',
    script: {
      command: (line, s) => {
        const verb = line.split(' ')[0]!.toUpperCase();
        const scripted = o.onCommand?.(line, s);
        if (scripted === undefined && verb === 'EHLO' && o.ehlo) return o.ehlo(s).join('\r\n');
        return verb === 'MAIL' || verb === 'RCPT' ? envelope(scripted) : scripted;
      },
      mail: () => envelope('250 2.1.0 Ok'),
      rcpt: (r) => envelope(/^bad/i.test(r.address) ? '550 5.1.1 no such user' : '250 2.1.5 Ok'),
      dataBytes: (_n, s, ends) => {
        if (!ends) o.onDataChunk?.(s.partialData, s);
        return undefined;
      },
      message: (m, s) => (o.onMessage ? o.onMessage(m.raw, s) : '250 2.0.0 queued'),
    },
  });
  return { port: peer.port, sessions: peer.sessions, close: () => peer.close() };
}

/** RFC 5321 §4.5.2 receiver side: one dot removed at each line start (start, after CR or LF). */
export const unstuffWire = unstuff;
