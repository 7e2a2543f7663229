// A scripted SMTP server on raw sockets for SmtpClient tests: records every byte and command, answers by script, can hold replies, upgrade to TLS, misbehave. Shares no code with src/smtp.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, TLSSocket } from 'node:tls';

export interface SimSession {
  /** Command lines as received (CRLF removed). */
  commands: string[];
  /** Raw DATA bytes of each message as on the wire (still dot-stuffed), without the final ".\r\n". */
  messages: Buffer[];
  secure: boolean;
  /** Commands that arrived while an earlier one was still unanswered (pipelined by the client). */
  overlapped: number;
  /** Bytes received in the current DATA that never reached a terminator (connection gone mid-message). */
  partialData: number;
  sock: Socket;
  /** Writes raw bytes to the client. */
  write(text: string): void;
  closed: Promise<void>;
}

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
}

export interface Sim {
  port: number;
  sessions: SimSession[];
  close(): Promise<void>;
}

const DEFAULT_EHLO = (s: SimSession, o: SimOptions): string[] => [
  '250-sim.test greets you',
  '250-PIPELINING',
  '250-SIZE 1000000',
  '250-8BITMIME',
  ...(o.auth ? ['250-AUTH LOGIN PLAIN'] : []),
  ...(o.tls && !s.secure && !o.implicitTls ? ['250-STARTTLS'] : []),
  '250 DSN',
];

export async function startSim(o: SimOptions = {}): Promise<Sim> {
  const sessions: SimSession[] = [];
  const sockets = new Set<Socket>();
  const onConn = (sock: Socket): void => {
    sockets.add(sock);
    sock.on('error', () => {});
    let resolveClosed!: () => void;
    const s: SimSession = {
      commands: [],
      messages: [],
      secure: sock instanceof TLSSocket,
      overlapped: 0,
      partialData: 0,
      sock,
      write: (t) => {
        if (!s.sock.destroyed) s.sock.write(t);
      },
      closed: new Promise<void>((r) => (resolveClosed = r)),
    };
    sessions.push(s);
    sock.on('close', () => {
      sockets.delete(sock);
      resolveClosed();
    });
    let mode: 'cmd' | 'data' | 'auth-user' | 'auth-pass' | 'gone' = 'cmd';
    let buf = Buffer.alloc(0);
    let rcptOk = 0;
    let authUser = '';
    let held: string[] = [];
    let unanswered = 0;
    // Replies go out asynchronously, so commands the client wrote without waiting are seen as overlapping.
    const reply = (text: string, flush = false): void => {
      unanswered++;
      held.push(text + '\r\n');
      if (o.holdUntilData && !flush) return;
      const out = held.join('');
      held = [];
      setImmediate(() => {
        unanswered = 0;
        s.write(out);
      });
    };
    const dflt = (line: string): Answer => {
      const verb = line.split(' ')[0]!.toUpperCase();
      if (verb === 'EHLO') return (o.ehlo ?? ((x) => DEFAULT_EHLO(x, o)))(s).join('\r\n');
      if (verb === 'HELO') return '250 sim.test';
      if (/^MAIL FROM:/i.test(line)) return ((rcptOk = 0), '250 2.1.0 Ok');
      if (/^RCPT TO:<bad/i.test(line)) return '550 5.1.1 no such user';
      if (/^RCPT TO:/i.test(line)) return (rcptOk++, '250 2.1.5 Ok');
      if (verb === 'DATA') return rcptOk > 0 ? '354 go ahead' : '554 5.5.1 no valid recipients';
      if (verb === 'RSET') return ((rcptOk = 0), '250 2.0.0 Ok');
      if (verb === 'QUIT') return '221 2.0.0 bye';
      if (verb === 'NOOP') return '250 ok';
      return '502 5.5.2 unknown';
    };
    const onLine = (line: string): void => {
      s.commands.push(line);
      if (unanswered > 0) s.overlapped++;
      if (mode === 'auth-user') {
        authUser = Buffer.from(line, 'base64').toString();
        mode = 'auth-pass';
        return reply('334 UGFzc3dvcmQ6');
      }
      if (mode === 'auth-pass') {
        mode = 'cmd';
        const ok = authUser === o.auth?.user && Buffer.from(line, 'base64').toString() === o.auth?.pass;
        return reply(ok ? '235 2.7.0 ok' : '535 5.7.8 bad credentials');
      }
      const scripted = o.onCommand?.(line, s);
      const answer = scripted === undefined ? scriptedDefault(line) : scripted;
      if (answer === null) return;
      const verb = line.split(' ')[0]!.toUpperCase();
      if (verb === 'STARTTLS' && answer.startsWith('220') && o.tls) {
        mode = 'gone';
        sock.off('data', onData);
        s.write(answer + '\r\n' + (o.afterStarttls ?? ''));
        const tlsSock = new TLSSocket(sock, { isServer: true, key: o.tls.key, cert: o.tls.cert });
        tlsSock.on('error', () => {});
        tlsSock.once('secure', () => {
          s.secure = true;
          s.sock = tlsSock;
          mode = 'cmd';
          buf = Buffer.alloc(0);
        });
        tlsSock.on('data', onData);
        return;
      }
      // Only the envelope is held: EHLO and the like are answered at once.
      reply(answer, verb !== 'MAIL' && verb !== 'RCPT');
      if (verb === 'DATA' && answer.startsWith('354')) mode = 'data';
      if (verb === 'QUIT') setImmediate(() => s.sock.end());
      if (answer.startsWith('421')) setImmediate(() => s.sock.end());
    };
    const scriptedDefault = (line: string): string => {
      if (/^AUTH PLAIN /i.test(line)) {
        const ok = Buffer.from(line.slice(11), 'base64').toString() === `\0${o.auth?.user}\0${o.auth?.pass}`;
        return ok ? '235 2.7.0 ok' : '535 5.7.8 bad credentials';
      }
      if (/^AUTH LOGIN$/i.test(line)) {
        mode = 'auth-user';
        return '334 VXNlcm5hbWU6';
      }
      if (/^STARTTLS$/i.test(line) && o.tls && !s.secure) return '220 2.0.0 ready';
      return dflt(line) as string;
    };
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length > 0 && mode !== 'gone') {
        if (mode === 'data') {
          // The message ends at CRLF.CRLF (the CRLF belongs to the message) or at ".\r\n" opening the data.
          const at = buf.subarray(0, 3).toString('latin1') === '.\r\n' ? -2 : buf.indexOf('\r\n.\r\n');
          if (at === -1) {
            s.partialData = buf.length;
            o.onDataChunk?.(buf.length, s);
            return;
          }
          const data = buf.subarray(0, at + 2);
          buf = buf.subarray(at + 5);
          s.partialData = 0;
          s.messages.push(Buffer.from(data));
          mode = 'cmd';
          const r = o.onMessage ? o.onMessage(data, s) : '250 2.0.0 queued';
          if (r !== null) reply(r, true);
          continue;
        }
        const nl = buf.indexOf(0x0a);
        if (nl === -1) return;
        const line = buf.subarray(0, nl).toString('utf8').replace(/\r$/, '');
        buf = buf.subarray(nl + 1);
        onLine(line);
      }
    };
    sock.on('data', onData);
    if (o.greeting !== null) s.write((o.greeting ?? '220 sim.test ESMTP') + '\r\n');
  };
  const server: Server = o.implicitTls && o.tls ? createTlsServer({ key: o.tls.key, cert: o.tls.cert }, onConn) : createServer(onConn);
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    sessions,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** RFC 5321 §4.5.2 receiver side: one dot removed at each line start (start, after CR or LF). */
export function unstuffWire(raw: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const lineStart = i === 0 || raw[i - 1] === 0x0a || raw[i - 1] === 0x0d;
    if (lineStart && raw[i] === 0x2e) continue;
    out.push(raw[i]!);
  }
  return Buffer.from(out);
}
