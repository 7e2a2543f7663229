// The admin HTTP API over a real listener on 127.0.0.1:0: auth (exact 401 body), every quarantine route, 404s for unknown and malformed ids, body limits, 503 when the store is down.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { silentLogger } from '../../src/observability/logger.js';
import { FsQuarantineStore } from '../../src/quarantine/fs-store.js';
import { QuarantineUnavailableError } from '../../src/quarantine/errors.js';
import type { DeliverFn } from '../../src/quarantine/operations.js';
import type { NewQuarantineRecord, QuarantineStore, StoredEnvelope } from '../../src/quarantine/types.js';
import { createAdminServer, type AdminServer } from '../../src/admin/server.js';
import { registerQuarantineRoutes } from '../../src/admin/quarantine-routes.js';
import { acceptAll } from '../helpers/deliver-report.js';

const TOKEN = 'admin-token-for-tests-0123456789';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const logger = silentLogger();

const MIXED = [
  'From: Alice <alice@example.com>',
  'To: Bob <bob@example.org>',
  'Subject: Customer list',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b1"',
  '',
  '--b1',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'Here is the list you asked for.',
  '--b1',
  'Content-Type: text/csv; name="customers.csv"',
  'Content-Disposition: attachment; filename="customers.csv"',
  'Content-Transfer-Encoding: base64',
  '',
  Buffer.from('name,card\nx,4111111111111111\n').toString('base64'),
  '--b1--',
  '',
].join('\r\n');

const HTML_ONLY = [
  'From: alice@example.com',
  'To: bob@example.org',
  'Subject: html',
  'MIME-Version: 1.0',
  'Content-Type: text/html; charset=utf-8',
  '',
  '<html><head><style>p{color:red}</style><script>alert(1)</script></head><body><p>Hello <b>Bob</b> &amp; team</p><img src="x" onerror="alert(2)"></body></html>',
  '',
].join('\r\n');

function record(msg: Buffer, over: Partial<NewQuarantineRecord> = {}): NewQuarantineRecord {
  const id = randomUUID();
  return {
    id,
    queryId: id,
    receivedAt: new Date().toISOString(),
    envelope: { from: 'alice@example.com', to: [{ address: 'bob@example.org' }, { address: 'carol@example.net' }], smtpUtf8: false },
    clientAddress: '127.0.0.1',
    heloName: 'client.example.com',
    size: msg.length,
    sha256: createHash('sha256').update(msg).digest('hex'),
    md5: createHash('md5').update(msg).digest('hex'),
    subject: 'Customer list',
    messageId: null,
    actionCode: 6,
    reason: 'dlp:6',
    policies: [{ name: 'PII', severity: 2, actionSettingName: 'Quarantine', numberOfMatches: 1 }],
    instance: 'test:1',
    ...over,
  };
}

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('admin API: quarantine', () => {
  let dir: string;
  let store: FsQuarantineStore;
  let admin: AdminServer;
  let url: string;
  let deliveries: Array<{ env: StoredEnvelope; bytes: Buffer }>;

  const put = async (text: string, over: Partial<NewQuarantineRecord> = {}) => {
    const msg = Buffer.from(text);
    const rec = record(msg, over);
    await store.put(rec, () => Readable.from([msg]));
    return rec;
  };

  const call = async (method: string, path: string, opts: { body?: unknown; headers?: Record<string, string>; raw?: string } = {}) => {
    const res = await request(`${url}${path}`, {
      method: method as 'GET',
      headers: { ...AUTH, ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}), ...opts.headers },
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : opts.raw !== undefined ? { body: opts.raw } : {}),
    });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) as Record<string, any> };
  };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'q-admin-'));
    store = new FsQuarantineStore(join(dir, 'q'));
    await store.init();
    deliveries = [];
    const deliver: DeliverFn = async (env, open) => {
      deliveries.push({ env, bytes: await readAll(open()) });
      return acceptAll(env, '250 2.0.0 Ok: queued as ABC');
    };
    admin = createAdminServer({ host: '127.0.0.1', port: 0, token: TOKEN, logger, maxBodyBytes: 4096 });
    registerQuarantineRoutes(admin, { store, deliver, logger });
    ({ url } = await admin.listen());
  });

  afterEach(async () => {
    await admin.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers 401 with exactly {"error":"unauthorized"} without, with a wrong or a malformed token', async () => {
    const rec = await put(MIXED);
    for (const headers of [
      {},
      { authorization: 'Bearer wrong' },
      { authorization: `Bearer ${TOKEN}x` },
      { authorization: `Basic ${TOKEN}` },
      { authorization: TOKEN },
    ]) {
      for (const path of ['/api/v1/quarantine', `/api/v1/quarantine/${rec.id}`, `/api/v1/quarantine/${rec.id}/eml`, '/nope']) {
        const res = await request(`${url}${path}`, { headers });
        expect(res.statusCode).toBe(401);
        expect(await res.body.text()).toBe('{"error":"unauthorized"}');
      }
    }
    const del = await request(`${url}/api/v1/quarantine/${rec.id}`, { method: 'DELETE', headers: { authorization: 'Bearer nope' } });
    expect(del.statusCode).toBe(401);
    await del.body.dump();
    expect(await store.get(rec.id)).not.toBeNull();
  });

  it('lists with filters and paging', async () => {
    const a = await put(MIXED);
    const b = await put(MIXED, { envelope: { from: 'dave@example.com', to: [{ address: 'erin@example.org' }], smtpUtf8: false }, actionCode: 2 });
    const all = await call('GET', '/api/v1/quarantine');
    expect(all.status).toBe(200);
    expect(all.headers['content-type']).toMatch(/^application\/json/);
    expect(
      all
        .json()
        .items.map((r: { id: string }) => r.id)
        .sort(),
    ).toEqual([a.id, b.id].sort());
    expect((await call('GET', '/api/v1/quarantine?sender=dave@example.com')).json().items.map((r: { id: string }) => r.id)).toEqual([b.id]);
    expect((await call('GET', '/api/v1/quarantine?actionCode=6&recipient=CAROL@example.net')).json().items.map((r: { id: string }) => r.id)).toEqual([a.id]);
    const p1 = (await call('GET', '/api/v1/quarantine?limit=1')).json();
    expect(p1.items).toHaveLength(1);
    const p2 = (await call('GET', `/api/v1/quarantine?limit=1&cursor=${encodeURIComponent(p1.nextCursor)}`)).json();
    expect(p2.items).toHaveLength(1);
    expect(p2.nextCursor).toBeNull();
    expect(p2.items[0].id).not.toBe(p1.items[0].id);
    expect((await call('GET', '/api/v1/quarantine?from=yesterday')).status).toBe(400);
    expect((await call('GET', '/api/v1/quarantine?limit=501')).status).toBe(400);
    expect((await call('GET', '/api/v1/quarantine?status=gone')).status).toBe(400);
    expect((await call('GET', '/api/v1/quarantine?cursor=garbage')).json()).toEqual({ error: 'invalid cursor' });
  });

  it('shows metadata and a safe preview: headers, text, attachment names and sizes, no HTML', async () => {
    const rec = await put(MIXED);
    const res = await call('GET', `/api/v1/quarantine/${rec.id}`);
    expect(res.status).toBe(200);
    const { record: r, preview } = res.json();
    expect(r).toMatchObject({ id: rec.id, status: 'held', actionCode: 6, policies: [{ name: 'PII' }] });
    expect(preview.headers).toContainEqual({ name: 'Subject', value: 'Customer list' });
    expect(preview.text.trim()).toBe('Here is the list you asked for.');
    expect(preview.textSource).toBe('text');
    expect(preview.attachments).toEqual([{ filename: 'customers.csv', contentType: 'text/csv', disposition: 'attachment', size: 29 }]);

    const html = await put(HTML_ONLY);
    const hp = (await call('GET', `/api/v1/quarantine/${html.id}`)).json().preview;
    expect(hp.textSource).toBe('html-stripped');
    expect(hp.text).toBe('Hello Bob & team');
    expect(JSON.stringify(hp)).not.toMatch(/<script|alert|<p>|onerror/);
  });

  it('downloads the original EML byte for byte as message/rfc822', async () => {
    const rec = await put(MIXED);
    const res = await request(`${url}/api/v1/quarantine/${rec.id}/eml`, { headers: AUTH });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('message/rfc822');
    expect(res.headers['content-disposition']).toBe(`attachment; filename="${rec.id}.eml"`);
    const body = Buffer.from(await res.body.arrayBuffer());
    expect(createHash('sha256').update(body).digest('hex')).toBe(rec.sha256);
  });

  it('releases once with the original envelope and one added header; a second release is 409', async () => {
    const rec = await put(MIXED);
    const res = await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: {} });
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({
      status: 'released',
      id: rec.id,
      recipients: [
        { address: 'bob@example.org', status: 'accepted', code: 250, response: '250 2.0.0 Ok: queued as ABC' },
        { address: 'carol@example.net', status: 'accepted', code: 250, response: '250 2.0.0 Ok: queued as ABC' },
      ],
      response: '250 2.0.0 Ok: queued as ABC',
      complete: true,
      pending: [],
    });
    expect(deliveries).toHaveLength(1);
    expect(deliveries[0]!.env).toEqual(rec.envelope);
    const text = deliveries[0]!.bytes.toString();
    expect(text).toMatch(/^X-DLP-Released: \S+ by admin-api \(ref [0-9a-f-]{36}\)\r\nFrom: Alice/);
    expect(text.slice(text.indexOf('\r\n') + 2)).toBe(MIXED);

    const again = await call('POST', `/api/v1/quarantine/${rec.id}/release`);
    expect(again.status).toBe(409);
    expect(again.json()).toMatchObject({ error: 'already released', release: { by: 'admin-api [127.0.0.1]' } });
    expect(deliveries).toHaveLength(1);
    expect((await call('GET', `/api/v1/quarantine/${rec.id}`)).json().record.status).toBe('released');
  });

  it('releases to a subset of recipients or a redirect; rejects others and bad bodies', async () => {
    const rec = await put(MIXED);
    expect((await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: { recipients: ['eve@evil.example'] } })).status).toBe(400);
    expect((await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: { recipients: 'bob@example.org' } })).status).toBe(400);
    expect((await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: { force: true } })).status).toBe(400);
    expect((await call('POST', `/api/v1/quarantine/${rec.id}/release`, { raw: '{not json', headers: { 'content-type': 'application/json' } })).status).toBe(
      400,
    );
    expect((await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: { rescan: true } })).json()).toEqual({ error: 'rescan is not available' });
    const big = await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: { recipients: Array(300).fill('bob@example.org') } });
    expect(big.status).toBe(413);
    // Same without a Content-Length (chunked): still a clean 413, not a reset connection.
    const chunked = await request(`${url}/api/v1/quarantine/${rec.id}/release`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: Readable.from([Buffer.from('{"recipients":['), Buffer.from('"bob@example.org",'.repeat(400)), Buffer.from('"x"]}')]),
    });
    expect(chunked.statusCode).toBe(413);
    expect(await chunked.body.text()).toBe('{"error":"request body too large"}');
    expect(deliveries).toHaveLength(0);

    const ok = await call('POST', `/api/v1/quarantine/${rec.id}/release`, { body: { recipients: ['carol@example.net'] } });
    expect(ok.status).toBe(200);
    expect(deliveries[0]!.env.to).toEqual([{ address: 'carol@example.net' }]);

    const other = await put(MIXED);
    expect((await call('POST', `/api/v1/quarantine/${other.id}/release`, { body: { redirectTo: 'review@example.com' } })).status).toBe(200);
    expect(deliveries[1]!.env).toMatchObject({ from: 'alice@example.com', to: [{ address: 'review@example.com' }] });
  });

  it('deletes, then answers 404; purges by age', async () => {
    const rec = await put(MIXED);
    const del = await call('DELETE', `/api/v1/quarantine/${rec.id}`);
    expect(del.status).toBe(200);
    expect(del.json()).toEqual({ status: 'deleted', id: rec.id });
    expect((await call('GET', `/api/v1/quarantine/${rec.id}`)).json()).toEqual({ error: 'not found' });
    expect((await call('DELETE', `/api/v1/quarantine/${rec.id}`)).status).toBe(404);

    await put(MIXED);
    await put(MIXED);
    expect((await call('POST', '/api/v1/quarantine/purge', { body: { olderThanDays: 30 } })).json()).toMatchObject({ purged: 0 });
    expect((await call('POST', '/api/v1/quarantine/purge', { body: { olderThanDays: -1 } })).status).toBe(400);
    expect((await call('POST', '/api/v1/quarantine/purge', { body: {} })).status).toBe(400);
    const purged = await call('POST', '/api/v1/quarantine/purge', { body: { olderThanDays: 0 } });
    expect(purged.status).toBe(200);
    expect(purged.json().purged).toBe(2);
    expect((await call('GET', '/api/v1/quarantine')).json().items).toEqual([]);
  });

  it('answers 404 for unknown and malformed ids, never touching a path', async () => {
    await put(MIXED);
    const ids = [randomUUID(), 'not-a-uuid', '..%2F..%2F..%2Fetc%2Fpasswd', '%2e%2e', '..%5c..%5cwindows', 'x%00y', '%E0%A4%A'];
    for (const id of ids) {
      for (const suffix of ['', '/eml']) {
        const res = await call('GET', `/api/v1/quarantine/${id}${suffix}`);
        expect(res.status, `${id}${suffix}`).toBe(404);
        expect(res.json()).toEqual({ error: 'not found' });
      }
      expect((await call('POST', `/api/v1/quarantine/${id}/release`)).status).toBe(404);
      expect((await call('DELETE', `/api/v1/quarantine/${id}`)).status).toBe(404);
    }
    // Dot segments are resolved before routing: this is not the quarantine at all.
    const dots = await call('GET', '/api/v1/quarantine/../../../etc/passwd');
    expect(dots.status).toBe(404);
    expect(dots.text).not.toMatch(/root:/);
    expect(deliveries).toHaveLength(0);
  });

  it('audits every action with actor admin-api and the remote address', async () => {
    const rec = await put(MIXED);
    await call('GET', `/api/v1/quarantine/${rec.id}`);
    await call('GET', `/api/v1/quarantine/${rec.id}/eml`);
    await call('POST', `/api/v1/quarantine/${rec.id}/release`);
    await call('GET', `/api/v1/quarantine/${randomUUID()}`);
    const res = await call('GET', `/api/v1/quarantine/audit?target=${rec.id}`);
    expect(res.status).toBe(200);
    const items = res.json().items as Array<Record<string, unknown>>;
    expect(items.map((a) => `${String(a.action)}:${String(a.result)}`)).toEqual(['release:ok', 'download:ok', 'show:ok']);
    for (const a of items) expect(a).toMatchObject({ actor: 'admin-api', source: '127.0.0.1', target: rec.id });
    const notFound = (await call('GET', '/api/v1/quarantine/audit?action=show')).json().items as Array<Record<string, unknown>>;
    expect(notFound.map((a) => a.result)).toEqual(['not-found', 'ok']);
  });

  it('answers 405 for a known path with another method, and keeps public routes public', async () => {
    admin.addRoute('GET', '/healthz', () => ({ status: 200, text: 'ok\n' }), { auth: false });
    const health = await request(`${url}/healthz`);
    expect(health.statusCode).toBe(200);
    expect(await health.body.text()).toBe('ok\n');
    const wrong = await call('PUT', '/api/v1/quarantine');
    expect(wrong.status).toBe(405);
    expect(wrong.headers.allow).toBe('GET');
  });
});

describe('admin API: store unavailable', () => {
  it('answers 503 {"error":"store unavailable"} on every quarantine route', async () => {
    const down = (): never => {
      throw new QuarantineUnavailableError('database unreachable');
    };
    const store = new Proxy({} as QuarantineStore, {
      get: (_t, prop) => (prop === 'kind' ? 'postgres' : prop === 'openMessage' ? () => Readable.from([]) : async () => down()),
    });
    const admin = createAdminServer({ host: '127.0.0.1', port: 0, token: TOKEN, logger });
    registerQuarantineRoutes(admin, { store, deliver: async (env) => acceptAll(env, '250'), logger });
    const { url } = await admin.listen();
    try {
      const id = randomUUID();
      const routes: Array<[string, string, unknown?]> = [
        ['GET', '/api/v1/quarantine'],
        ['GET', `/api/v1/quarantine/${id}`],
        ['GET', `/api/v1/quarantine/${id}/eml`],
        ['POST', `/api/v1/quarantine/${id}/release`, {}],
        ['DELETE', `/api/v1/quarantine/${id}`],
        ['POST', '/api/v1/quarantine/purge', { olderThanDays: 1 }],
        ['GET', '/api/v1/quarantine/audit'],
      ];
      for (const [method, path, body] of routes) {
        const res = await request(`${url}${path}`, {
          method: method as 'GET',
          headers: { ...AUTH, ...(body ? { 'content-type': 'application/json' } : {}) },
          ...(body ? { body: JSON.stringify(body) } : {}),
        });
        expect(res.statusCode, `${method} ${path}`).toBe(503);
        expect(await res.body.text()).toBe('{"error":"store unavailable"}');
      }
    } finally {
      await admin.close();
    }
  });
});
