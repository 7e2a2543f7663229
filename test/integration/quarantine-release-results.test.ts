// Releases report each recipient: only accepted recipients count as released, deferred ones are retried by the next release, refused ones only when named, and the message is released once every recipient is accepted or dropped — on both stores, through the API, the CLI, and a real next hop.
import { describe, it, expect, beforeEach, afterEach, afterAll } from 'vitest';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/observability/logger.js';
import { createDeliverer, quarantineOps } from '../../src/app.js';
import type { UcwiClient } from '../../src/dlp/client.js';
import { migrate } from '../../src/util/pg-migrate.js';
import { createAdminServer } from '../../src/admin/server.js';
import { registerQuarantineRoutes } from '../../src/admin/quarantine-routes.js';
import { quarantineRelease, quarantineShow, type CliContext } from '../../src/quarantine/cli.js';
import { releaseMessage, type DeliverFn, type DeliveryReport, type OperationsContext } from '../../src/quarantine/operations.js';
import { PgQuarantineStore, QUARANTINE_MIGRATIONS, createQuarantinePool } from '../../src/quarantine/pg-store.js';
import type { NewQuarantineRecord, QuarantineStore, StoredEnvelope } from '../../src/quarantine/types.js';
import { startSink, type Sink } from '../helpers/chain.js';
import { PG_URL, dropSchemas, freshSchema } from '../helpers/pg.js';
import { backends, dropBackendSchemas, type BackendHandle } from '../helpers/quarantine-backends.js';

const logger = silentLogger();
const MSG = Buffer.from('From: alice@example.com\r\nTo: team@example.org\r\nSubject: figures\r\n\r\nCard 4111 1111 1111 1111\r\n');
const A = 'ann@example.org';
const B = 'bob@example.org';
const C = 'cyd@example.org';

function record(to: string[]): NewQuarantineRecord {
  const id = randomUUID();
  return {
    id,
    queryId: id,
    receivedAt: new Date().toISOString(),
    envelope: { from: 'alice@example.com', to: to.map((address) => ({ address })), smtpUtf8: false },
    clientAddress: '192.0.2.1',
    heloName: 'client.example.com',
    subject: 'figures',
    messageId: null,
    actionCode: 6,
    reason: 'dlp:6',
    policies: [],
    instance: 'test:1',
  };
}

type Fate = [status: 'accepted' | 'refused' | 'deferred', code: number, response: string];
const OK: Fate = ['accepted', 250, '250 2.0.0 Ok: queued'];
const NO_SUCH_USER: Fate = ['refused', 550, '550 5.1.1 no such user'];
const GREYLISTED: Fate = ['deferred', 452, '452 4.2.2 mailbox full, try later'];

/** A next hop whose answer per recipient the test sets; every call's envelope is kept. */
function scriptedNextHop(fates: Record<string, Fate>) {
  const calls: string[][] = [];
  const deliver: DeliverFn = async (env: StoredEnvelope, open): Promise<DeliveryReport> => {
    for await (const _ of open()) continue; // a real deliverer reads the message
    calls.push(env.to.map((r) => r.address));
    const recipients = env.to.map((r) => {
      const [status, code, response] = fates[r.address] ?? OK;
      return { address: r.address, status, code, response };
    });
    return { response: recipients.some((r) => r.status === 'accepted') ? OK[2] : '', recipients };
  };
  return { deliver, calls };
}

async function releaseAudit(store: QuarantineStore, id: string): Promise<string[]> {
  return (await store.listAudit({ target: id, action: 'release' })).items.map((a) => a.result);
}

afterAll(() => dropBackendSchemas());

describe.each(backends)('release results: $name', (backend) => {
  let h: BackendHandle;
  beforeEach(async () => {
    h = await backend.make();
  });
  afterEach(() => h.cleanup());

  it('counts only accepted recipients; retries the deferred one, never the accepted one; refused ones only when named; drop completes', async () => {
    const rec = record([A, B, C]);
    await h.store.put(rec, () => Readable.from([MSG]));
    const hop = scriptedNextHop({ [B]: NO_SUCH_USER, [C]: GREYLISTED });
    const ctx: OperationsContext = { store: h.store, deliver: hop.deliver, logger };
    const actor = { name: 'tester' };

    const first = await releaseMessage(ctx, actor, rec.id);
    expect(first).toEqual(
      expect.objectContaining({
        status: 'partial',
        recipients: [
          { address: A, status: 'accepted', code: 250, response: OK[2] },
          { address: B, status: 'refused', code: 550, response: NO_SUCH_USER[2] },
          { address: C, status: 'deferred', code: 452, response: GREYLISTED[2] },
        ],
        complete: false,
        pending: [B, C],
      }),
    );
    const held = (await h.store.get(rec.id))!;
    expect(held.status).toBe('held');
    expect(held.releaseClaim ?? null).toBeNull();
    expect(held.recipientResults!.map((r) => [r.address, r.status, r.code, r.by])).toEqual([
      [A, 'accepted', 250, 'tester'],
      [B, 'refused', 550, 'tester'],
      [C, 'deferred', 452, 'tester'],
    ]);

    expect(hop.calls).toEqual([[A, B, C]]);
    // The greylisting is over: a plain release goes to the deferred recipient only.
    const later = scriptedNextHop({ [B]: NO_SUCH_USER });
    ctx.deliver = later.deliver;
    expect(await releaseMessage(ctx, actor, rec.id)).toMatchObject({
      status: 'released',
      recipients: [{ address: C, status: 'accepted', code: 250 }],
      complete: false,
      pending: [B],
    });
    // Nothing left that a plain release may retry: the refused one waits for an operator.
    expect(await releaseMessage(ctx, actor, rec.id)).toMatchObject({ status: 'invalid', message: expect.stringContaining(`refused ${B} (550)`) });
    // Never a second copy for an accepted recipient, even when named.
    expect(await releaseMessage(ctx, actor, rec.id, { recipients: [A] })).toMatchObject({
      status: 'invalid',
      message: expect.stringContaining(`already delivered to ${A}`),
    });
    // Named explicitly, the refused one is tried again (and refused again: nothing delivered).
    expect(await releaseMessage(ctx, actor, rec.id, { recipients: [B] })).toMatchObject({
      status: 'undelivered',
      recipients: [{ address: B, status: 'refused', code: 550 }],
      complete: false,
      pending: [B],
    });
    expect(later.calls).toEqual([[C], [B]]);
    expect((await h.store.get(rec.id))!.status).toBe('held');

    // The operator gives up on it: the message is released, to the two that got it.
    expect(await releaseMessage(ctx, actor, rec.id, { drop: [B] })).toMatchObject({
      status: 'released',
      recipients: [],
      dropped: [B],
      complete: true,
      pending: [],
    });
    expect(later.calls).toEqual([[C], [B]]);
    const done = (await h.store.get(rec.id))!;
    expect(done).toMatchObject({ status: 'released', release: { recipients: [A, C] } });
    expect(done.recipientResults!.find((r) => r.address === B)).toMatchObject({ status: 'dropped' });
    expect(await releaseMessage(ctx, actor, rec.id)).toMatchObject({ status: 'already-released' });

    expect(await releaseAudit(h.store, rec.id)).toEqual(['already-released', 'ok', 'failed', 'invalid', 'invalid', 'ok', 'partial']);
    const partial = (await h.store.listAudit({ target: rec.id, action: 'release' })).items.at(-1)!;
    expect(partial.detail).toContain(`delivered: ${A}`);
    expect(partial.detail).toContain(`refused: ${B} (550`);
    expect(partial.detail).toContain(`deferred: ${C} (452`);
    expect(partial.detail).toContain(`still held for: ${B}, ${C}`);
  });

  it('is released once every recipient was accepted, over two releases; a deliverer that throws leaves all deferred', async () => {
    const rec = record([A, C]);
    await h.store.put(rec, () => Readable.from([MSG]));
    let throwing = true;
    const hop = scriptedNextHop({ [C]: GREYLISTED });
    const ctx: OperationsContext = {
      store: h.store,
      logger,
      deliver: async (env, open, signal) => {
        if (throwing) throw new Error('connect ECONNREFUSED 127.0.0.1:25');
        return hop.deliver(env, open, signal);
      },
    };
    expect(await releaseMessage(ctx, { name: 't' }, rec.id)).toMatchObject({
      status: 'undelivered',
      recipients: [
        { address: A, status: 'deferred', code: 0 },
        { address: C, status: 'deferred', code: 0 },
      ],
      pending: [A, C],
    });
    throwing = false;
    expect(await releaseMessage(ctx, { name: 't' }, rec.id)).toMatchObject({ status: 'partial', pending: [C] });
    const hop2 = scriptedNextHop({});
    ctx.deliver = hop2.deliver;
    expect(await releaseMessage(ctx, { name: 't' }, rec.id)).toMatchObject({
      status: 'released',
      complete: true,
      recipients: [{ address: C, status: 'accepted' }],
    });
    expect(hop.calls).toEqual([[A, C]]);
    expect(hop2.calls).toEqual([[C]]);
    expect(await h.store.get(rec.id)).toMatchObject({ status: 'released', release: { recipients: [A, C] } });
    expect(await releaseMessage(ctx, { name: 't' }, rec.id)).toMatchObject({ status: 'already-released' });
    expect(hop2.calls).toEqual([[C]]);
  });
});

describe('release results through the admin API and the CLI', () => {
  let h: BackendHandle;
  beforeEach(async () => {
    h = await backends[0]!.make();
  });
  afterEach(() => h.cleanup());

  it('the API lists each recipient: 207 for some accepted, 200 for all, 502 for none', async () => {
    const TOKEN = 'a-test-token-of-sufficient-length';
    const fates: Record<string, Fate> = { [B]: NO_SUCH_USER, [C]: GREYLISTED };
    const hop = scriptedNextHop(fates);
    const admin = createAdminServer({ host: '127.0.0.1', port: 0, token: TOKEN, logger });
    registerQuarantineRoutes(admin, { store: h.store, deliver: hop.deliver, logger });
    const { url } = await admin.listen();
    const release = async (id: string, body: unknown = {}) => {
      const res = await request(`${url}/api/v1/quarantine/${id}/release`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
    };
    try {
      const rec = record([A, B, C]);
      await h.store.put(rec, () => Readable.from([MSG]));
      const first = await release(rec.id);
      expect(first.status).toBe(207);
      expect(first.json).toMatchObject({
        status: 'partial',
        complete: false,
        pending: [B, C],
        recipients: [
          { address: A, status: 'accepted', code: 250, response: OK[2] },
          { address: B, status: 'refused', code: 550, response: NO_SUCH_USER[2] },
          { address: C, status: 'deferred', code: 452, response: GREYLISTED[2] },
        ],
      });
      const none = await release(rec.id); // C is still greylisted
      expect(none.status).toBe(502);
      expect(none.json).toMatchObject({ status: 'undelivered', recipients: [{ address: C, status: 'deferred', code: 452 }], pending: [B, C] });
      delete fates[C];
      const all = await release(rec.id, { drop: [B] });
      expect(all.status).toBe(200);
      expect(all.json).toMatchObject({ status: 'released', recipients: [{ address: C, status: 'accepted' }], dropped: [B], complete: true, pending: [] });
      expect((await release(rec.id)).status).toBe(409);
      expect(hop.calls).toEqual([[A, B, C], [C], [C]]);
      expect((await release(rec.id, { drop: 'x' })).status).toBe(400);
    } finally {
      await admin.close();
    }
  });

  it('the CLI prints one line per recipient and exits 1 unless all were accepted', async () => {
    const sink = () => {
      let text = '';
      return { write: (s: string) => ((text += s), true), text: () => text };
    };
    const fates: Record<string, Fate> = { [B]: NO_SUCH_USER, [C]: GREYLISTED };
    const hop = scriptedNextHop(fates);
    const out = sink();
    const err = sink();
    const ctx: CliContext = { store: h.store, deliver: hop.deliver, out, err, actor: { name: 'cli:tester', source: 'testhost' } };
    const rec = record([A, B, C]);
    await h.store.put(rec, () => Readable.from([MSG]));
    expect(await quarantineRelease({ id: rec.id }, ctx)).toBe(1);
    expect(out.text().split('\n')).toEqual([
      `accepted  ${A}  250  ${OK[2]}`,
      `refused   ${B}  550  ${NO_SUCH_USER[2]}`,
      `deferred  ${C}  452  ${GREYLISTED[2]}`,
      `${rec.id}: 1 of 3 accepted; still held for ${B}, ${C}`,
      '',
    ]);
    const show = sink();
    expect(await quarantineShow({ id: rec.id }, { ...ctx, out: show })).toBe(0);
    expect(show.text()).toMatch(new RegExp(`status: +held`));
    expect(show.text()).toMatch(new RegExp(`refused +${B} 550 `));
    delete fates[C];
    const out2 = sink();
    expect(await quarantineRelease({ id: rec.id, drop: B }, { ...ctx, out: out2 })).toBe(0);
    expect(out2.text()).toBe(`accepted  ${C}  250  ${OK[2]}\ndropped   ${B}  -    \n${rec.id}: released completely\n`);
  });
});

describe('release through a real next hop (SMTP), with the app deliverer adapter', () => {
  let dir: string;
  let sink: Sink;
  let h: BackendHandle;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'q-rel-hop-'));
    h = await backends[0]!.make();
    sink = await startSink({ rcpt: (a) => (a === B ? [550, '5.1.1 no such user'] : a === C ? [452, '4.2.2 try later'] : null) });
  });
  afterEach(async () => {
    await sink.close();
    await h.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('maps the next hop answers per recipient, and the second release delivers only the deferred one', async () => {
    const cfg = loadConfig({
      file: '/dev/null',
      env: {},
      overrides: {
        nextHop: { host: '127.0.0.1', port: sink.port, starttls: 'off', timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 } },
        outbox: { dir: join(dir, 'outbox') },
      },
    });
    const deliverer = createDeliverer(cfg, logger);
    try {
      // The re-scan client is not used without --rescan.
      const ops = quarantineOps(cfg, h.store, deliverer, {} as UcwiClient, logger);
      const rec = record([A, B, C]);
      await h.store.put(rec, () => Readable.from([MSG]));
      const first = await releaseMessage(ops, { name: 't' }, rec.id);
      expect(first).toMatchObject({
        status: 'partial',
        recipients: [
          { address: A, status: 'accepted', code: 250 },
          { address: B, status: 'refused', code: 550 },
          { address: C, status: 'deferred', code: 452 },
        ],
      });
      expect(sink.messages.map((m) => m.to.map((t) => t.address))).toEqual([[A]]);
      sink.behaviour.rcpt = (a) => (a === B ? [550, '5.1.1 no such user'] : null);
      expect(await releaseMessage(ops, { name: 't' }, rec.id)).toMatchObject({
        status: 'released',
        recipients: [{ address: C, status: 'accepted', code: 250 }],
        pending: [B],
      });
      expect(sink.messages.map((m) => m.to.map((t) => t.address))).toEqual([[A], [C]]);
      // Every recipient refused at RCPT: the deliverer throws, the adapter still says who was refused.
      const all = await releaseMessage(ops, { name: 't' }, rec.id, { recipients: [B] });
      expect(all).toMatchObject({ status: 'undelivered', recipients: [{ address: B, status: 'refused', code: 550 }] });
      expect(sink.messages).toHaveLength(2);
    } finally {
      await deliverer.close();
    }
  });
});

describe('PostgreSQL schema migration 2 (per-recipient results)', () => {
  const schemas: string[] = [];
  afterAll(() => dropSchemas(schemas));

  it('upgrades a version-1 database in place: existing held messages have no results and release per recipient', async () => {
    const schema = await freshSchema('q_mig');
    schemas.push(schema);
    const pool = createQuarantinePool(PG_URL, { options: `-c search_path=${schema}`, max: 2 });
    try {
      expect(
        await migrate(
          pool,
          'quarantine',
          QUARANTINE_MIGRATIONS.filter((m) => m.version === 1),
        ),
      ).toEqual([1]);
      const cols = async () =>
        (
          await pool.query<{ column_name: string }>(
            `SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'quarantine_messages'`,
            [schema],
          )
        ).rows.map((r) => r.column_name);
      expect(await cols()).not.toContain('recipient_results');
      // A row written by a relay still on version 1 (the put of this version never names the new column).
      const rec = record([A, B]);
      await pool.query(
        `INSERT INTO quarantine_messages (id, query_id, received_at, quarantined_at, sender, sender_lc, recipients_lc, envelope, client_address, size, sha256, md5, reason, policies, policy_names, status, instance)
         VALUES ($1::uuid, $1::text, now(), now(), 'alice@example.com', 'alice@example.com', $2, $3, '192.0.2.1', 0, '', '', 'dlp:6', '[]', '{}', 'held', 'old:1')`,
        [rec.id, [A, B], JSON.stringify(rec.envelope)],
      );
      const store = new PgQuarantineStore(pool, { logger });
      await store.init();
      expect(await cols()).toContain('recipient_results');
      expect(await store.get(rec.id)).toMatchObject({ status: 'held', recipientResults: [] });
      const hop = scriptedNextHop({ [B]: GREYLISTED });
      expect(await releaseMessage({ store, deliver: hop.deliver, logger }, { name: 't' }, rec.id)).toMatchObject({ status: 'partial', pending: [B] });
      expect((await store.get(rec.id))!.recipientResults!.map((r) => r.status)).toEqual(['accepted', 'deferred']);
      await store.close();
    } finally {
      await pool.end();
    }
  });
});
