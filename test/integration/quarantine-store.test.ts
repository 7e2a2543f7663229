// One behavioural suite for both quarantine backends (fs and PostgreSQL), plus PostgreSQL-only checks: two relays on one database and the database going away.
import { describe, it, expect, beforeEach, afterEach, afterAll } from 'vitest';
import { PgProxy } from '../helpers/pg.js';
import { mkdtemp, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import pg from 'pg';
import { request } from 'undici';
import { silentLogger } from '../../src/observability/logger.js';
import { FsQuarantineStore } from '../../src/quarantine/fs-store.js';
import { PgQuarantineStore, createQuarantinePool } from '../../src/quarantine/pg-store.js';
import { QuarantineNotFoundError, QuarantineUnavailableError } from '../../src/quarantine/errors.js';
import { releaseMessage, type DeliverFn, type OperationsContext } from '../../src/quarantine/operations.js';
import { runRetentionOnce, startRetention } from '../../src/quarantine/retention.js';
import { createAdminServer } from '../../src/admin/server.js';
import { registerQuarantineRoutes } from '../../src/admin/quarantine-routes.js';
import type { NewQuarantineRecord, QuarantineStore } from '../../src/quarantine/types.js';
import { acceptAll } from '../helpers/deliver-report.js';

const PG_URL = 'postgres://postgres@127.0.0.1:5432/test';
const logger = silentLogger();

// ---------------------------------------------------------------------------------------------
// fixtures

function eml(subject: string, bodyBytes = 0): Buffer {
  const head = [
    'From: Alice <alice@example.com>',
    'To: Bob <bob@example.org>',
    `Subject: ${subject}`,
    'Message-ID: <m-' + randomUUID() + '@example.com>',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    '',
    'Card 4111 1111 1111 1111, please keep it safe.',
  ].join('\r\n');
  // Base64 lines of random bytes: realistic MIME, incompressible, and crosses chunk boundaries.
  const filler = bodyBytes
    ? '\r\n' +
      (
        randomBytes(bodyBytes)
          .toString('base64')
          .match(/.{1,76}/g) ?? []
      ).join('\r\n')
    : '';
  return Buffer.from(head + filler + '\r\n');
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function record(msg: Buffer, over: Partial<NewQuarantineRecord> = {}): NewQuarantineRecord {
  const id = over.id ?? randomUUID();
  return {
    id,
    queryId: id,
    receivedAt: new Date().toISOString(),
    envelope: { from: 'alice@example.com', to: [{ address: 'bob@example.org' }, { address: 'carol@example.net', notify: ['FAILURE'] }], smtpUtf8: false },
    clientAddress: '127.0.0.1',
    heloName: 'client.example.com',
    size: msg.length,
    sha256: sha256(msg),
    md5: createHash('md5').update(msg).digest('hex'),
    subject: 'Quarterly numbers',
    messageId: '<m1@example.com>',
    actionCode: 6,
    reason: 'dlp:6',
    policies: [{ name: 'PCI', severity: 3, actionSettingName: 'Quarantine', numberOfMatches: 2 }],
    instance: 'test:1',
    ...over,
  };
}

/** Chunks of odd sizes: the store must not depend on how the source happens to be cut. */
function source(msg: Buffer): () => Readable {
  return () => {
    const parts: Buffer[] = [];
    for (let i = 0, step = 1; i < msg.length; i += step, step = (step * 7 + 13) % 70_001 || 1) parts.push(msg.subarray(i, i + step));
    return Readable.from(parts);
  };
}

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Waits until the wall clock has moved past `iso`, so the next put gets a strictly later quarantinedAt (bounded). */
async function tickPast(iso: string): Promise<void> {
  for (let i = 0; i < 1000 && Date.now() <= Date.parse(iso); i++) await new Promise((r) => setTimeout(r, 2));
}

async function putAndGet(store: QuarantineStore, msg: Buffer, over: Partial<NewQuarantineRecord> = {}) {
  const rec = record(msg, over);
  await store.put(rec, source(msg));
  const got = await store.get(rec.id);
  if (!got) throw new Error('put then get returned null');
  await tickPast(got.quarantinedAt);
  return got;
}

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

// ---------------------------------------------------------------------------------------------
// backends

const schemas: string[] = [];

async function pgAdmin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function freshSchema(): Promise<string> {
  const schema = `q_test_${randomBytes(6).toString('hex')}`;
  await pgAdmin((c) => c.query(`CREATE SCHEMA ${schema}`));
  schemas.push(schema);
  return schema;
}

function schemaPool(schema: string, extra: pg.PoolConfig = {}): pg.Pool {
  return createQuarantinePool(PG_URL, { options: `-c search_path=${schema}`, max: 5, ...extra });
}

afterAll(async () => {
  if (schemas.length) await pgAdmin((c) => c.query(`DROP SCHEMA IF EXISTS ${schemas.join(', ')} CASCADE`));
});

interface Backend {
  name: string;
  make(): Promise<{ store: QuarantineStore; cleanup(): Promise<void>; dir?: string }>;
}

const backends: Backend[] = [
  {
    name: 'fs',
    async make() {
      const dir = await mkdtemp(join(tmpdir(), 'q-store-'));
      const store = new FsQuarantineStore(join(dir, 'q'));
      await store.init();
      return { store, dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
    },
  },
  {
    name: 'postgres',
    async make() {
      const pool = schemaPool(await freshSchema());
      const store = new PgQuarantineStore(pool, { logger });
      await store.init();
      return {
        store,
        cleanup: async () => {
          await store.close();
          await pool.end();
        },
      };
    },
  },
];

// ---------------------------------------------------------------------------------------------
// the shared suite

describe.each(backends)('quarantine store: $name', (backend) => {
  let store: QuarantineStore;
  let cleanup: () => Promise<void>;
  let dir: string | undefined;

  beforeEach(async () => {
    ({ store, cleanup, dir } = await backend.make());
  });
  afterEach(async () => {
    await cleanup();
  });

  it('stores and returns a message byte for byte, metadata intact', async () => {
    // Several 256 KiB chunks in postgres, and raw 8-bit bytes too: the store must never pass bytes through a text codec.
    const msg = Buffer.concat([eml('big one', 400 * 1024), randomBytes(300 * 1024)]);
    const rec = record(msg);
    await store.put(rec, source(msg));
    const got = await store.get(rec.id);
    expect(got).toMatchObject({ ...rec, status: 'held' });
    expect(got!.release ?? null).toBeNull();
    expect(got!.releaseClaim ?? null).toBeNull();
    expect(Number.isNaN(Date.parse(got!.quarantinedAt))).toBe(false);
    const back = await readAll(store.openMessage(rec.id));
    expect(sha256(back)).toBe(rec.sha256);
    expect(back.length).toBe(msg.length);
  });

  it('keeps small and empty messages exact too', async () => {
    for (const msg of [Buffer.from('Subject: x\r\n\r\nhi\r\n'), Buffer.alloc(0)]) {
      const rec = record(msg);
      await store.put(rec, source(msg));
      expect(sha256(await readAll(store.openMessage(rec.id)))).toBe(sha256(msg));
    }
  });

  it('rejects a put whose source fails and leaves nothing visible', async () => {
    const rec = record(eml('broken'));
    const failing = () =>
      new Readable({
        read() {
          this.destroy(new Error('spool read failed'));
        },
      });
    await expect(store.put(rec, failing)).rejects.toThrow();
    expect(await store.get(rec.id)).toBeNull();
    expect((await store.list({})).items).toHaveLength(0);
  });

  it('answers unknown ids with null / not-found', async () => {
    const id = randomUUID();
    expect(await store.get(id)).toBeNull();
    await expect(readAll(store.openMessage(id))).rejects.toBeInstanceOf(QuarantineNotFoundError);
    expect(await store.delete(id)).toBe('not-found');
    expect(await store.claimRelease(id, { actor: 't' })).toEqual({ status: 'not-found' });
  });

  it('never turns traversal-looking ids into paths or queries', async () => {
    const msg = eml('x');
    await putAndGet(store, msg);
    const bad = [
      '../etc/passwd',
      '..%2F..%2Fetc%2Fpasswd',
      '/etc/passwd',
      'a/../../b',
      '',
      '.',
      '..',
      'ABCDEF00-0000-0000-0000-000000000000',
      `${randomUUID()}/../x`,
      "1' OR '1'='1",
      'x\u0000y',
    ];
    for (const id of bad) {
      expect(await store.get(id)).toBeNull();
      await expect(readAll(store.openMessage(id))).rejects.toBeInstanceOf(QuarantineNotFoundError);
      expect(await store.delete(id)).toBe('not-found');
      expect(await store.claimRelease(id, { actor: 't' })).toEqual({ status: 'not-found' });
    }
    await expect(store.put(record(msg, { id: '../../escape' }), source(msg))).rejects.toThrow();
    if (dir) {
      // Nothing was created next to the store directory.
      expect((await readdir(dir)).sort()).toEqual(['q']);
    }
    expect((await store.list({})).items).toHaveLength(1);
  });

  it('filters by time, sender, recipient, actionCode, policy and status', async () => {
    const a = await putAndGet(store, eml('a'), { envelope: { from: 'Alice@Example.com', to: [{ address: 'bob@example.org' }], smtpUtf8: false } });
    const b = await putAndGet(store, eml('b'), {
      envelope: { from: 'dave@example.com', to: [{ address: 'erin@example.org' }, { address: 'BOB@example.org' }], smtpUtf8: false },
      actionCode: 2,
      policies: [{ name: 'HR', severity: 1, actionSettingName: null, numberOfMatches: 1 }],
    });
    const c = await putAndGet(store, eml('c'), {
      envelope: { from: '', to: [{ address: 'postmaster@example.org' }], smtpUtf8: false },
      actionCode: null,
      policies: [],
      reason: 'dlp-error:timeout',
    });
    const ids = async (f: Parameters<QuarantineStore['list']>[0]) => (await store.list(f)).items.map((r) => r.id);

    expect(await ids({})).toEqual([c.id, b.id, a.id]);
    expect(await ids({ sender: 'alice@example.com' })).toEqual([a.id]);
    expect(await ids({ sender: '' })).toEqual([c.id]);
    expect(await ids({ recipient: 'bob@example.org' })).toEqual([b.id, a.id]);
    expect(await ids({ actionCode: 2 })).toEqual([b.id]);
    expect(await ids({ actionCode: null })).toEqual([c.id]);
    expect(await ids({ policy: 'PCI' })).toEqual([a.id]);
    expect(await ids({ policy: 'pci' })).toEqual([]);
    expect(await ids({ from: new Date(b.quarantinedAt) })).toEqual([c.id, b.id]);
    expect(await ids({ to: new Date(b.quarantinedAt) })).toEqual([a.id]);
    expect(await ids({ from: new Date(a.quarantinedAt), to: new Date(c.quarantinedAt) })).toEqual([b.id, a.id]);

    const claim = await store.claimRelease(b.id, { actor: 'tester' });
    expect(claim.status).toBe('claimed');
    if (claim.status !== 'claimed') return;
    await store.completeRelease(b.id, claim.token, { at: new Date().toISOString(), by: 'tester', recipients: ['erin@example.org'], response: '250 ok' });
    expect(await ids({ status: 'released' })).toEqual([b.id]);
    expect(await ids({ status: 'held' })).toEqual([c.id, a.id]);
    expect(await ids({ status: 'deleted' })).toEqual([]);
  });

  it('pages newest first with a stable cursor, even while messages arrive', async () => {
    const put: string[] = [];
    for (let i = 0; i < 7; i++) put.push((await putAndGet(store, eml(`m${i}`))).id);
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    for (; pages < 10; pages++) {
      const page = await store.list({ limit: 3, ...(cursor ? { cursor } : {}) });
      seen.push(...page.items.map((r) => r.id));
      if (pages === 0) await putAndGet(store, eml('late arrival')); // newer than everything: must not shift later pages
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    expect(pages).toBe(2);
    expect(seen).toEqual([...put].reverse());
    expect((await store.list({ limit: 1000 })).items).toHaveLength(8); // clamped to 500, all fit
    await expect(store.list({ cursor: 'not-a-cursor' })).rejects.toThrow(/cursor/);
  });

  it('deletes bytes and metadata', async () => {
    const got = await putAndGet(store, eml('del'));
    expect(await store.delete(got.id)).toBe('deleted');
    expect(await store.get(got.id)).toBeNull();
    await expect(readAll(store.openMessage(got.id))).rejects.toBeInstanceOf(QuarantineNotFoundError);
    expect(await store.delete(got.id)).toBe('not-found');
    expect((await store.list({})).items).toHaveLength(0);
  });

  it('purges by age and reports the ids it deleted', async () => {
    const old = await putAndGet(store, eml('old'));
    const mid = await putAndGet(store, eml('mid'));
    const fresh = await putAndGet(store, eml('fresh'));
    expect(await store.purge(new Date(old.quarantinedAt))).toEqual([]); // strictly older only
    expect(await store.purge(new Date(mid.quarantinedAt))).toEqual([old.id]);
    expect(await store.get(old.id)).toBeNull();
    expect((await store.list({})).items.map((r) => r.id)).toEqual([fresh.id, mid.id]);
    expect((await store.purge(new Date(Date.now() + 60_000))).sort()).toEqual([fresh.id, mid.id].sort());
    expect((await store.list({})).items).toHaveLength(0);
  });

  it('keeps an append-only audit trail, newest first, filterable and paged', async () => {
    const target = randomUUID();
    await store.audit({ actor: 'cli:root', action: 'show', target, result: 'ok', source: 'host' });
    await store.audit({ actor: 'admin-api', action: 'release', target, result: 'failed', detail: 'x'.repeat(5000), source: '127.0.0.1' });
    await store.audit({ actor: 'retention', action: 'purge', target: null, result: 'ok' });
    const all = await store.listAudit({});
    expect(all.items.map((a) => a.action)).toEqual(['purge', 'release', 'show']);
    expect(all.items[1]).toMatchObject({ actor: 'admin-api', target, result: 'failed', source: '127.0.0.1' });
    expect(all.items[1]!.detail!.length).toBeLessThan(2100);
    expect(all.items[0]!.target).toBeNull();
    expect((await store.listAudit({ target })).items).toHaveLength(2);
    expect((await store.listAudit({ actor: 'retention' })).items).toHaveLength(1);
    const p1 = await store.listAudit({ limit: 2 });
    expect(p1.items).toHaveLength(2);
    const p2 = await store.listAudit({ limit: 2, cursor: p1.nextCursor! });
    expect(p2.items.map((a) => a.action)).toEqual(['show']);
    expect(p2.nextCursor).toBeNull();
  });

  it('delivers once when two releases race, and never again afterwards', async () => {
    const msg = eml('race', 300 * 1024);
    const got = await putAndGet(store, msg);
    let deliveries = 0;
    const delivered: Buffer[] = [];
    const firstSettled = deferred();
    const twoDeliveries = deferred();
    // Slow on purpose: it holds the delivery open until the other release has answered, so the two truly overlap.
    const deliver: DeliverFn = async (env, open) => {
      deliveries++;
      if (deliveries >= 2) twoDeliveries.resolve();
      delivered.push(await readAll(open()));
      await Promise.race([firstSettled.promise, twoDeliveries.promise]);
      expect(env.to.map((r) => r.address)).toEqual(['bob@example.org', 'carol@example.net']);
      return acceptAll(env, '250 2.0.0 queued');
    };
    const ctx: OperationsContext = { store, deliver, logger };
    const one = () => releaseMessage(ctx, { name: 'tester' }, got.id).finally(() => firstSettled.resolve());
    const results = await Promise.all([one(), one()]);
    expect(deliveries).toBe(1);
    const statuses = results.map((r) => r.status).sort();
    expect(statuses[1]).toBe('released');
    expect(['already-released', 'in-progress']).toContain(statuses[0]);

    // The released copy is the original plus exactly one header line on top.
    const out = delivered[0]!;
    const firstLine = out.subarray(0, out.indexOf('\r\n') + 2).toString();
    expect(firstLine).toMatch(/^X-DLP-Released: \d{4}-\d\d-\d\dT[\d:.]+Z by tester \(ref [0-9a-f-]{36}\)\r\n$/);
    expect(sha256(out.subarray(firstLine.length))).toBe(got.sha256);

    const after = await store.get(got.id);
    expect(after).toMatchObject({ status: 'released', release: { by: 'tester', response: '250 2.0.0 queued' } });
    expect(await releaseMessage(ctx, { name: 'tester' }, got.id)).toMatchObject({ status: 'already-released' });
    expect(await store.claimRelease(got.id, { actor: 'x', claimTtlMs: -1 })).toMatchObject({ status: 'already-released' });
    expect(deliveries).toBe(1);
  });

  it('drops the claim when delivery fails, so a retry can deliver', async () => {
    const got = await putAndGet(store, eml('retry'));
    let calls = 0;
    const deliver: DeliverFn = async (env, open) => {
      calls++;
      await readAll(open());
      if (calls === 1) throw new Error('451 4.4.1 next hop unavailable');
      return acceptAll(env, '250 ok');
    };
    const ctx: OperationsContext = { store, deliver, logger };
    expect(await releaseMessage(ctx, { name: 't' }, got.id)).toMatchObject({
      status: 'undelivered',
      complete: false,
      recipients: [
        { address: 'bob@example.org', status: 'deferred', code: 0 },
        { address: 'carol@example.net', status: 'deferred', code: 0 },
      ],
    });
    const held = await store.get(got.id);
    expect(held).toMatchObject({ status: 'held' });
    expect(held!.releaseClaim ?? null).toBeNull();
    expect(await releaseMessage(ctx, { name: 't' }, got.id)).toMatchObject({ status: 'released' });
    expect(calls).toBe(2);
    const audit = (await store.listAudit({ target: got.id, action: 'release' })).items.map((a) => a.result);
    expect(audit).toEqual(['ok', 'failed']);
  });

  it('releases to a subset or a redirect address, refuses other recipients, honours a blocking re-scan', async () => {
    const got = await putAndGet(store, eml('subset'));
    const envs: string[][] = [];
    const deliver: DeliverFn = async (env, open) => {
      await readAll(open());
      envs.push(env.to.map((r) => r.address));
      return acceptAll(env, '250 ok');
    };
    const blocking = async () => ({ actionCode: 2, allow: false, detail: 'still PCI' });
    const ctx: OperationsContext = { store, deliver, logger, rescan: blocking };
    expect(await releaseMessage(ctx, { name: 't' }, got.id, { recipients: ['mallory@evil.example'] })).toMatchObject({ status: 'invalid' });
    expect(await releaseMessage(ctx, { name: 't' }, got.id, { recipients: ['x@y.z'], redirectTo: 'a@b.c' })).toMatchObject({ status: 'invalid' });
    expect(await releaseMessage(ctx, { name: 't' }, got.id, { redirectTo: 'not an address' })).toMatchObject({ status: 'invalid' });
    expect(await releaseMessage(ctx, { name: 't' }, got.id, { rescan: true })).toMatchObject({ status: 'blocked', rescan: { actionCode: 2 } });
    expect(envs).toEqual([]);
    expect((await store.get(got.id))!.releaseClaim ?? null).toBeNull();
    expect(await releaseMessage(ctx, { name: 't' }, got.id, { recipients: ['CAROL@example.net'] })).toMatchObject({
      status: 'released',
      recipients: [{ address: 'carol@example.net', status: 'accepted' }],
      complete: false,
      pending: ['bob@example.org'],
    });
    const other = await putAndGet(store, eml('redirect'));
    expect(await releaseMessage(ctx, { name: 't' }, other.id, { redirectTo: 'review@example.com' })).toMatchObject({ status: 'released' });
    expect(envs).toEqual([['carol@example.net'], ['review@example.com']]);
  });

  it('lets a stale claim (crash mid-release) be taken over, and the old holder can no longer complete', async () => {
    const got = await putAndGet(store, eml('stale'));
    const first = await store.claimRelease(got.id, { actor: 'crashed' });
    expect(first.status).toBe('claimed');
    expect(await store.claimRelease(got.id, { actor: 'other' })).toMatchObject({ status: 'in-progress', record: { releaseClaim: { by: 'crashed' } } });
    expect(await store.delete(got.id)).toBe('in-progress');
    const second = await store.claimRelease(got.id, { actor: 'rescuer', claimTtlMs: -1 });
    expect(second.status).toBe('claimed');
    if (first.status !== 'claimed' || second.status !== 'claimed') return;
    await expect(store.completeRelease(got.id, first.token, { at: '', by: 'crashed', recipients: [], response: '' })).rejects.toThrow();
    await store.abandonRelease(got.id, first.token); // no effect: not the holder
    expect((await store.get(got.id))!.releaseClaim).toMatchObject({ by: 'rescuer' });
    await store.abandonRelease(got.id, second.token);
    expect((await store.get(got.id))!.releaseClaim ?? null).toBeNull();
  });

  it('purges through retention, audited as "retention" with one entry per deleted id', async () => {
    const r1 = await putAndGet(store, eml('r1'));
    const r2 = await putAndGet(store, eml('r2'));
    const future = () => new Date(Date.now() + 40 * 86_400_000);
    expect(await runRetentionOnce(store, 30, logger)).toBe(0);
    const stop = startRetention(store, { days: 30, intervalMs: 20, now: future }, logger);
    try {
      for (let i = 0; i < 500 && (await store.list({})).items.length > 0; i++) await new Promise((r) => setTimeout(r, 10));
    } finally {
      await stop();
    }
    expect((await store.list({})).items).toHaveLength(0);
    const purges = (await store.listAudit({ actor: 'retention' })).items;
    expect(purges.some((a) => a.action === 'purge' && a.target === null && /2 deleted/.test(a.detail ?? ''))).toBe(true);
    expect(
      purges
        .filter((a) => a.target !== null)
        .map((a) => a.target)
        .sort(),
    ).toEqual([r1.id, r2.id].sort());
    // Each id can be looked up on its own: "where did this message go?"
    const one = (await store.listAudit({ target: r1.id, action: 'purge' })).items;
    expect(one).toHaveLength(1);
    expect(one[0]).toMatchObject({ actor: 'retention', result: 'ok' });
  });
});

// ---------------------------------------------------------------------------------------------
// PostgreSQL only

describe('quarantine store: postgres, several relays and failures', () => {
  it('two relays on one database see each other and a shared release delivers once', async () => {
    const schema = await freshSchema();
    const poolA = schemaPool(schema);
    const poolB = schemaPool(schema);
    const a = new PgQuarantineStore(poolA, { logger });
    const b = new PgQuarantineStore(poolB, { logger });
    try {
      await Promise.all([a.init(), b.init()]); // concurrent migrations serialise on the advisory lock
      const msg = eml('shared', 400 * 1024);
      const rec = record(msg);
      await a.put(rec, source(msg));
      expect((await b.list({})).items.map((r) => r.id)).toEqual([rec.id]);
      expect(sha256(await readAll(b.openMessage(rec.id)))).toBe(rec.sha256);

      let deliveries = 0;
      const firstSettled = deferred();
      const twoDeliveries = deferred();
      const deliver: DeliverFn = async (env, open) => {
        deliveries++;
        if (deliveries >= 2) twoDeliveries.resolve();
        await readAll(open());
        await Promise.race([firstSettled.promise, twoDeliveries.promise]);
        return acceptAll(env, '250 ok');
      };
      const results = await Promise.all(
        [a, b].map((store) =>
          releaseMessage({ store, deliver, logger }, { name: 'admin-api', source: store === a ? 'relay-a' : 'relay-b' }, rec.id).finally(() =>
            firstSettled.resolve(),
          ),
        ),
      );
      expect(deliveries).toBe(1);
      expect(results.filter((r) => r.status === 'released')).toHaveLength(1);
      expect((await a.get(rec.id))!.status).toBe('released');
      expect((await b.listAudit({ target: rec.id })).items.length).toBe(2);
    } finally {
      await a.close();
      await b.close();
      await poolA.end();
      await poolB.end();
    }
  });

  it('streams a large message in chunk by chunk, never holding more than about one chunk', async () => {
    const schema = await freshSchema();
    const pool = schemaPool(schema);
    const store = new PgQuarantineStore(pool, { logger });
    try {
      await store.init();
      const piece = 64 * 1024;
      const pieces = 256; // 16 MiB
      let produced = 0;
      let inserted = 0;
      let worstAhead = 0;
      const hash = createHash('sha256');
      // Watch every chunk INSERT: how far ahead of the database has the source been read?
      pool.on('acquire', (client) => {
        const original = client.query.bind(client) as (...a: unknown[]) => unknown;
        (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...args: unknown[]) => {
          const [text, values] = args as [unknown, unknown[] | undefined];
          if (typeof text === 'string' && text.startsWith('INSERT INTO quarantine_chunks')) {
            worstAhead = Math.max(worstAhead, produced - inserted);
            inserted += (values![2] as Buffer).length;
          }
          return original(...args);
        };
      });
      async function* gen(): AsyncGenerator<Buffer> {
        for (let i = 0; i < pieces; i++) {
          const b = randomBytes(piece);
          hash.update(b);
          produced += b.length;
          yield b;
        }
      }
      const rec = record(Buffer.alloc(0), { size: piece * pieces });
      await store.put(rec, () => Readable.from(gen(), { objectMode: false }));
      expect(inserted).toBe(piece * pieces);
      // One chunk being assembled plus the stream's own small read-ahead; never the message.
      expect(worstAhead).toBeLessThanOrEqual(256 * 1024 + 4 * piece);
      const back = createHash('sha256');
      let biggest = 0;
      for await (const c of store.openMessage(rec.id)) {
        back.update(c as Buffer);
        biggest = Math.max(biggest, (c as Buffer).length);
      }
      expect(back.digest('hex')).toBe(hash.digest('hex'));
      expect(biggest).toBeLessThanOrEqual(256 * 1024);
    } finally {
      await store.close();
      await pool.end();
    }
  });

  it('rejects (never hangs) when the database goes away, readiness fails, the admin API answers 503, and it recovers', async () => {
    const schema = await freshSchema();
    const proxy = new PgProxy();
    const port = await proxy.listen();
    const pool = createQuarantinePool(`postgres://postgres@127.0.0.1:${port}/test`, {
      options: `-c search_path=${schema}`,
      max: 4,
      connectionTimeoutMillis: 1_000,
      query_timeout: 2_000,
      statement_timeout: 2_000,
    });
    const store = new PgQuarantineStore(pool, { logger, probeTimeoutMs: 1_000 });
    const admin = createAdminServer({ host: '127.0.0.1', port: 0, token: 'test-token-0123456789', logger });
    registerQuarantineRoutes(admin, { store, logger });
    const { url } = await admin.listen();
    const list = () => request(`${url}/api/v1/quarantine`, { headers: { authorization: 'Bearer test-token-0123456789' } });
    try {
      await store.init();
      const msg = eml('before', 64 * 1024);
      await store.put(record(msg), source(msg));
      await store.checkWritable();
      expect((await list()).statusCode).toBe(200);

      // Black hole: TCP still accepts, nothing answers. Timeouts must turn every call into a rejection.
      proxy.mode = 'blackhole';
      const r1 = record(msg);
      await expect(store.put(r1, source(msg))).rejects.toBeInstanceOf(QuarantineUnavailableError);
      await expect(store.checkWritable()).rejects.toBeInstanceOf(QuarantineUnavailableError);
      const res = await list();
      expect(res.statusCode).toBe(503);
      expect(await res.body.text()).toBe('{"error":"store unavailable"}');

      // Back: the pool replaces broken connections and the rejected message was never half-stored.
      proxy.mode = 'forward';
      let ok = false;
      for (let i = 0; i < 20 && !ok; i++)
        ok = await store.checkWritable().then(
          () => true,
          () => false,
        );
      expect(ok).toBe(true);
      expect(await store.get(r1.id)).toBeNull();
      await store.put(r1, source(msg));
      expect((await store.list({})).items).toHaveLength(2);

      // Gone for good: connections are cut and refused.
      await proxy.close();
      await expect(store.put(record(msg), source(msg))).rejects.toBeInstanceOf(QuarantineUnavailableError);
      await expect(store.checkWritable()).rejects.toBeInstanceOf(QuarantineUnavailableError);
      const res2 = await list();
      expect(res2.statusCode).toBe(503);
      expect(await res2.body.text()).toBe('{"error":"store unavailable"}');
      const show = await request(`${url}/api/v1/quarantine/${r1.id}`, { headers: { authorization: 'Bearer test-token-0123456789' } });
      expect(show.statusCode).toBe(503);
      await show.body.dump();
    } finally {
      await admin.close();
      await store.close();
      await pool.end().catch(() => {});
      await proxy.close().catch(() => {});
    }
  });
});
