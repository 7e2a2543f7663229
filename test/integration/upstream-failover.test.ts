// Upstream lists with failover: the first next hop refusing connections and the first UCWI server not answering, each taken over by the next one, then both recovering through their probes; no failover after MAIL was accepted.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually, message, sendMessage, startChain, startSink, type Chain, type Sink } from '../helpers/chain.js';
import { startTcpGate, type TcpGate } from '../helpers/tcp-gate.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { SIM_KEYS } from '../helpers/chain.js';

const TOKEN = 'failover-test-admin-token-0123456789';
const opened: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const x of opened.splice(0).reverse()) await x.close();
});

async function readyz(chain: Chain): Promise<{ status: number; json: { ready: boolean; checks: Record<string, { ok: boolean; detail: string }> } }> {
  const res = await request(`${chain.relay.admin!.url}/readyz`);
  return { status: res.statusCode, json: (await res.body.json()) as never };
}

async function metric(chain: Chain, name: string, endpointPort: number): Promise<number | null> {
  const res = await request(`${chain.relay.admin!.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  const text = await res.body.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(`:${endpointPort}"`));
  return line ? Number(line.split(' ').pop()) : null;
}

/** A TCP front for the UCWI simulator that either forwards or accepts and never answers (a hung server). */
async function startHangingFront(target: number): Promise<{ port: number; mode: 'hang' | 'forward'; posts: number; close(): Promise<void> }> {
  const live = new Set<Socket>();
  const front = {
    port: 0,
    mode: 'hang' as 'hang' | 'forward',
    posts: 0,
    close: async (): Promise<void> => {
      for (const s of live) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server: Server = createServer((client) => {
    live.add(client);
    client.on('close', () => live.delete(client));
    client.on('error', () => {});
    if (front.mode === 'hang') {
      client.resume(); // read and drop: the request is sent, no answer ever comes
      return;
    }
    const up = connect({ host: '127.0.0.1', port: target });
    live.add(up);
    up.on('error', () => client.destroy());
    client.on('data', (d: Buffer) => {
      if (d.includes('POST ')) front.posts++;
    });
    client.pipe(up).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  front.port = (server.address() as { port: number }).port;
  return front;
}

describe('next hop failover', () => {
  it('first next hop refusing connections: mail goes to the second, the first is marked down, probed, and used again once back', async () => {
    const sinkA = await startSink();
    opened.push(sinkA);
    const gateA: TcpGate = await startTcpGate(sinkA.port);
    opened.push(gateA);
    const sinkB: Sink = await startSink();
    opened.push(sinkB);
    await gateA.refuse();
    const chain = await startChain({
      config: {
        secrets: { adminToken: TOKEN },
        nextHop: {
          host: null,
          endpoints: [
            { host: '127.0.0.1', port: gateA.port, priority: 10 },
            { host: '127.0.0.1', port: sinkB.port, priority: 20 },
          ],
          backoff: { initialMs: 200, maxMs: 400 },
        },
      },
    });
    opened.push(chain);

    const r1 = await sendMessage(chain.port, message('first while A refuses'));
    expect(r1.mail).toMatch(/^250 /);
    expect(r1.data).toMatch(/^250 /);
    expect(sinkB.messages).toHaveLength(1);
    expect(sinkA.messages).toHaveLength(0);
    expect(await metric(chain, 'dlp_relay_upstream_up', gateA.port)).toBe(0);
    expect(await metric(chain, 'dlp_relay_upstream_up', sinkB.port)).toBe(1);
    expect(await metric(chain, 'dlp_relay_upstream_failovers', gateA.port)).toBeGreaterThanOrEqual(1);

    // /readyz stays ready (one next hop carries mail) and names each endpoint.
    const rz = await readyz(chain);
    expect(rz.status).toBe(200);
    expect(rz.json.checks['nextHop']!.detail).toMatch(new RegExp(`127\\.0\\.0\\.1:${gateA.port} \\(priority 10\\): DOWN`));
    expect(rz.json.checks['nextHop']!.detail).toContain(`127.0.0.1:${sinkB.port} (priority 20): ok`);

    // Recovery: the probe after the back-off finds A again, and mail goes back to the lower priority.
    await gateA.open();
    const until = Date.now() + 5000;
    while ((await metric(chain, 'dlp_relay_upstream_up', gateA.port)) !== 1) {
      if (Date.now() > until) throw new Error('next hop A not back within 5 s');
      await new Promise((r) => setTimeout(r, 100));
    }
    const r2 = await sendMessage(chain.port, message('second after A is back'));
    expect(r2.data).toMatch(/^250 /);
    expect(sinkA.messages).toHaveLength(1);
    expect(sinkB.messages).toHaveLength(1);
  });

  it('no failover once MAIL was accepted: a 451 at the final dot reaches the client and the second next hop gets nothing', async () => {
    const sinkA = await startSink({ data: () => [451, 'try later'] });
    opened.push(sinkA);
    const sinkB = await startSink();
    opened.push(sinkB);
    const chain = await startChain({
      config: {
        nextHop: {
          host: null,
          endpoints: [
            { host: '127.0.0.1', port: sinkA.port, priority: 10 },
            { host: '127.0.0.1', port: sinkB.port, priority: 20 },
          ],
        },
      },
    });
    opened.push(chain);
    const r = await sendMessage(chain.port, message('not to be duplicated'));
    expect(r.data).toMatch(/^451 /);
    expect(sinkB.messages).toHaveLength(0);
    expect(sinkB.connections).toBe(0);
  });

  it('equal priorities share the load', async () => {
    const sinkA = await startSink();
    opened.push(sinkA);
    const sinkB = await startSink();
    opened.push(sinkB);
    const chain = await startChain({
      config: {
        nextHop: {
          host: null,
          endpoints: [
            { host: '127.0.0.1', port: sinkA.port },
            { host: '127.0.0.1', port: sinkB.port },
          ],
        },
      },
    });
    opened.push(chain);
    for (let i = 0; i < 4; i++) expect((await sendMessage(chain.port, message(`shared ${i}`))).data).toMatch(/^250 /);
    expect(sinkA.messages.length).toBeGreaterThanOrEqual(1);
    expect(sinkB.messages.length).toBeGreaterThanOrEqual(1);
    expect(sinkA.messages.length + sinkB.messages.length).toBe(4);
  });
});

describe('UCWI failover', () => {
  it('first UCWI server timing out: the scan is asked of the second within the deadline; the first is used again once it answers', async () => {
    const sim: UcwiSim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    opened.push(sim);
    const front = await startHangingFront(Number(new URL(sim.url).port));
    opened.push(front);
    const chain = await startChain({
      sim,
      config: {
        secrets: { adminToken: TOKEN },
        ucwi: {
          url: [
            { url: `http://127.0.0.1:${front.port}`, priority: 10 },
            { url: sim.url, priority: 20 },
          ],
          timeouts: { connectMs: 1000, headersMs: 700, bodyMs: 2000, deadlineMs: 8000 },
          backoff: { initialMs: 200, maxMs: 400 },
        },
      },
    });
    opened.push(chain);

    const r1 = await sendMessage(chain.port, message('scanned by the second server'));
    expect(r1.data).toMatch(/^250 /);
    expect(chain.sink.messages).toHaveLength(1);
    expect(sim.stats().requests).toBe(1);
    expect(front.posts).toBe(0);
    expect(await metric(chain, 'dlp_relay_upstream_up', front.port)).toBe(0);
    const rz = await readyz(chain);
    expect(rz.status).toBe(200);
    expect(rz.json.checks['ucwi']!.detail).toMatch(new RegExp(`127\\.0\\.0\\.1:${front.port} \\(priority 10\\): DOWN`));

    front.mode = 'forward';
    const until = Date.now() + 6000;
    while ((await metric(chain, 'dlp_relay_upstream_up', front.port)) !== 1) {
      if (Date.now() > until) throw new Error('UCWI server A not back within 6 s');
      await new Promise((r) => setTimeout(r, 100));
    }
    const r2 = await sendMessage(chain.port, message('scanned by the first server again'));
    expect(r2.data).toMatch(/^250 /);
    expect(front.posts).toBe(1);
    expect(sim.stats().requests).toBe(2);
    await eventually(() => chain.sink.messages.length === 2, 2000);
  });
});
