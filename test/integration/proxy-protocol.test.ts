// PROXY protocol at the relay: the address a configured load balancer gives is the one checked, logged and traced; nobody else may send a header.
import { afterEach, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { startChain, message, type Chain } from '../helpers/chain.js';

let chain: Chain | undefined;
afterEach(async () => {
  await chain?.close();
  chain = undefined;
});

/** A raw client that first writes `preamble`, then speaks line by line; every wait is bounded. */
async function rawSession(
  port: number,
  preamble: Buffer,
): Promise<{ sock: Socket; read(): Promise<string>; send(line: string): Promise<string>; closed: Promise<void> }> {
  const sock = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  sock.write(preamble);
  let buf = '';
  const waiters: Array<() => void> = [];
  sock.on('data', (c: Buffer) => {
    buf += c.toString('latin1');
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  void closed.then(() => {
    for (const w of waiters.splice(0)) w();
  });
  const read = async (): Promise<string> => {
    const until = Date.now() + 5000;
    for (;;) {
      const m = /(^|\r\n)(\d{3}) [^\r\n]*\r\n/.exec(buf);
      if (m) {
        const end = m.index + m[0].length;
        const reply = buf.slice(0, end).trimEnd();
        buf = buf.slice(end);
        return reply;
      }
      if (sock.destroyed || Date.now() > until) return '';
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 100);
      });
    }
  };
  return { sock, read, send: async (line) => (sock.write(line + '\r\n'), read()), closed };
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
