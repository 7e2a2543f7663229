// A scripted next hop (the test SMTP peer) for faults: 421 at or during DATA, a dropped connection after the final dot, a held final dot, a slow greeting or DATA command.
import { Hold, later, startSmtpPeer } from './smtp-peer.js';

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

/** The test SMTP peer speaking as "rawsink", with these faults switched by `behaviour` at each step. */
export async function startRawSink(behaviour: RawSinkBehaviour = {}): Promise<RawSink> {
  const hold = new Hold();
  const peer = await startSmtpPeer({
    name: 'rawsink',
    ehlo: () => ['8BITMIME', 'ENHANCEDSTATUSCODES'],
    replies: { queued: (n) => `250 2.0.0 Ok: queued as RAW${n}` },
    script: {
      greeting: () => (sink.behaviour.greetingDelayMs ? later(sink.behaviour.greetingDelayMs) : undefined),
      data: () => {
        if (sink.behaviour.dataCommand421) return '421 4.3.2 rawsink: service not available, closing transmission channel';
        // Commands that arrive meanwhile wait behind the 354, as with a real server busy at that step.
        return sink.behaviour.dataCommandDelayMs ? later(sink.behaviour.dataCommandDelayMs) : undefined;
      },
      // The fault fires on the byte count alone, whether or not the end marker came in the same read: how the
      // sender chunks its writes must not decide if the fault happens.
      dataBytes: (n) => {
        const limit = sink.behaviour.abortAfterBytes;
        return limit != null && n >= limit ? '421 4.4.2 rawsink: closing connection in the middle of DATA' : undefined;
      },
      message: () => {
        const mode = sink.behaviour.dot ?? 'accept';
        if (mode === 'drop') return { accept: true, close: 'destroy' };
        // Committed at release, like a real MTA (Postfix commits its queue file before it writes the reply), even
        // when the client vanished meanwhile.
        return mode === 'hold' ? hold.until() : undefined;
      },
      accepted: (m) =>
        void sink.committed.push({
          from: m.from,
          to: m.to.map((r) => r.address),
          data: m.data,
          sha256: m.sha256,
          get acknowledged() {
            return m.acknowledged;
          },
        }),
    },
  });
  const sink: RawSink = {
    port: peer.port,
    behaviour,
    committed: [],
    get dots() {
      return peer.dots;
    },
    get partial() {
      return peer.partial;
    },
    get dataStarted() {
      return peer.dataStarted;
    },
    get connections() {
      return peer.connections;
    },
    get closedConnections() {
      return peer.closedConnections;
    },
    get held() {
      return hold.held;
    },
    release: () => hold.release(),
    close: () => peer.close(),
  };
  return sink;
}
