// A scripted next-hop SMTP server on a raw socket, for faults smtp-server cannot produce: 421 at or during DATA, a dropped connection after the final dot, a held final dot, a slow greeting or DATA command.
import { createHash } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';

/** What the sink does once it has read a complete message (the final dot). */
export type DotMode =
  /** Commit the message, answer 250. */
  | 'accept'
  /**
   * Commit the message, then destroy the socket without a reply: "the next hop accepted the final
   * dot but its 250 was lost", the one duplicate window SMTP has.
   */
  | 'drop'
  /** Keep the message and the reply back until release() is called (a next hop slow at the final dot). */
  | 'hold';

export interface RawSinkBehaviour {
  /** Delay before the 220 greeting of each new connection. */
  greetingDelayMs?: number;
  /**
   * Delay before answering the DATA command with 354. With lockstep the greeting, MAIL and RCPT happen
   * while the client is still sending its envelope; DATA is the first next-hop step inside the
   * end-of-DATA budget, so this is how a test makes the next hop slow within that budget.
   */
  dataCommandDelayMs?: number;
  /** Answer the DATA command with 421 and close, instead of 354. */
  dataCommand421?: boolean;
  /** After this many message bytes (before the final dot), answer 421 and close: a next hop failing mid-DATA. */
  abortAfterBytes?: number | null;
  dot?: DotMode;
}

export interface RawSinkMessage {
  from: string;
  to: string[];
  /** Message bytes after dot-unstuffing, without the end marker. */
  data: Buffer;
  sha256: string;
  /** False when the client was gone before the sink could answer (dropped or held past a crash). */
  acknowledged: boolean;
}

export interface RawSink {
  port: number;
  /** Mutable: tests switch faults on and off between attempts. */
  behaviour: RawSinkBehaviour;
  /** Messages the sink committed to its "queue": what counts as delivered. */
  committed: RawSinkMessage[];
  /** Final dots read (committed or held). */
  dots: number;
  /** Transactions that ended inside DATA without a final dot (nothing of those is ever committed). */
  partial: number;
  /** DATA commands answered with 354. */
  dataStarted: number;
  connections: number;
  /** Connections that have closed (either side). */
  closedConnections: number;
  /** Messages whose final dot is being held (dot: 'hold'). */
  readonly held: number;
  /**
   * Commits every held message and answers 250 where the client is still there. Like a real MTA
   * (Postfix commits its queue file before it writes the reply), a message whose client vanished
   * while it was held is still committed.
   */
  release(): void;
  close(): Promise<void>;
}

const END = Buffer.from('\r\n.\r\n');

/** RFC 5321 4.5.2: a line starting with '.' lost its first dot in transit; the marker is already cut off. */
function unstuff(raw: Buffer): Buffer {
  const out: number[] = [];
  let atLineStart = true;
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (atLineStart && b === 0x2e) {
      atLineStart = false;
      continue;
    }
    out.push(b);
    atLineStart = b === 0x0a;
  }
  return Buffer.from(out);
}

export async function startRawSink(behaviour: RawSinkBehaviour = {}): Promise<RawSink> {
  const sockets = new Set<Socket>();
  const heldQueue: Array<{ msg: RawSinkMessage; socket: Socket }> = [];
  let queued = 0;

  const commit = (msg: RawSinkMessage): string => {
    sink.committed.push(msg);
    queued++;
    return `250 2.0.0 Ok: queued as RAW${queued}\r\n`;
  };

  const onConnection = (socket: Socket): void => {
    sink.connections++;
    sockets.add(socket);
    let state: 'command' | 'delayed' | 'data' | 'closed' = 'command';
    let lineBuf = '';
    let data: Buffer[] = [];
    let dataLen = 0;
    let from = '';
    let to: string[] = [];
    let greeted = false;
    const pendingBeforeGreeting: Buffer[] = [];

    const write = (s: string): void => {
      if (!socket.destroyed && socket.writable) socket.write(s);
    };
    const closeWith = (line: string): void => {
      write(line);
      state = 'closed';
      socket.end();
    };
    socket.on('error', () => {});
    socket.on('close', () => {
      sink.closedConnections++;
      sockets.delete(socket);
      if (state === 'data') sink.partial++;
      state = 'closed';
    });

    const startData = (): void => {
      sink.dataStarted++;
      write('354 End data with <CR><LF>.<CR><LF>\r\n');
      state = 'data';
    };

    const finishMessage = (raw: Buffer): void => {
      const body = unstuff(raw);
      sink.dots++;
      const msg: RawSinkMessage = { from, to: [...to], data: body, sha256: createHash('sha256').update(body).digest('hex'), acknowledged: false };
      from = '';
      to = [];
      const mode = sink.behaviour.dot ?? 'accept';
      if (mode === 'accept') {
        msg.acknowledged = true;
        write(commit(msg));
      } else if (mode === 'drop') {
        commit(msg);
        state = 'closed';
        socket.destroy();
      } else {
        heldQueue.push({ msg, socket });
      }
    };

    const onData = (chunk: Buffer): void => {
      let rest: Buffer | null = chunk;
      if (state === 'delayed') {
        // The 354 is not out yet: keep the bytes for when it is.
        lineBuf += chunk.toString('latin1');
        return;
      }
      while (rest && rest.length && state !== 'closed') {
        if (state === 'data') {
          // Keep everything received in DATA; look for the marker across chunk boundaries.
          data.push(rest);
          dataLen += rest.length;
          const all = Buffer.concat(data, dataLen);
          // The fault fires on the byte count alone, whether or not the end marker came in the same
          // read: how the sender chunks its writes must not decide if the fault happens.
          const limit = sink.behaviour.abortAfterBytes;
          if (limit != null && dataLen >= limit) {
            sink.partial++;
            closeWith('421 4.4.2 rawsink: closing connection in the middle of DATA\r\n');
            return;
          }
          // A message may be empty: the marker is then ".\r\n" right after the 354.
          const idx = all.length >= 3 && all.subarray(0, 3).equals(Buffer.from('.\r\n')) ? -2 : all.indexOf(END);
          if (idx === -1) {
            data = [all];
            return;
          }
          const msgEnd = idx === -2 ? 0 : idx + 2;
          const after = idx === -2 ? 3 : idx + END.length;
          state = 'command';
          data = [];
          dataLen = 0;
          finishMessage(all.subarray(0, msgEnd));
          rest = all.subarray(after);
          continue;
        }
        lineBuf += rest.toString('latin1');
        rest = null;
        let nl: number;
        while (state === 'command' && (nl = lineBuf.indexOf('\n')) >= 0) {
          const line = lineBuf.slice(0, nl).replace(/\r$/, '');
          lineBuf = lineBuf.slice(nl + 1);
          const verb = line.slice(0, 4).toUpperCase();
          if (verb === 'EHLO') write('250-rawsink\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n');
          else if (verb === 'HELO') write('250 rawsink\r\n');
          else if (verb === 'MAIL') {
            from = /<([^>]*)>/.exec(line)?.[1] ?? '';
            to = [];
            write('250 2.1.0 Ok\r\n');
          } else if (verb === 'RCPT') {
            to.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
            write('250 2.1.5 Ok\r\n');
          } else if (verb === 'DATA') {
            if (sink.behaviour.dataCommand421) {
              closeWith('421 4.3.2 rawsink: service not available, closing transmission channel\r\n');
              return;
            }
            const delay = sink.behaviour.dataCommandDelayMs ?? 0;
            if (delay > 0) {
              // Stop reading commands until the 354 is out; what arrives meanwhile waits in lineBuf.
              state = 'delayed';
              const t = setTimeout(() => {
                if (state !== 'delayed') return;
                startData();
                const tail = lineBuf;
                lineBuf = '';
                if (tail.length) onData(Buffer.from(tail, 'latin1'));
              }, delay);
              socket.once('close', () => clearTimeout(t));
              return;
            }
            startData();
            // Whatever followed DATA in this chunk is message data.
            if (lineBuf.length) {
              const tail = Buffer.from(lineBuf, 'latin1');
              lineBuf = '';
              rest = tail;
            }
          } else if (verb === 'RSET') {
            from = '';
            to = [];
            write('250 2.0.0 Ok\r\n');
          } else if (verb === 'NOOP') write('250 2.0.0 Ok\r\n');
          else if (verb === 'QUIT') closeWith('221 2.0.0 Bye\r\n');
          else write('502 5.5.2 Command not recognized\r\n');
        }
      }
    };

    socket.on('data', (c: Buffer) => {
      if (!greeted) pendingBeforeGreeting.push(c);
      else onData(c);
    });
    const greet = (): void => {
      if (state === 'closed') return;
      greeted = true;
      write('220 rawsink ESMTP\r\n');
      for (const c of pendingBeforeGreeting.splice(0)) onData(c);
    };
    const delay = sink.behaviour.greetingDelayMs ?? 0;
    if (delay > 0) {
      const t = setTimeout(greet, delay);
      socket.once('close', () => clearTimeout(t));
    } else greet();
  };

  const server: Server = createServer(onConnection);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));

  const sink: RawSink = {
    port: (server.address() as { port: number }).port,
    behaviour,
    committed: [],
    dots: 0,
    partial: 0,
    dataStarted: 0,
    connections: 0,
    closedConnections: 0,
    get held() {
      return heldQueue.length;
    },
    release() {
      for (const { msg, socket } of heldQueue.splice(0)) {
        const reply = commit(msg);
        if (!socket.destroyed && socket.writable) {
          msg.acknowledged = true;
          socket.write(reply);
        }
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  return sink;
}
