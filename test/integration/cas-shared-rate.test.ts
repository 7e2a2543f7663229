// Issue 15: three relays' CAS pushers on one PostgreSQL share one request budget; the CAS simulator counts what arrives.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { CasClient } from '../../src/cas/client.js';
import { CasPusher, PgCasOutbox } from '../../src/cas/outbox.js';
import { PgCasRateLimiter, casBucketFor } from '../../src/cas/shared-rate.js';
import { startCasSim, type CasSim, type CasSimRequest } from '../sim/cas/server.js';
import { dropSchemas, freshSchema, schemaUrl } from '../helpers/pg.js';

const TOKEN = 'shared-rate-token';
const schemas: string[] = [];
const pools: pg.Pool[] = [];
const closers: Array<() => Promise<unknown>> = [];

async function pool(schema: string): Promise<pg.Pool> {
  const p = new pg.Pool({ connectionString: schemaUrl(schema), max: 3 });
  p.on('error', () => {});
  pools.push(p);
  return p;
}

async function limiter(p: pg.Pool, rate: { limit: number; windowMs: number }, leaseMs = 5_000, bucket = casBucketFor(TOKEN)): Promise<PgCasRateLimiter> {
  const l = new PgCasRateLimiter(p, { bucket, rate, leaseMs, pollMs: 50 });
  await l.init();
  return l;
}

/** Largest number of arrivals inside any half-open span of `windowMs` (stricter than the vendor's fixed window). */
function maxInWindow(log: CasSimRequest[], windowMs: number): number {
  const t = log.map((e) => e.at).sort((a, b) => a - b);
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < t.length; hi++) {
    while (t[hi]! - t[lo]! >= windowMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}

async function until(what: string, cond: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let schema: string;
beforeAll(async () => {
  schema = await freshSchema('cas_rate');
  schemas.push(schema);
});
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});
afterAll(async () => {
  await Promise.all(pools.splice(0).map((p) => p.end()));
  await dropSchemas(schemas);
});

describe('CAS budget shared through PostgreSQL', () => {
  it('three relays pushing together never exceed the budget in any window at the CAS simulator', async () => {
    const rate = { limit: 4, windowMs: 1_000 };
    const sim: CasSim = await startCasSim({ token: TOKEN, rateLimit: rate });
    closers.push(() => sim.close());
    const own = await freshSchema('cas_rate_e2e');
    schemas.push(own);
    // Three relays: each its own pool, outbox object, limiter, client and pusher; one database.
    const relays = await Promise.all(
      [0, 1, 2].map(async () => {
        const p = await pool(own);
        const outbox = new PgCasOutbox(p);
        await outbox.init();
        const lim = await limiter(p, rate);
        const client = new CasClient({ token: TOKEN, url: sim.url, limiter: lim, retry: { maxAttempts: 3, baseMs: 5, maxMs: 20, totalMs: 20_000 } });
        // One entry per round, so every entry costs one request and the relays compete for slots.
        const pusher = new CasPusher({ outbox, client, claimLimit: 1, intervalMs: 20, schedule: { maxAttempts: 10, baseMs: 50, maxMs: 200 } });
        closers.push(async () => {
          await pusher.stop();
          await client.close();
          await lim.settle();
        });
        return { outbox, pusher, lim };
      }),
    );
    const values = Array.from({ length: 18 }, (_, i) => `s${i}@spam.example`);
    await relays[0]!.outbox.enqueue(values.map((value) => ({ list: 'senders' as const, value, action: 'create' as const, reason: 'test' })));
    for (const r of relays) r.pusher.start();
    // 18 requests at 4 a second need about 4.5 s; the bound leaves room for a loaded machine.
    await until('every entry pushed', async () => (await relays[0]!.outbox.stats()).pending === 0 && sim.list('senders').length === 18, 30_000);

    const posts = sim.requestLog.filter((e) => e.method === 'POST');
    expect(sim.list('senders')).toEqual([...values].sort());
    expect(sim.requestLog.filter((e) => e.status === 429)).toEqual([]);
    expect(maxInWindow(sim.requestLog, rate.windowMs)).toBeLessThanOrEqual(rate.limit);
    expect(posts.length).toBeGreaterThanOrEqual(18);
  }, 45_000);

  it('a slot taken by one relay is not handed to another until a window after its release', async () => {
    const rate = { limit: 1, windowMs: 60_000 };
    const bucket = `test:${schema}:hold`;
    const a = await limiter(await pool(schema), rate, 5_000, bucket);
    const b = await limiter(await pool(schema), rate, 5_000, bucket);
    const release = await a.acquire();
    await expect(b.acquire(AbortSignal.timeout(300))).rejects.toThrow();
    release();
    await a.settle();
    // Released, but the window counts from the response: still nothing for b.
    await expect(b.acquire(AbortSignal.timeout(300))).rejects.toThrow();
  });

  it('a relay that dies holding a slot gives it back after lease + window, not never', async () => {
    const rate = { limit: 1, windowMs: 200 };
    const bucket = `test:${schema}:lease`;
    const dead = await limiter(await pool(schema), rate, 300, bucket);
    await dead.acquire(); // never released: the relay "crashed" mid-request
    const b = await limiter(await pool(schema), rate, 300, bucket);
    await expect(b.acquire(AbortSignal.timeout(150))).rejects.toThrow();
    const rel = await b.acquire(AbortSignal.timeout(10_000));
    rel();
    await b.settle();
  });

  it('a 429 seen by one relay pauses the others', async () => {
    const rate = { limit: 5, windowMs: 100 };
    const bucket = `test:${schema}:pause`;
    const a = await limiter(await pool(schema), rate, 5_000, bucket);
    const b = await limiter(await pool(schema), rate, 5_000, bucket);
    a.pauseFor(60_000);
    await a.settle();
    await expect(b.acquire(AbortSignal.timeout(300))).rejects.toThrow();
    expect(b.queued).toBe(0);
  });

  it('keeps exactly `limit` slots for a bucket when the configured limit changes', async () => {
    const bucket = `test:${schema}:resize`;
    const p = await pool(schema);
    await limiter(p, { limit: 6, windowMs: 1_000 }, 5_000, bucket);
    await limiter(p, { limit: 2, windowMs: 1_000 }, 5_000, bucket);
    const { rows } = await p.query<{ n: string }>('SELECT count(*) AS n FROM cas_rate_slots WHERE bucket = $1', [bucket]);
    expect(Number(rows[0]!.n)).toBe(2);
  });

  it('stores no token, only its hash', () => {
    expect(casBucketFor(TOKEN)).toMatch(/^token:[0-9a-f]{16}$/);
    expect(casBucketFor(TOKEN)).not.toContain(TOKEN);
    expect(casBucketFor('other')).not.toBe(casBucketFor(TOKEN));
  });
});
