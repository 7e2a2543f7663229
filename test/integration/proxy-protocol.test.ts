// PROXY protocol at the relay: the address a configured load balancer gives is the one checked, logged and traced; nobody else may send a header.
import { afterEach, describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { startChain, message, type Chain } from '../helpers/chain.js';
import { PeerClient } from '../helpers/smtp-peer-client.js';

let chain: Chain | undefined;
afterEach(async () => {
  await chain?.close();
  chain = undefined;
});

/** A raw client (the test SMTP peer's) that first writes `preamble`, then speaks line by line; every wait is bounded ('' when no reply came). */
async function rawSession(
  port: number,
  preamble: Buffer,
): Promise<{ sock: Socket; read(): Promise<string>; send(line: string): Promise<string>; closed: Promise<void> }> {
  const c = await PeerClient.open(port, { preamble, encoding: 'latin1' });
  const read = async (): Promise<string> => (await c.next(5000)) ?? '';
  return {
    sock: c.socket,
    read,
    send: async (line) => (c.write(line + '\r\n'), read()),
    get closed() {
      return c.waitClosed(10_000).then(() => undefined);
    },
  };
}

describe('PROXY protocol from a configured load balancer', () => {
  it('the address from a v1 header is the one checked against allowedClients, traced and logged', async () => {
    chain = await startChain({ config: { smtp: { proxyProtocolFrom: ['127.0.0.1/32'], allowedClients: ['192.0.2.0/24'] } } });
    const s = await rawSession(chain.port, Buffer.from('PROXY TCP4 192.0.2.7 203.0.113.25 51234 25\r\n'));
    expect(await s.read()).toMatch(/^220 /);
    await s.send('EHLO mta.example.test');
    expect(await s.send('MAIL FROM:<alice@example.test>')).toMatch(/^250 /);
    expect(await s.send('RCPT TO:<bob@example.test>')).toMatch(/^250 /);
    expect(await s.send('DATA')).toMatch(/^354 /);
    expect(await s.send(message('clean text') + '.')).toMatch(/^250 /);
    await s.send('QUIT');
    s.sock.destroy();
    const summary = chain.summaries()[0]!;
    expect(summary['client']).toBe('192.0.2.7');
    const data = chain.sink.messages[0]!.data!.toString('latin1');
    expect(data).toMatch(/^Received: from mta\.example\.test \(\[192\.0\.2\.7\]\)\r\n/);
  });

  it('a PROXY header that names a client outside allowedClients is refused like that client', async () => {
    chain = await startChain({ config: { smtp: { proxyProtocolFrom: ['127.0.0.1/32'], allowedClients: ['192.0.2.0/24'] } } });
    const s = await rawSession(chain.port, Buffer.from('PROXY TCP4 198.51.100.9 203.0.113.25 51234 25\r\n'));
    expect(await s.read()).toMatch(/^554 5\.7\.1 /);
    s.sock.destroy();
  });

  it('a direct client on a PROXY listener (no header) gets no greeting and is disconnected', async () => {
    chain = await startChain({ config: { smtp: { proxyProtocolFrom: ['127.0.0.1/32'] } } });
    const s = await rawSession(chain.port, Buffer.from('EHLO direct.example.test\r\n'));
    expect(await s.read()).toBe('');
    await s.closed;
    expect(s.sock.destroyed).toBe(true);
  });

  it('a PROXY header from a peer that is not a configured load balancer is refused (the header is not trusted)', async () => {
    chain = await startChain({ config: { smtp: { proxyProtocolFrom: ['10.9.9.9/32'], allowedClients: ['0.0.0.0/0'] } } });
    const s = await rawSession(chain.port, Buffer.from('PROXY TCP4 192.0.2.7 203.0.113.25 51234 25\r\n'));
    expect(await s.read()).toBe('');
    await s.closed;
    expect(chain.sink.messages).toHaveLength(0);
  });
});
