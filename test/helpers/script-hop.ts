// A next hop (the test SMTP peer) that records every command line byte for byte and answers from a script: for lockstep tests (per-RCPT replies, 421 mid-list, RSET seen, DATA never sent).
import { later, startSmtpPeer } from './smtp-peer.js';

export interface HopScript {
  /** Reply to MAIL FROM; default '250 2.1.0 Ok'. */
  mail?: (line: string) => string;
  /** Delay before the reply to MAIL FROM (a slow next hop). */
  mailDelayMs?: number;
  /** Reply to a RCPT TO line; default '250 2.1.5 Ok'. A reply starting with 421 also closes the connection. */
  rcpt?: (address: string, line: string) => string;
  /** Reply after the final dot; default '250 2.0.0 Ok: queued as HOP<n>'. */
  dot?: (data: Buffer) => string;
  /** EHLO keywords (default PIPELINING, 8BITMIME, SMTPUTF8, DSN, ENHANCEDSTATUSCODES, SIZE 104857600). */
  ehlo?: string[];
}

export interface ScriptHop {
  port: number;
  /** Every line the hop read outside DATA, in order, per connection index. */
  lines: string[][];
  /** Raw DATA bytes as received (still dot-stuffed, terminator included), one per message. */
  rawData: Buffer[];
  /** Commands seen by verb, over all connections. */
  count(verb: string): number;
  script: HopScript;
  close(): Promise<void>;
}

const DEFAULT_EHLO = ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES', 'SIZE 104857600'];

/** The test SMTP peer speaking as "hop.test", answering from `script` (read at each command, so tests may swap it). */
export async function startScriptHop(script: HopScript = {}): Promise<ScriptHop> {
  const rawData: Buffer[] = [];
  const peer = await startSmtpPeer({
    name: 'hop.test',
    ehlo: () => hop.script.ehlo ?? DEFAULT_EHLO,
    replies: { unknown: '502 5.5.1 Not implemented' },
    script: {
      mail: (p) => {
        const reply = hop.script.mail?.(p.line) ?? '250 2.1.0 Ok';
        return hop.script.mailDelayMs ? later(hop.script.mailDelayMs, reply) : reply;
      },
      rcpt: (p) => hop.script.rcpt?.(p.address, p.line) ?? '250 2.1.5 Ok',
      message: (m) => {
        const data = Buffer.concat([m.raw, Buffer.from('.\r\n')]);
        rawData.push(data);
        return hop.script.dot?.(data) ?? `250 2.0.0 Ok: queued as HOP${rawData.length}`;
      },
    },
  });
  const hop: ScriptHop = {
    port: peer.port,
    // Read as latin1, byte for byte: a UTF-8 address shows as its bytes.
    get lines() {
      return peer.sessions.map((s) => s.lines.map((l) => l.toString('latin1')));
    },
    rawData,
    script,
    count: (verb) => peer.count(verb),
    close: () => peer.close(),
  };
  return hop;
}
