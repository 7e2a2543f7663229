// Blocked-list outbox + pusher against the CAS simulator, on both backends: chunking, outages, restarts, competing relays, TTL, failures.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import pg from 'pg';
import { CasClient, CasError, type CasApi } from '../../src/cas/client.js';
import {
  CasPusher,
  FsCasOutbox,
  PgCasOutbox,
  chunkRequests,
  type CasOutbox,
  type CasOutboxEntry,
  type CasOutboxItem,
  type CasPusherOptions,
} from '../../src/cas/outbox.js';
import { casOutbox } from '../../src/cas/cli.js';
import { startCasSim, type CasSim, type CasSimOptions } from '../sim/cas/server.js';
import type { CasList, CasRuleAction } from '../../src/cas/items.js';

const TOKEN = 'outbox-test-token';
const PG = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' };

interface Backend {
  name: 'fs' | 'pg';
  /** A new outbox object on the same store: what a restarted relay (or a second relay) gets. */
  open(): Promise<CasOutbox>;
  cleanup(): Promise<void>;
}

function fsBackend(): Backend {
  const dir = mkdtempSync(join(tmpdir(), 'cas-outbox-'));
  const opened: CasOutbox[] = [];
  return {
    name: 'fs',
    async open() {
      const o = new FsCasOutbox(join(dir, 'outbox'));
      await o.init();
      opened.push(o);
      return o;
    },
    async cleanup() {
      for (const o of opened) await o.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function pgBackend(): Backend {
  const schema = `cas_test_${randomBytes(6).toString('hex')}`;
  const pools: pg.Pool[] = [];
  let created = false;
  return {
    name: 'pg',
    async open() {
      if (!created) {
        const admin = new pg.Client(PG);
        await admin.connect();
        await admin.query(`CREATE SCHEMA ${schema}`);
        await admin.end();
        created = true;
      }
      const pool = new pg.Pool({ ...PG, max: 4, options: `-c search_path=${schema}` });
      pools.push(pool);
      const o = new PgCasOutbox(pool);
      await o.init();
      return o;
    },
    async cleanup() {
      await Promise.all(pools.map((p) => p.end()));
      if (created) {
        const admin = new pg.Client(PG);
        await admin.connect();
        await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
        await admin.end();
      }
    },
  };
}

const sims: CasSim[] = [];
const clients: CasClient[] = [];

async function sim(opts: Partial<CasSimOptions> = {}): Promise<CasSim> {
  const s = await startCasSim({ token: TOKEN, rateLimit: { limit: 1000, windowMs: 60_000 }, ...opts });
  sims.push(s);
  return s;
}

function client(s: CasSim | string): CasClient {
  const c = new CasClient({
    token: TOKEN,
    url: typeof s === 'string' ? s : s.url,
    rate: { limit: 200, windowMs: 1_000 },
    retry: { maxAttempts: 2, baseMs: 5, maxMs: 20, totalMs: 5_000 },
    timeouts: { connectMs: 1_000, headersMs: 3_000, bodyMs: 3_000, requestMs: 5_000 },
  });
  clients.push(c);
  return c;
}

/** Test clock: real time plus an offset the test moves forward to make backoffs and TTLs expire. */
let offset = 0;
const now = () => Date.now() + offset;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

function pusher(outbox: CasOutbox, c: Pick<CasApi, 'updateBlockedLists' | 'getBlockedLists'>, opts: Partial<CasPusherOptions> = {}): CasPusher {
  return new CasPusher({ outbox, client: c, now, schedule: { maxAttempts: 5, baseMs: 1_000, maxMs: 2_000 }, ...opts });
}

const items = (list: CasList, values: string[], action: CasRuleAction = 'create'): CasOutboxItem[] =>
  values.map((value) => ({ list, value, action, reason: 'test' }));

const senders = (n: number, tag = 's') => Array.from({ length: n }, (_, i) => `${tag}${i}@spam${i % 7}.example`);

/** How often each value went out in successful remediation requests with `action`. */
function pushedCounts(s: CasSim, action: CasRuleAction): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of s.requestLog) {
    if (e.method !== 'POST' || e.path !== '/v1/remediation/mails' || e.actionType !== action || e.status < 200 || e.status > 299) continue;
    for (const values of Object.values(e.rules ?? {})) for (const v of values ?? []) m.set(v, (m.get(v) ?? 0) + 1);
  }
  return m;
}

const posts = (s: CasSim) => s.requestLog.filter((e) => e.method === 'POST' && e.path === '/v1/remediation/mails');

afterEach(async () => {
  offset = 0;
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(sims.splice(0).map((s) => s.close()));
});

describe('chunkRequests', () => {
  it('puts slice i of every list into request i, at most 2,048 per list', () => {
    const mk = (list: CasList, n: number): CasOutboxEntry[] =>
      Array.from({ length: n }, (_, i) => ({
        id: `${list}${i}`,
        list,
        value: `${i}`,
        action: 'create',
        reason: '',
        status: 'inflight',
        attempts: 0,
        lastError: null,
        nextAttemptAt: 0,
        createdAt: 0,
        updatedAt: 0,
      }));
    const chunks = chunkRequests([...mk('senders', 5000), ...mk('filehashes', 10), ...mk('urls', 2048)]);
    expect(chunks.map((c) => [c.rules.senders?.length, c.rules.filehashes?.length, c.rules.urls?.length])).toEqual([
      [2048, 10, 2048],
      [2048, undefined, undefined],
      [904, undefined, undefined],
    ]);
  });
});

describe.each([
  ['fs', fsBackend],
  ['pg', pgBackend],
] as const)('%s outbox', (_name, makeBackend) => {
  let backend: Backend;
  beforeEach(() => {
    backend = makeBackend();
  });
  afterEach(async () => {
    await backend.cleanup();
  });

  it('of 5,000 distinct senders pushes 2,048 in one request and holds back the rest: a list takes no more (issue 10 §6)', async () => {
    const s = await sim();
    const ob = await backend.open();
    const values = senders(5000);
    await ob.enqueue(items('senders', values));
    expect(await ob.stats()).toEqual({ pending: 5000, failed: 0, done: 0 });
    const report = await pusher(ob, client(s)).runOnce();
    expect(report).toMatchObject({ requests: 1, pushed: 2048, deferred: 2952, failed: 0 });
    expect(posts(s).map((e) => e.counts?.senders ?? 0)).toEqual([2048]);
    expect(s.state.blocked.senders.size).toBe(2048);
    expect([...pushedCounts(s, 'create').values()].every((n) => n === 1)).toBe(true);
    expect(await ob.stats()).toEqual({ pending: 2952, failed: 0, done: 2048 });
  });

  it('de-duplicates, lets the last intent win, and suppresses a repeat of what was just pushed', async () => {
    const s = await sim();
    const ob = await backend.open();
    await ob.enqueue([...items('senders', ['Dup@Evil.example', 'dup@evil.example']), ...items('senders', ['not an address'])]);
    await ob.enqueue(items('senders', ['dup@evil.example', 'flip@evil.example']));
    await ob.enqueue(items('senders', ['flip@evil.example'], 'delete'));
    const open = await ob.list();
    expect(open.map((e) => `${e.action} ${e.value}`).sort()).toEqual(['create dup@evil.example', 'delete flip@evil.example']);
    await pusher(ob, client(s)).runOnce();
    await ob.enqueue(items('senders', ['dup@evil.example']));
    expect(await ob.list()).toEqual([]);
    expect(pushedCounts(s, 'create').get('dup@evil.example')).toBe(1);
  });

  it('survives a CAS outage (503, then down): enqueue keeps working and every item arrives exactly once', async () => {
    const s = await sim({ faults: { always: 503 } });
    const c = client(s);
    const ob = await backend.open();
    const p = pusher(ob, c);
    await ob.enqueue([...items('senders', senders(3, 'a')), ...items('filehashes', ['f3cdddb37f6a933d6a256bd98b4bc703a448c677'])]);
    const r1 = await p.runOnce();
    expect(r1.pushed).toBe(0);
    expect(r1.failed).toBe(4);
    const afterFirst = await ob.list();
    expect(afterFirst.every((e) => e.status === 'pending' && e.attempts === 1 && /503/.test(e.lastError ?? ''))).toBe(true);
    // Not due yet: the backoff holds them back, so no request goes out.
    const before = s.requestLog.length;
    expect((await p.runOnce()).requests).toBe(0);
    expect(s.requestLog.length).toBe(before);

    // CAS unreachable altogether; the mail path's enqueue does not care.
    const port = s.port;
    await s.close();
    sims.splice(sims.indexOf(s), 1);
    await ob.enqueue(items('senders', ['late@spam.example']));
    offset += HOUR;
    const r2 = await p.runOnce();
    expect(r2.pushed).toBe(0);
    expect((await ob.stats()).pending).toBe(5);

    const back = await sim({ port });
    offset += 2 * HOUR;
    const r3 = await p.runOnce();
    expect(r3).toMatchObject({ pushed: 5, failed: 0 });
    expect(back.list('senders')).toEqual([...senders(3, 'a'), 'late@spam.example'].sort());
    expect(back.list('filehashes')).toEqual(['f3cdddb37f6a933d6a256bd98b4bc703a448c677']);
    expect([...pushedCounts(back, 'create').values()].every((n) => n === 1)).toBe(true);
    expect(pushedCounts(s, 'create').size).toBe(0);
    offset += HOUR;
    expect((await p.runOnce()).requests).toBe(0);
    expect(await ob.stats()).toEqual({ pending: 0, failed: 0, done: 5 });
  });

  it('loses nothing and pushes nothing twice across a restart, including entries in flight at the crash', async () => {
    const s = await sim();
    const first = await backend.open();
    await first.enqueue(items('senders', senders(10, 'r')));
    // The old process claimed three entries and died before sending them.
    const claimed = await first.claim({ limit: 3, leaseMs: 60_000, now: now() });
    expect(claimed).toHaveLength(3);
    if (backend.name === 'fs') await first.close();

    const second = await backend.open();
    expect((await second.stats()).pending).toBe(10);
    const p = pusher(second, client(s), { leaseMs: 60_000 });
    const r1 = await p.runOnce();
    // PostgreSQL keeps the dead relay's lease until it runs out; the filesystem store forgot it with the process.
    expect(r1.pushed).toBe(backend.name === 'fs' ? 10 : 7);
    offset += 2 * 60_000;
    await p.runOnce();
    const counts = pushedCounts(s, 'create');
    expect(counts.size).toBe(10);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    expect(await second.stats()).toEqual({ pending: 0, failed: 0, done: 10 });
  });

  it('removes after the TTL only what the relay itself added', async () => {
    const s = await sim({ initialLists: { senders: ['manual@partner.example'], urls: ['https://keep.example'] } });
    const ob = await backend.open();
    const p = pusher(ob, client(s), { ttlDays: 1 });
    await ob.enqueue([...items('senders', ['bad@evil.example', 'manual@partner.example']), ...items('urls', ['https://keep.example/'])]);
    const r1 = await p.runOnce();
    expect(r1).toMatchObject({ pushed: 1, alreadyListed: 2 });
    expect((await ob.addedItems()).map((a) => a.value)).toEqual(['bad@evil.example']);
    expect(s.list('senders')).toEqual(['bad@evil.example', 'manual@partner.example']);

    offset += 12 * HOUR;
    expect((await p.runOnce()).expired).toBe(0);
    offset += 13 * HOUR;
    const r2 = await p.runOnce();
    expect(r2.expired).toBe(1);
    expect(s.list('senders')).toEqual(['manual@partner.example']);
    expect(s.list('urls')).toEqual(['https://keep.example']);
    const deleted = pushedCounts(s, 'delete');
    expect([...deleted.keys()]).toEqual(['bad@evil.example']);
    expect(await ob.addedItems()).toEqual([]);
    offset += 2 * DAY;
    expect((await p.runOnce()).expired).toBe(0);
  });

  it('marks entries failed after the configured attempts and the CLI puts them back', async () => {
    const s = await sim({ faults: { always: 500 } });
    const ob = await backend.open();
    const p = pusher(ob, client(s), { schedule: { maxAttempts: 2, baseMs: 1_000, maxMs: 1_000 } });
    await ob.enqueue(items('senders', ['stuck@evil.example']));
    await p.runOnce();
    offset += HOUR;
    await p.runOnce();
    expect(await ob.stats()).toEqual({ pending: 0, failed: 1, done: 0 });
    const [entry] = await ob.list({ statuses: ['failed'] });
    expect(entry).toMatchObject({ value: 'stuck@evil.example', attempts: 2, status: 'failed' });
    expect(entry?.lastError).toMatch(/HTTP 500/);

    const out = new PassThrough();
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    expect(await casOutbox({ retry: false }, out, { outbox: ob })).toBe(0);
    expect(text).toMatch(/failed 1/);
    expect(text).toMatch(/stuck@evil\.example/);
    expect(await casOutbox({ retry: true }, out, { outbox: ob })).toBe(0);
    expect(text).toMatch(/requeued 1 failed entry/);
    expect(await ob.stats()).toEqual({ pending: 1, failed: 0, done: 0 });

    s.setFaults({});
    await p.runOnce();
    expect(s.list('senders')).toEqual(['stuck@evil.example']);
    expect(await ob.stats()).toEqual({ pending: 0, failed: 0, done: 1 });
  });

  it('isolates an item CAS rejects with 400 and pushes the rest', async () => {
    const s = await sim();
    const real = client(s);
    const picky: Pick<CasApi, 'updateBlockedLists' | 'getBlockedLists'> = {
      getBlockedLists: () => real.getBlockedLists(),
      async updateBlockedLists(action, rules) {
        if (rules.senders?.includes('poison@evil.example')) {
          throw new CasError('blocked-list create', { status: 400, code: -4000001, msg: 'Invalid items', traceId: 't', retryable: false });
        }
        return real.updateBlockedLists(action, rules);
      },
    };
    const ob = await backend.open();
    await ob.enqueue(items('senders', [...senders(7, 'ok'), 'poison@evil.example']));
    const r = await pusher(ob, picky).runOnce();
    expect(r.pushed).toBe(7);
    expect(s.state.blocked.senders.size).toBe(7);
    const failed = await ob.list({ statuses: ['failed'] });
    expect(failed.map((e) => e.value)).toEqual(['poison@evil.example']);
    expect(failed[0]?.lastError).toMatch(/HTTP 400/);
  });
});

describe('two relays on one PostgreSQL outbox', () => {
  let backend: Backend;
  beforeEach(() => {
    backend = pgBackend();
  });
  afterEach(async () => {
    await backend.cleanup();
  });

  it('pushes each entry exactly once', async () => {
    const s = await sim();
    const a = await backend.open();
    const b = await backend.open();
    const values = senders(1200, 'two');
    await Promise.all([a.enqueue(items('senders', values.slice(0, 700))), b.enqueue(items('senders', values.slice(500)))]);
    expect((await a.stats()).pending).toBe(1200);
    // Small claims so the two pushers interleave over many rounds.
    const pa = pusher(a, client(s), { claimLimit: 50 });
    const pb = pusher(b, client(s), { claimLimit: 50 });
    for (let round = 0; round < 20 && (await a.stats()).pending > 0; round++) {
      const [ra, rb] = await Promise.all([pa.runOnce(), pb.runOnce()]);
      expect(ra.failed + rb.failed).toBe(0);
    }
    const counts = pushedCounts(s, 'create');
    expect(counts.size).toBe(1200);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    expect(await b.stats()).toEqual({ pending: 0, failed: 0, done: 1200 });
    const perRelay = new Set(posts(s).map((e) => e.counts?.senders));
    expect(Math.max(...[...perRelay].map((n) => n ?? 0))).toBeLessThanOrEqual(50);
  });
});

describe('fs outbox journal', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cas-journal-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a second opener of the same directory and takes over a dead process lock', async () => {
    const ob = join(dir, 'ob');
    const a = new FsCasOutbox(ob);
    await a.init();
    const b = new FsCasOutbox(ob);
    await expect(b.init()).rejects.toThrow(/already open/);
    await b.close();
    await a.close();
    // A lock left by a process that no longer exists is stale.
    const dead = spawnSync(process.execPath, ['-e', '0']).pid;
    writeFileSync(join(ob, 'outbox.lock'), `${dead}\n`);
    const c = new FsCasOutbox(ob);
    await c.init();
    await c.close();
  });

  it('cuts a torn last line left by a crash and keeps everything acknowledged', async () => {
    const ob = join(dir, 'ob');
    const a = new FsCasOutbox(ob);
    await a.enqueue(items('senders', ['one@evil.example', 'two@evil.example']));
    await a.close();
    appendFileSync(join(ob, 'journal.jsonl'), '{"t":"enq","id":3,"list":"senders","val');
    const b = new FsCasOutbox(ob);
    expect((await b.list()).map((e) => e.value)).toEqual(['one@evil.example', 'two@evil.example']);
    await b.enqueue(items('senders', ['three@evil.example']));
    await b.close();
    const c = new FsCasOutbox(ob);
    expect((await c.stats()).pending).toBe(3);
    await c.close();
  });

  it('refuses to start on a corrupt line in the middle', async () => {
    const ob = join(dir, 'ob');
    const a = new FsCasOutbox(ob);
    await a.enqueue(items('senders', ['one@evil.example']));
    await a.close();
    appendFileSync(join(ob, 'journal.jsonl'), 'garbage\n{"t":"drop","ids":[]}\n');
    const b = new FsCasOutbox(ob);
    await expect(b.init()).rejects.toThrow(/corrupt at line 2/);
    await b.close();
  });

  it('compacts a journal that is mostly history into one snapshot without losing state', async () => {
    const ob = join(dir, 'ob');
    const a = new FsCasOutbox(ob);
    // Alternating intents for one value: each call drops the previous entry, so history piles up.
    await Promise.all(Array.from({ length: 700 }, (_, i) => a.enqueue(items('senders', ['flip@evil.example'], i % 2 ? 'delete' : 'create'))));
    await a.enqueue(items('urls', ['https://stay.example/']));
    await a.close();
    const lines = () => readFileSync(join(ob, 'journal.jsonl'), 'utf8').trim().split('\n').length;
    expect(lines()).toBeGreaterThan(1000);
    const b = new FsCasOutbox(ob);
    const open = await b.list();
    expect(open.map((e) => `${e.action} ${e.value}`)).toEqual(['delete flip@evil.example', 'create https://stay.example/']);
    expect(lines()).toBe(1);
    await b.enqueue(items('senders', ['after@evil.example']));
    await b.close();
    const c = new FsCasOutbox(ob);
    expect((await c.list()).map((e) => e.value)).toEqual(['flip@evil.example', 'https://stay.example/', 'after@evil.example']);
    await c.close();
  });
});
