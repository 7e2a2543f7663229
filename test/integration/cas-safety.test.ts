// Issue 10 §6: CAS never blocks our own users by default, and a full blocked list stops pushes without a retry storm (fs and PostgreSQL outboxes, requests counted at the CAS simulator).
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import pg from 'pg';
import { loadConfig, ConfigError } from '../../src/config/load.js';
import { CasClient } from '../../src/cas/client.js';
import { CasPusher, FsCasOutbox, PgCasOutbox, type CasOutbox } from '../../src/cas/outbox.js';
import { LIST_FULL_RECHECK_MS } from '../../src/cas/capacity.js';
import { startCasSim, type CasSim, type CasSimOptions } from '../sim/cas/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { startChain, eventually, message, sendMessage, type Chain } from '../helpers/chain.js';
import { testTempDir } from '../helpers/tmp.js';

const TOKEN = 'cas-safety-token-0123456789abcdef';
const PG = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' };
const casEnv = { DLP_RELAY_CAS_TOKEN: TOKEN, DLP_RELAY_CAS_URL: 'http://127.0.0.1:1' };

function problems(overrides: Record<string, unknown>): Array<{ path: string; message: string }> {
  try {
    loadConfig({ file: '/dev/null', env: casEnv, overrides });
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

describe('CAS exemptions at start', () => {
  it('sender pushing with no exempt domain is a config error naming the keys', () => {
    const p = problems({ cas: { enabled: true } });
    // The shipped config/default.yaml, as an admin starts from it, is refused the same way.
    expect(() => loadConfig({ env: casEnv, overrides: { cas: { enabled: true } } })).toThrow(/cas\.exemptDomains/);
    expect(p.map((x) => x.path)).toEqual(['cas.exemptDomains']);
    expect(p[0]!.message).toMatch(/policy\.localDomains/);
    expect(p[0]!.message).toMatch(/cas\.allowEmptyExemptions: true/);
  });

  it('cas.exemptDomains defaults to policy.localDomains (empty counts as unset); an explicit list wins; allowEmptyExemptions starts without', () => {
    expect(
      loadConfig({ file: '/dev/null', env: casEnv, overrides: { policy: { localDomains: ['corp.example'] }, cas: { enabled: true, exemptDomains: [] } } }).cas
        .exemptDomains,
    ).toEqual(['corp.example']);
    expect(
      loadConfig({ file: '/dev/null', env: casEnv, overrides: { policy: { localDomains: ['corp.example'] }, cas: { enabled: true } } }).cas.exemptDomains,
    ).toEqual(['corp.example']);
    expect(
      loadConfig({
        file: '/dev/null',
        env: casEnv,
        overrides: { policy: { localDomains: ['corp.example'] }, cas: { enabled: true, exemptDomains: ['other.example'] } },
      }).cas.exemptDomains,
    ).toEqual(['other.example']);
    expect(loadConfig({ file: '/dev/null', env: casEnv, overrides: { cas: { enabled: true, allowEmptyExemptions: true } } }).cas.exemptDomains).toEqual([]);
    // Without sender pushing there is nothing to exempt.
    expect(problems({ cas: { enabled: true, push: { sender: false, attachmentHashes: true } } })).toEqual([]);
  });
});

describe('relay with policy.localDomains', () => {
  let chain: Chain | undefined;
  let cas: CasSim | undefined;
  afterEach(async () => {
    await chain?.close();
    await cas?.close();
    chain = cas = undefined;
  });

  it('a block verdict from an internal sender is never pushed; an outside sender is', async () => {
    cas = await startCasSim({ token: TOKEN });
    chain = await startChain({
      config: {
        policy: { localDomains: ['ourcorp.test'] },
        secrets: { casToken: TOKEN },
        cas: {
          enabled: true,
          url: cas.url,
          outbox: { dir: join(testTempDir('cas-safety-'), 'outbox'), intervalMs: 200, baseMs: 200, maxMs: 1000 },
          retry: { maxAttempts: 1, baseMs: 50, maxMs: 100, totalMs: 2000 },
        },
      },
    });
    const card = message('card 4111 1111 1111 1111');
    expect((await sendMessage(chain.port, card, { from: 'staff@ourcorp.test', to: ['x@partner.test'] })).data).toMatch(/^550 5\.7\.1 /);
    expect((await sendMessage(chain.port, card, { from: 'staff@mail.ourcorp.test', to: ['x@partner.test'] })).data).toMatch(/^550 5\.7\.1 /);
    expect((await sendMessage(chain.port, card, { from: 'leaker@outside.test', to: ['x@partner.test'] })).data).toMatch(/^550 5\.7\.1 /);
    await eventually(() => cas!.list('senders').includes('leaker@outside.test'), 10_000);
    expect(cas.list('senders')).toEqual(['leaker@outside.test']);
  });
});

interface Backend {
  open(): Promise<CasOutbox>;
  cleanup(): Promise<void>;
}

function fsBackend(): Backend {
  const dir = mkdtempSync(join(tmpdir(), 'cas-safety-fs-'));
  let o: FsCasOutbox | null = null;
  return {
    async open() {
      o = new FsCasOutbox(join(dir, 'outbox'));
      await o.init();
      return o;
    },
    async cleanup() {
      await o?.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function pgBackend(): Backend {
  const schema = `cas_safety_${randomBytes(6).toString('hex')}`;
  let pool: pg.Pool | null = null;
  return {
    async open() {
      const admin = new pg.Client(PG);
      await admin.connect();
      await admin.query(`CREATE SCHEMA ${schema}`);
      await admin.end();
      pool = new pg.Pool({ ...PG, max: 4, options: `-c search_path=${schema}` });
      const o = new PgCasOutbox(pool);
      await o.init();
      return o;
    },
    async cleanup() {
      await pool?.end();
      const admin = new pg.Client(PG);
      await admin.connect();
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin.end();
    },
  };
}

describe.each([
  ['fs', fsBackend],
  ['pg', pgBackend],
])('full blocked lists (%s outbox)', (_name, make) => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });

  let offset = 0;
  const now = () => Date.now() + offset;

  async function setup(simOpts: Partial<CasSimOptions>, maxListItems?: number) {
    offset = 0;
    const backend = make();
    cleanups.push(() => backend.cleanup());
    const outbox = await backend.open();
    const sim = await startCasSim({ token: TOKEN, rateLimit: { limit: 1000, windowMs: 60_000 }, ...simOpts });
    cleanups.push(() => sim.close());
    const client = new CasClient({
      token: TOKEN,
      url: sim.url,
      rate: { limit: 200, windowMs: 1000 },
      retry: { maxAttempts: 1, baseMs: 5, maxMs: 10, totalMs: 3000 },
    });
    cleanups.push(() => client.close());
    const logStream = new PassThrough();
    let logs = '';
    logStream.on('data', (c: Buffer) => (logs += c.toString()));
    const pusher = new CasPusher({
      outbox,
      client,
      now,
      schedule: { maxAttempts: 5, baseMs: 1000, maxMs: 2000 },
      ...(maxListItems ? { maxListItems } : {}),
      logger: createLogger({ level: 'info', destination: logStream }),
    });
    const posts = () => sim.requestLog.filter((e) => e.method === 'POST' && e.path === '/v1/remediation/mails').length;
    const senders = (n: number, tag: string) =>
      Array.from({ length: n }, (_, i) => ({ list: 'senders' as const, value: `${tag}${i}@spam.example`, action: 'create' as const, reason: 'test' }));
    return { outbox, sim, pusher, posts, senders, logs: () => logs };
  }

  it('a list CAS reports full: one refused request, no bisection, no retry before the recheck', async () => {
    const t = await setup({ maxStoredPerList: 4, initialLists: { senders: ['a@x.example', 'b@x.example', 'c@x.example', 'd@x.example'] } });
    await t.outbox.enqueue(t.senders(16, 'full'));
    const r1 = await t.pusher.runOnce();
    expect(t.posts()).toBe(1);
    expect(r1).toMatchObject({ pushed: 0, deferred: 16 });
    // New entries while the list is known full: held back without a request.
    await t.outbox.enqueue(t.senders(3, 'more'));
    offset += 60_000;
    const r2 = await t.pusher.runOnce();
    expect(t.posts()).toBe(1);
    expect(r2.deferred).toBe(3);
    expect(await t.outbox.stats()).toMatchObject({ pending: 19, failed: 0 });
    // After the recheck time one request finds out whether there is room again.
    offset += LIST_FULL_RECHECK_MS + 60_000;
    await t.pusher.runOnce();
    expect(t.posts()).toBe(2);
  });

  it('the relay never pushes past maxListItems of its own, and warns at 90 %', async () => {
    const t = await setup({}, 10);
    await t.outbox.enqueue(t.senders(16, 'cap'));
    const r1 = await t.pusher.runOnce();
    expect(r1).toMatchObject({ pushed: 10, deferred: 6, requests: 1 });
    expect(t.sim.list('senders')).toHaveLength(10);
    expect((await t.outbox.addedItems()).length).toBe(10);
    expect(t.logs()).toMatch(/CAS blocked list at 90 %/);
    expect(t.logs()).toMatch(/CAS blocked list full: pushes held back/);
    offset += LIST_FULL_RECHECK_MS + 60_000;
    const r2 = await t.pusher.runOnce();
    expect(r2).toMatchObject({ pushed: 0, deferred: 6, requests: 0 });
    expect(t.posts()).toBe(1);
  });
});
