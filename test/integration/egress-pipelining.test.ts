// Egress PIPELINING (RFC 2920): MAIL, every RCPT and DATA reach the next hop before it answers any of them, and refusals inside the group map to the same errors as without pipelining.
import { afterEach, describe, expect, it } from 'vitest';
import net, { type AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pino } from 'pino';
import { NextHopRelay, DeliveryError, type OutboundEnvelope } from '../../src/egress/relay.js';
import { nextHopTestOptions } from '../helpers/next-hop.js';

const logger = pino({ level: 'silent' });

interface Script {
  /** Reply to MAIL FROM. */
  mail?: string;
  /** Reply to each RCPT TO, by address; default 250. */
  rcpt?: Record<string, string>;
  /** Reply to DATA; default 354 when a recipient was accepted, else 554. */
  data?: string;
  /** Announce PIPELINING in EHLO. */
  pipelining?: boolean;
}

interface Peer {
  port: number;
  /** The command lines of each transaction, as one group per batch the server read before answering. */
  groups: string[][];
  /** Message bodies received (up to the final dot). */
  bodies: string[];
  close(): Promise<void>;
}

/**
 * A next hop that, when it announces PIPELINING, answers nothing of a transaction until DATA has
 * arrived: a client that waits for MAIL's reply before sending RCPT would hang here until its timeout.
 */
async function startPeer(script: Script): Promise<Peer> {
  const peer: Peer = { port: 0, groups: [], bodies: [], close: async () => {} };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.write('220 peer.test ESMTP\r\n');
    let buf = '';
    let inData = false;
    let pending: string[] = [];
    // Transaction state (spans groups when the client does not pipeline); reset by DATA.
    let mailOk = true;
    let accepted = 0;
    const answerGroup = (): void => {
      peer.groups.push(pending);
      const out: string[] = [];
      for (const line of pending) {
        if (/^MAIL FROM:/i.test(line)) {
          const r = script.mail ?? '250 2.1.0 Ok';
          mailOk = r.startsWith('2');
          out.push(r);
        } else if (/^RCPT TO:/i.test(line)) {
          const addr = /<([^>]*)>/.exec(line)?.[1] ?? '';
          const r = !mailOk ? '503 5.5.1 Error: need MAIL command' : (script.rcpt?.[addr] ?? '250 2.1.5 Ok');
          if (r.startsWith('2')) accepted++;
          out.push(r);
        } else if (/^DATA$/i.test(line)) {
          const r = script.data ?? (accepted > 0 ? '354 End data with <CR><LF>.<CR><LF>' : '554 5.5.1 Error: no valid recipients');
          inData = r.startsWith('3');
          out.push(r);
          mailOk = true;
          accepted = 0;
        }
      }
      pending = [];
      sock.write(out.map((l) => l + '\r\n').join(''));
    };
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end === -1) return;
          peer.bodies.push(buf.slice(0, end + 2));
          buf = buf.slice(end + 5);
          inData = false;
          sock.write('250 2.0.0 Ok: queued\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl === -1) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (/^EHLO/i.test(line)) sock.write(`250-peer.test\r\n${script.pipelining === false ? '' : '250-PIPELINING\r\n'}250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n`);
        else if (/^RSET$/i.test(line)) {
          mailOk = true;
          accepted = 0;
          sock.write('250 2.0.0 Ok\r\n');
        }
        else if (/^QUIT$/i.test(line)) {
          sock.end('221 2.0.0 Bye\r\n');
          return;
        } else if (script.pipelining === false) {
          // Without PIPELINING every command is answered at once, so each "group" is one line.
          pending.push(line);
          answerGroup();
        } else {
          pending.push(line);
          if (/^DATA$/i.test(line)) answerGroup();
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  peer.port = (server.address() as AddressInfo).port;
  peer.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return peer;
}

const peers: Peer[] = [];
const relays: NextHopRelay[] = [];
afterEach(async () => {
  await Promise.all(relays.splice(0).map((r) => r.close()));
  await Promise.all(peers.splice(0).map((p) => p.close()));
});

async function setup(script: Script): Promise<{ peer: Peer; relay: NextHopRelay }> {
  const peer = await startPeer(script);
  peers.push(peer);
  const relay = new NextHopRelay(
    nextHopTestOptions(peer.port, {
      starttls: 'off',
      pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 },
      // Short: a client that does not pipeline waits for a MAIL reply that never comes, and fails fast.
      timeouts: { connectMs: 3_000, greetingMs: 3_000, socketMs: 3_000 },
    }),
    logger,
  );
  relays.push(relay);
  return { peer, relay };
}

const envelope = (...to: string[]): OutboundEnvelope => ({ from: 'sender@example.com', to: to.map((address) => ({ address })), smtpUtf8: false });
const body = 'Subject: pipelined\r\n\r\nhello\r\n';
const open = (): Readable => Readable.from([Buffer.from(body)]);
const signal = (): AbortSignal => new AbortController().signal;

describe('egress PIPELINING', () => {
  it('sends MAIL, every RCPT and DATA before any reply, and delivers', async () => {
    const { peer, relay } = await setup({});
    const r = await relay.deliver(envelope('a@example.com', 'b@example.com'), open, signal());
    expect(r.accepted).toEqual(['a@example.com', 'b@example.com']);
    expect(r.rejected).toEqual([]);
    expect(r.response).toBe('250 2.0.0 Ok: queued');
    expect(peer.groups).toEqual([['MAIL FROM:<sender@example.com>', 'RCPT TO:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA']]);
    expect(peer.bodies).toEqual([body]);
    // The next message on the same connection: RSET, then again one group.
    await relay.deliver(envelope('c@example.com'), open, signal());
    expect(peer.groups[1]).toEqual(['MAIL FROM:<sender@example.com>', 'RCPT TO:<c@example.com>', 'DATA']);
  });

  it('one recipient refused inside the group: delivered to the rest, the refusal reported per recipient', async () => {
    const { peer, relay } = await setup({ rcpt: { 'b@example.com': '550 5.1.1 <b@example.com>: unknown user' } });
    const r = await relay.deliver(envelope('a@example.com', 'b@example.com', 'c@example.com'), open, signal());
    expect(r.accepted).toEqual(['a@example.com', 'c@example.com']);
    expect(r.rejected).toEqual([{ address: 'b@example.com', code: 550, response: '550 5.1.1 <b@example.com>: unknown user' }]);
    expect(peer.bodies).toHaveLength(1);
  });

  it('MAIL refused with 451: the 503s that follow are ignored and the error is the transient MAIL one', async () => {
    const { peer, relay } = await setup({ mail: '451 4.3.0 try later' });
    const err = await relay.deliver(envelope('a@example.com'), open, signal()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeliveryError);
    expect(err).toMatchObject({ kind: 'transient', phase: 'mail', code: 451, response: '451 4.3.0 try later' });
    expect(peer.bodies).toEqual([]);
  });

  it('every recipient refused: DATA gets 554 and the error is the permanent recipient one', async () => {
    const { peer, relay } = await setup({ rcpt: { 'a@example.com': '550 5.1.1 no such user' } });
    const err = await relay.deliver(envelope('a@example.com'), open, signal()).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'permanent', phase: 'rcpt', code: 550, response: '550 5.1.1 no such user' });
    expect(peer.bodies).toEqual([]);
  });

  it('DATA refused with 452 after accepted recipients: transient, phase data, nothing sent', async () => {
    const { peer, relay } = await setup({ data: '452 4.3.1 insufficient storage' });
    const err = await relay.deliver(envelope('a@example.com'), open, signal()).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'transient', phase: 'data', code: 452 });
    expect(peer.bodies).toEqual([]);
  });

  it('a next hop without PIPELINING gets one command at a time, as before', async () => {
    const { peer, relay } = await setup({ pipelining: false });
    await relay.deliver(envelope('a@example.com', 'b@example.com'), open, signal());
    expect(peer.groups).toEqual([['MAIL FROM:<sender@example.com>'], ['RCPT TO:<a@example.com>'], ['RCPT TO:<b@example.com>'], ['DATA']]);
    expect(peer.bodies).toEqual([body]);
  });
});
