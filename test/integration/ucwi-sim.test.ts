// The UCWI simulator over real HTTP on 127.0.0.1: signed multipart requests, verdicts, errors, incidents and every fault knob.
import { Blob } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { Agent, FormData, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ucwiAuthHeaders } from '../../src/dlp/auth.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';

const AK = 'AK_TEST';
const SK = 'SK_TEST';
const EMAIL_SYNC = '/skg/v1/dlp/channel/email/smtp/sync';
const INVALID = '{"result":1,"errorCode":400,"message":"Invalid parameter"}';
const UNAUTHORIZED = '{"result":1,"errorCode":401,"message":"Unauthorized"}';

// One agent for the file, closed at the end, so no keep-alive socket outlives the tests.
const agent = new Agent({ keepAliveTimeout: 1000 });
afterAll(() => agent.close());

function eml(body: string, subject = 'test'): string {
  return `From: alice@example.com\r\nTo: bob@example.org\r\nSubject: ${subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${body}\r\n`;
}

interface PostOpts {
  path?: string;
  metadata?: unknown; // object → JSON; string → sent as is; undefined → no metadata field
  message?: string | null; // null → no request part
  headers?: Record<string, string>;
  signedAt?: number;
  secret?: string;
  headersTimeout?: number;
}

async function post(sim: UcwiSim, o: PostOpts = {}) {
  const form = new FormData();
  if (o.metadata !== undefined) form.append('metadata', typeof o.metadata === 'string' ? o.metadata : JSON.stringify(o.metadata));
  if (o.message !== null) form.append('request', new Blob([o.message ?? eml('hello')], { type: 'message/rfc822' }), 'message.eml');
  const res = await request(`${sim.url}${o.path ?? EMAIL_SYNC}`, {
    method: 'POST',
    dispatcher: agent,
    headers: { ...ucwiAuthHeaders(AK, o.secret ?? SK, o.signedAt), ...o.headers },
    body: form,
    ...(o.headersTimeout ? { headersTimeout: o.headersTimeout } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

async function get(sim: UcwiSim, path: string, signed = true) {
  const res = await request(`${sim.url}${path}`, { dispatcher: agent, headers: signed ? ucwiAuthHeaders(AK, SK) : {} });
  return { status: res.statusCode, text: await res.body.text() };
}

function meta(extra: Record<string, unknown> = {}) {
  return { sender: 'alice@example.com', recipients: ['bob@example.org'], queryID: randomUUID(), ...extra };
}

let sim: UcwiSim;
beforeAll(async () => {
  sim = await startUcwiSim({ accessKey: AK, secretKey: SK, policiesFile: 'fixtures/detectors-test.yaml' });
});
afterAll(() => sim.close());
afterEach(() => sim.resetFaults());

describe('routes', () => {
  it('answers the readiness probe without auth', async () => {
    expect(await get(sim, '/healthz', false)).toEqual({ status: 200, text: 'ok' });
  });

  it('lists channels exactly as the documentation shows', async () => {
    const r = await get(sim, '/skg/v1/dlp/channel');
    expect(r.status).toBe(200);
    expect(r.text).toBe(
      '{"channels": [{"name": "web", "description": "Web channel"}, {"name": "email", "description": "Email channel"}, {"name": "webserviceapp", "description": "WebService Application channel"}]}',
    );
  });

  it('describes the email channel (shape assumed)', async () => {
    const r = await get(sim, '/skg/v1/dlp/channel/email');
    expect(JSON.parse(r.text)).toEqual({ email: [{ name: 'smtp', description: 'SMTP protocol' }] });
  });

  it('refuses invalid policies at start-up, listing the problem', async () => {
    await expect(
      startUcwiSim({ accessKey: AK, secretKey: SK, policies: [{ name: 'k', detector: 'keywords', actionCode: 2, severity: 1, actionSettingName: 'B' }] }),
    ).rejects.toThrow(/policies\[0\]\.keywords/);
  });

  it('404s unknown protocol, mode and path with the error envelope', async () => {
    for (const path of ['/skg/v1/dlp/channel/email/pop3/sync', '/skg/v1/dlp/channel/email/smtp/batch']) {
      const r = await post(sim, { path, metadata: meta() });
      expect(r.status).toBe(404);
      expect(JSON.parse(r.text)).toEqual({ result: 1, errorCode: 404, message: 'Not found' });
    }
    expect((await get(sim, '/skg/v1/nothing')).status).toBe(404);
  });

  it('accepts the protocol segment in any case', async () => {
    const r = await post(sim, { path: '/skg/v1/dlp/channel/email/SMTP/sync', metadata: meta() });
    expect(r.status).toBe(200);
  });
});

describe('sync inspection', () => {
  it('200 with empty incident_info for a clean message', async () => {
    const m = meta();
    const r = await post(sim, { metadata: m, message: eml('Nothing to see here.') });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/application\/json/);
    expect(JSON.parse(r.text)).toEqual({ result: 0, responseCode: 200, actionCode: 1, queryID: m.queryID, incident_info: {} });
    // No incident for a clean message: documented 404.
    expect((await get(sim, `/skg/v1/dlp/incident/${m.queryID}`)).status).toBe(404);
  });

  it('200 with matchedPolicies for a card number, and records the incident', async () => {
    const m = meta();
    const r = await post(sim, { metadata: m, message: eml('card 4111 1111 1111 1111 and 5555555555554444') });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toEqual({
      result: 0,
      responseCode: 200,
      actionCode: 2,
      queryID: m.queryID,
      incident_info: { matchedPolicies: [{ name: 'PCI card numbers', severity: 1, actionSettingName: 'Block', numberOfMatches: 2 }] },
    });
    const inc = await get(sim, `/skg/v1/dlp/incident/${m.queryID}`);
    expect(inc.status).toBe(200);
    const body = JSON.parse(inc.text) as Record<string, unknown>;
    expect(body).toMatchObject({ result: 0, queryID: m.queryID, source: 'alice@example.com', dest: ['bob@example.org'], action: 2 });
    // Also findable by its own incident id.
    expect((await get(sim, `/skg/v1/dlp/incident/${String(body['id'])}`)).status).toBe(200);
  });

  it.each([2, 3, 4, 5, 6, 7, 8, 9])('DLPTEST-ACTION-%i yields that actionCode', async (n) => {
    const r = await post(sim, { metadata: meta(), message: eml(`please DLPTEST-ACTION-${n} thanks`) });
    expect(JSON.parse(r.text).actionCode).toBe(n);
  });

  it('answers the strictest action when several policies match', async () => {
    const both = await post(sim, { metadata: meta(), message: eml('IBAN GB82 WEST 1234 5698 7654 32, DLPTEST-ACTION-3') });
    const parsed = JSON.parse(both.text);
    expect(parsed.actionCode).toBe(6);
    expect(parsed.incident_info.matchedPolicies.map((p: { name: string }) => p.name).sort()).toEqual(['IBAN', 'Test trigger action 3']);
  });

  it('md5 alone (no request part) is answered as no match', async () => {
    const m = meta({ md5: '09e066b382d4225de3c0594aa89b5f1a' });
    const r = await post(sim, { metadata: m, message: null });
    expect(JSON.parse(r.text)).toEqual({ result: 0, responseCode: 200, actionCode: 1, queryID: m.queryID, incident_info: {} });
  });

  it('streams a multi-megabyte message and finds a card at its end', async () => {
    const body = 'filler line without secrets\r\n'.repeat(150_000) + 'last: 378282246310005';
    const r = await post(sim, { metadata: meta(), message: eml(body) });
    expect(JSON.parse(r.text).actionCode).toBe(2);
  });
});

describe('async inspection', () => {
  it('answers {result:0, queryID} and records the incident afterwards', async () => {
    const m = meta();
    const r = await post(sim, { path: '/skg/v1/dlp/channel/email/smtp/async', metadata: m, message: eml('TOP SECRET plans') });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toEqual({ result: 0, queryID: m.queryID });
    // The incident is written when the scan finishes; poll a bounded number of times (no timing assumption).
    let status = 0;
    for (let i = 0; i < 200 && status !== 200; i++) {
      status = (await get(sim, `/skg/v1/dlp/incident/${m.queryID}`)).status;
      if (status !== 200) await new Promise((res) => setTimeout(res, 10));
    }
    expect(status).toBe(200);
  });
});

describe('bad requests', () => {
  it.each([
    ['metadata missing', undefined],
    ['metadata not JSON', '{not json'],
    ['metadata an array', '[1,2]'],
    ['metadata a string', '"queryID"'],
    ['queryID missing', { sender: 'a@example.com' }],
    ['queryID not a string', { queryID: 42 }],
    ['queryID empty', { queryID: '' }],
  ])('400 when %s, with the exact body', async (_name, metadata) => {
    const r = await post(sim, { metadata });
    expect(r.status).toBe(400);
    expect(r.text).toBe(INVALID);
  });

  it('400 when the request part is missing (and no md5)', async () => {
    const r = await post(sim, { metadata: meta(), message: null });
    expect(r.status).toBe(400);
    expect(r.text).toBe(INVALID);
  });

  it('400 when the body is not multipart at all', async () => {
    const res = await request(`${sim.url}${EMAIL_SYNC}`, {
      method: 'POST',
      dispatcher: agent,
      headers: { ...ucwiAuthHeaders(AK, SK), 'content-type': 'application/json' },
      body: JSON.stringify(meta()),
    });
    expect(res.statusCode).toBe(400);
    expect(await res.body.text()).toBe(INVALID);
  });

  it('accepts the request part before the metadata field', async () => {
    const form = new FormData();
    form.append('request', new Blob([eml('4111111111111111')]), 'message.eml');
    const m = meta();
    form.append('metadata', JSON.stringify(m));
    const res = await request(`${sim.url}${EMAIL_SYNC}`, { method: 'POST', dispatcher: agent, headers: ucwiAuthHeaders(AK, SK), body: form });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toMatchObject({ actionCode: 2, queryID: m.queryID });
  });

  it('413 when a body without Content-Length grows over maxBodyBytes', async () => {
    const small = await startUcwiSim({ accessKey: AK, secretKey: SK, maxBodyBytes: 4096 });
    try {
      const boundary = 'b0undary';
      const head = `--${boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n${JSON.stringify(meta())}\r\n--${boundary}\r\nContent-Disposition: form-data; name="request"; filename="m.eml"\r\n\r\n`;
      const body = Readable.from([head, eml('y'.repeat(3000)), 'z'.repeat(3000), `\r\n--${boundary}--\r\n`]);
      const res = await request(`${small.url}${EMAIL_SYNC}`, {
        method: 'POST',
        dispatcher: agent,
        headers: { ...ucwiAuthHeaders(AK, SK), 'content-type': `multipart/form-data; boundary=${boundary}` },
        body,
      });
      expect(res.statusCode).toBe(413);
      expect(await res.body.json()).toMatchObject({ result: 1, errorCode: 413 });
    } finally {
      await small.close();
    }
  });

  it('413 when the body is over maxBodyBytes', async () => {
    const small = await startUcwiSim({ accessKey: AK, secretKey: SK, maxBodyBytes: 4096 });
    try {
      const r = await post(small, { metadata: meta(), message: eml('x'.repeat(16_384)) });
      expect(r.status).toBe(413);
      expect(JSON.parse(r.text)).toMatchObject({ result: 1, errorCode: 413 });
    } finally {
      await small.close();
    }
  });
});

describe('authentication', () => {
  it('401 on a bad signature', async () => {
    const before = sim.stats().authFailures;
    const r = await post(sim, { metadata: meta(), secret: 'WRONG' });
    expect(r.status).toBe(401);
    expect(r.text).toBe(UNAUTHORIZED);
    expect(sim.stats().authFailures).toBe(before + 1);
  });

  it('401 when the timestamp is 10 minutes old', async () => {
    const r = await post(sim, { metadata: meta(), signedAt: Date.now() - 10 * 60 * 1000 });
    expect(r.status).toBe(401);
    expect(r.text).toBe(UNAUTHORIZED);
  });

  it('401 without the headers, on every UCWI route', async () => {
    expect(await get(sim, '/skg/v1/dlp/channel', false)).toEqual({ status: 401, text: UNAUTHORIZED });
    const res = await request(`${sim.url}${EMAIL_SYNC}`, { method: 'POST', dispatcher: agent, body: 'x' });
    expect(res.statusCode).toBe(401);
    expect(await res.body.text()).toBe(UNAUTHORIZED);
  });

  it('accepts header names in any case', async () => {
    const h = ucwiAuthHeaders(AK, SK);
    const res = await request(`${sim.url}/skg/v1/dlp/channel`, {
      dispatcher: agent,
      headers: { 'X-Skg-Timestamp': h['x-skg-timestamp']!, Authorization: h['authorization']! },
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });
});

describe('stats', () => {
  it('counts email requests and keeps the last metadata', async () => {
    const before = sim.stats().requests;
    const m = meta({ extra: 'ignored' });
    await post(sim, { metadata: m });
    await post(sim, { metadata: meta(), secret: 'WRONG' });
    await get(sim, '/healthz', false);
    const s = sim.stats();
    expect(s.requests).toBe(before + 2);
    expect(s.lastMetadata).toEqual(m); // the 401 request's body was never read
  });
});

describe('fault knobs', () => {
  it('latencyMs: answers normally, and no sooner than the latency after the request started', async () => {
    sim.setFaults({ latencyMs: 120 });
    const t0 = performance.now();
    const r = await post(sim, { metadata: meta() });
    // A lower bound only: the knob must hold the answer back (the scan counts toward it, so no upper bound is implied).
    expect(performance.now() - t0).toBeGreaterThanOrEqual(118);
    expect(JSON.parse(r.text).actionCode).toBe(1);
  });

  it('latencyMs: a client that stops waiting gets no answer (and close() is not held up)', async () => {
    const slow = await startUcwiSim({ accessKey: AK, secretKey: SK, faults: { latencyMs: 600_000 } });
    try {
      await expect(post(slow, { metadata: meta(), headersTimeout: 200 })).rejects.toThrow(/timeout/i);
    } finally {
      await slow.close();
    }
  });

  it('status: forces the HTTP status with the error envelope', async () => {
    sim.setFaults({ status: 503 });
    const r = await post(sim, { metadata: meta() });
    expect(r.status).toBe(503);
    expect(JSON.parse(r.text)).toEqual({ result: 1, errorCode: 503, message: 'Service Unavailable' });
  });

  it('body garbage: not JSON', async () => {
    sim.setFaults({ body: 'garbage' });
    const r = await post(sim, { metadata: meta() });
    expect(r.status).toBe(200);
    expect(() => JSON.parse(r.text)).toThrow();
  });

  it('body truncated: a JSON prefix with a matching content-length', async () => {
    sim.setFaults({ body: 'truncated' });
    const m = meta();
    const r = await post(sim, { metadata: m });
    expect(r.status).toBe(200);
    expect(Number(r.headers['content-length'])).toBe(Buffer.byteLength(r.text));
    expect(() => JSON.parse(r.text)).toThrow();
    const full = JSON.stringify({ result: 0, responseCode: 200, actionCode: 1, queryID: m.queryID, incident_info: {} });
    expect(full.startsWith(r.text)).toBe(true);
    expect(r.text.length).toBeLessThan(full.length);
  });

  it('body empty', async () => {
    sim.setFaults({ body: 'empty' });
    const r = await post(sim, { metadata: meta() });
    expect(r.status).toBe(200);
    expect(r.text).toBe('');
  });

  it('body no_action: JSON without actionCode', async () => {
    sim.setFaults({ body: 'no_action' });
    const parsed = JSON.parse((await post(sim, { metadata: meta() })).text);
    expect(parsed.result).toBe(0);
    expect('actionCode' in parsed).toBe(false);
  });

  it('body unknown_action: actionCode 42', async () => {
    sim.setFaults({ body: 'unknown_action' });
    expect(JSON.parse((await post(sim, { metadata: meta() })).text).actionCode).toBe(42);
  });

  it('forceActionCode: answers that code whatever the content', async () => {
    sim.setFaults({ forceActionCode: 9 });
    expect(JSON.parse((await post(sim, { metadata: meta(), message: eml('clean') })).text).actionCode).toBe(9);
    sim.setFaults({ forceActionCode: 1 });
    expect(JSON.parse((await post(sim, { metadata: meta(), message: eml('4111111111111111') })).text).actionCode).toBe(1);
  });

  it('dropConnection: the socket closes without an answer', async () => {
    sim.setFaults({ dropConnection: true });
    await expect(post(sim, { metadata: meta() })).rejects.toThrow();
    sim.setFaults({ dropConnection: false });
    expect((await post(sim, { metadata: meta() })).status).toBe(200);
  });

  it('resetFaults returns to normal answers; invalid knobs are refused', async () => {
    sim.setFaults({ status: 500, body: 'garbage' });
    sim.resetFaults();
    expect(JSON.parse((await post(sim, { metadata: meta() })).text).actionCode).toBe(1);
    expect(() => sim.setFaults({ status: 42 })).toThrow(/status/);
    expect(() => sim.setFaults({ body: 'weird' as never })).toThrow(/body/);
  });
});
