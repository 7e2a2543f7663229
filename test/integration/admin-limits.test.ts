// Issue 10 §4: idle or slow connections cannot starve the admin listener; /healthz answers with 100 idle sockets open and while API requests are in flight.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { startChain, type Chain } from '../helpers/chain.js';
import { createAdminServer } from '../../src/admin/server.js';
import { silentLogger } from '../../src/observability/logger.js';

const TOKEN = 'admin-token-for-limit-tests-0123';

/** Opens `n` TCP connections that never send a byte; each connect is bounded. Sockets the server closes stay in the list (closed). */
async function idleSockets(port: number, n: number): Promise<Socket[]> {
  const out: Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => {}); // the server may close the oldest ones: expected
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`connect ${i} took too long`)), 2000);
      s.once('connect', () => {
        clearTimeout(t);
        resolve();
      });
      s.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
    out.push(s);
  }
  return out;
}

const closed = (s: Socket) => new Promise<void>((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));

describe('admin listener of a running relay', () => {
  let chain: Chain;
  beforeAll(async () => {
    chain = await startChain({ config: { secrets: { adminToken: TOKEN } } });
  });
  afterAll(async () => {
    await chain?.close();
  });

  it('/healthz answers 200 with 100 idle connections open', async () => {
    const sockets = await idleSockets(chain.relay.admin!.port, 100);
    try {
      const r = await fetch(`${chain.relay.admin!.url}/healthz`, { signal: AbortSignal.timeout(3000) });
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual({ status: 'ok' });
      // And the API too, with the token.
      const m = await fetch(`${chain.relay.admin!.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(3000) });
      expect(m.status).toBe(200);
      // The idle ones beyond the per-address cap were closed to make room.
      expect(sockets.filter((s) => s.destroyed || s.readableEnded).length).toBeGreaterThan(0);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });
});

describe('admin server limits', () => {
  it('/healthz answers while API requests are in flight and idle connections fill the per-address cap', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let inFlight = 0;
    const admin = createAdminServer({ host: '127.0.0.1', port: 0, token: TOKEN, logger: silentLogger(), maxConnectionsPerAddress: 16, maxConnections: 32 });
    admin.addRoute('GET', '/healthz', () => ({ status: 200, json: { status: 'ok' } }), { auth: false });
    admin.addRoute(
      'GET',
      '/api/v1/slow',
      async () => {
        inFlight++;
        await gate;
        return { status: 200, json: { done: true } };
      },
      { auth: true },
    );
    const { url, port } = await admin.listen();
    const sockets: Socket[] = [];
    try {
      // Ten slow API requests in flight: busy connections are never closed to make room.
      const slow = Array.from({ length: 10 }, () =>
        fetch(`${url}/api/v1/slow`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(10_000) }),
      );
      const until = Date.now() + 5000;
      while (inFlight < 10 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      expect(inFlight).toBe(10);
      sockets.push(...(await idleSockets(port, 64)));
      const r = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(3000) });
      expect(r.status).toBe(200);
      release();
      for (const p of slow) expect((await p).status).toBe(200);
    } finally {
      release();
      for (const s of sockets) s.destroy();
      await admin.close();
    }
  });

  it('a connection that never sends a request is closed after the headers timeout', async () => {
    const admin = createAdminServer({ host: '127.0.0.1', port: 0, token: TOKEN, logger: silentLogger(), headersTimeoutMs: 500 });
    const { port } = await admin.listen();
    try {
      const [s] = await idleSockets(port, 1);
      const t0 = Date.now();
      // Bound: the timeout plus Node's 1 s check interval, with room for a loaded machine.
      await Promise.race([closed(s!), new Promise((_, reject) => setTimeout(() => reject(new Error('idle connection still open after 5 s')), 5000))]);
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      await admin.close();
    }
  });
});
