// CAS client against the simulator: retries on 429/5xx/HTML 502/reset/timeouts, no retry on 400/401/403, the shared limiter, paging and polling.
import { afterEach, describe, expect, it } from 'vitest';
import { PassThrough } from 'node:stream';
import { CasClient, CasError, CasRateLimiter, CasPollTimeoutError, type CasClientOptions } from '../../src/cas/client.js';
import { startCasSim, type CasSim, type CasSimOptions, type CasSimRequest } from '../sim/cas/server.js';
import { createLogger } from '../../src/observability/logger.js';
import type { MitigationItem } from '../../src/cas/validate.js';

const TOKEN = '1de231142eef3f83928da98dc251fbebb6cafe77';
const sims: CasSim[] = [];
const clients: CasClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(sims.splice(0).map((s) => s.close()));
});

async function sim(opts: Partial<CasSimOptions> = {}): Promise<CasSim> {
  const s = await startCasSim({ token: TOKEN, rateLimit: { limit: 1000, windowMs: 60_000 }, ...opts });
  sims.push(s);
  return s;
}

/** Fast retries for tests: tiny backoff, a short throttle window so a 429 pause is brief. */
function client(s: CasSim, opts: Partial<CasClientOptions> = {}): CasClient {
  const c = new CasClient({
    token: TOKEN,
    url: s.url,
    rate: { limit: 100, windowMs: 100 },
    retry: { maxAttempts: 4, baseMs: 5, maxMs: 20, totalMs: 10_000 },
    timeouts: { connectMs: 1_000, headersMs: 2_000, bodyMs: 2_000, requestMs: 3_000 },
    ...opts,
  });
  clients.push(c);
  return c;
}

const catchErr = async (p: Promise<unknown>): Promise<CasError> => {
  try {
    await p;
  } catch (err) {
    return err as CasError;
  }
  throw new Error('expected the call to fail');
};

const okItem: MitigationItem = {
  action_type: 'MAIL_QUARANTINE',
  service: 'exchange',
  account_provider: 'office365',
  mailbox: 'user2@example2.com',
  mail_message_id: '<m1@example2.com>',
  mail_message_delivery_time: '2019-03-15T07:45:27.000Z',
};

describe('retries', () => {
  it.each([
    ['429 with -4290001', 429],
    ['500', 500],
    ['503', 503],
    ['HTML 502', 'html502'],
    ['connection reset', 'reset'],
    ['200 carrying code -4290001', 'throttle-200'],
  ] as const)('retries after %s and then succeeds', async (_name, fault) => {
    const s = await sim({ faults: { next: [fault, fault] } });
    const c = client(s);
    const r = await c.updateBlockedLists('create', { senders: ['bad@evil.example'] });
    expect(r.code).toBe(0);
    expect(r.message).toBe('Add rules successfully.');
    expect(s.requestLog).toHaveLength(3);
    expect(s.requestLog.slice(0, 2).every((e) => e.fault !== null)).toBe(true);
    expect(s.list('senders')).toEqual(['bad@evil.example']);
  });

  it('retries a malformed JSON body on a GET', async () => {
    const s = await sim({ faults: { next: ['malformed-json'] } });
    const c = client(s);
    await c.getBlockedLists();
    expect(s.requestLog).toHaveLength(2);
  });

  it('retries a response that exceeds the request deadline', async () => {
    const s = await sim({ faults: { next: [{ delayMs: 1_500 }] } });
    const c = client(s, { timeouts: { connectMs: 1_000, headersMs: 5_000, bodyMs: 5_000, requestMs: 300 } });
    const lists = await c.getBlockedLists();
    expect(lists).toEqual({ senders: [], urls: [], filehashes: [], file256hashes: [] });
    expect(s.requestLog.length).toBe(2);
  });

  it('honours the real throttle: a 429 pauses the shared limiter and the call still succeeds', async () => {
    const s = await sim({ rateLimit: { limit: 2, windowMs: 400 } });
    // Deliberately looser than the server so the server's 429 is what stops us.
    const c = client(s, { rate: { limit: 10, windowMs: 400 } });
    for (let i = 0; i < 3; i++) await c.getBlockedLists();
    const statuses = s.requestLog.map((e) => e.status);
    expect(statuses).toContain(429);
    expect(statuses.filter((x) => x === 200)).toHaveLength(3);
  });

  it('gives up after maxAttempts with the last error, marked retryable', async () => {
    const s = await sim({ faults: { always: 503 } });
    const c = client(s, { retry: { maxAttempts: 3, baseMs: 5, maxMs: 10, totalMs: 10_000 } });
    const err = await catchErr(c.getBlockedLists());
    expect(err).toBeInstanceOf(CasError);
    expect(err.status).toBe(503);
    expect(err.retryable).toBe(true);
    expect(err.attempts).toBe(3);
    expect(typeof err.traceId).toBe('string');
    expect(s.requestLog).toHaveLength(3);
  });

  it('reports an unreachable service as status 0 after bounded attempts', async () => {
    const s = await sim();
    const url = s.url;
    await s.close();
    sims.splice(sims.indexOf(s), 1);
    const c = new CasClient({ token: TOKEN, url, retry: { maxAttempts: 2, baseMs: 5, maxMs: 10, totalMs: 5_000 }, rate: { limit: 10, windowMs: 100 } });
    clients.push(c);
    const err = await catchErr(c.getBlockedLists());
    expect(err.status).toBe(0);
    expect(err.attempts).toBe(2);
    expect(err.retryable).toBe(true);
  });
});

describe('no retry on client errors', () => {
  it('400: reports code, msg and traceId once', async () => {
    const s = await sim();
    const c = client(s);
    const err = await catchErr(c.updateBlockedLists('create', { senders: ['not-an-address'] }));
    expect(err).toBeInstanceOf(CasError);
    expect(err).toMatchObject({ status: 400, retryable: false, attempts: 1 });
    expect(err.msg).toMatch(/Invalid items/);
    expect(err.traceId).toMatch(/^[0-9a-f-]{36}$/);
    expect(err.message).toMatch(/HTTP 400/);
    expect(s.requestLog).toHaveLength(1);
  });

  it('401: a wrong token, with a hint about the token', async () => {
    const s = await sim();
    const c = client(s, { token: 'wrong-token' });
    const err = await catchErr(c.getBlockedLists());
    expect(err).toMatchObject({ status: 401, retryable: false, msg: 'Authentication token not found' });
    expect(err.message).toMatch(/token/);
    expect(err.message).not.toContain('wrong-token');
    expect(s.requestLog).toHaveLength(1);
  });

  it('403: no permission', async () => {
    const s = await sim({ faults: { next: [403] } });
    const c = client(s);
    const err = await catchErr(c.mitigate([okItem]));
    expect(err).toMatchObject({ status: 403, retryable: false });
    expect(s.requestLog).toHaveLength(1);
  });

  it('never writes the token to the log', async () => {
    const s = await sim({ faults: { next: [503, 'html502'] } });
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (c: Buffer) => chunks.push(c));
    const c = client(s, { logger: createLogger({ level: 'debug', destination: out }) });
    await c.getBlockedLists();
    await new Promise((r) => setImmediate(r));
    const logger = createLogger({ level: 'debug', destination: out });
    logger.info({ client: c }, 'a careless log line with the whole client object');
    await new Promise((r) => setImmediate(r));
    const log = Buffer.concat(chunks).toString();
    expect(log).toMatch(/retrying/);
    expect(log).toMatch(/careless/);
    expect(log).not.toContain(TOKEN);
  });
});

describe('success shapes', () => {
  it('accepts 200 as well as 201 for a remediation POST, and reads `message`', async () => {
    const s = await sim({ remediationStatus: 200 });
    const c = client(s);
    const r = await c.updateBlockedLists('delete', { urls: ['https://x.example'] });
    expect(r).toMatchObject({ code: 0, message: 'Delete rules successfully.' });
  });

  it('puts several lists in one request and reads them back', async () => {
    const s = await sim();
    const c = client(s);
    await c.updateBlockedLists('create', {
      senders: ['a@evil.example'],
      filehashes: ['f3cdddb37f6a933d6a256bd98b4bc703a448c677'],
      file256hashes: ['2eb49162d4977bd96d6918a7602b5451adfd2c498c44592574b5741b3b585fc6'],
      urls: [],
    });
    expect(s.requestLog[0]?.counts).toEqual({ senders: 1, urls: 0, filehashes: 1, file256hashes: 1 });
    expect(s.requestLog[0]?.rules).not.toHaveProperty('urls');
    const lists = await c.getBlockedLists();
    expect(lists.senders).toEqual(['a@evil.example']);
    expect(lists.filehashes).toHaveLength(1);
  });
});

/** Largest number of arrivals inside any half-open span of `windowMs`. */
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

describe('shared rate limiter', () => {
  it('keeps 12 concurrent calls to at most 5 per 1000 ms window at the server', async () => {
    const s = await sim({ rateLimit: { limit: 5, windowMs: 1000 } });
    const limiter = new CasRateLimiter({ limit: 5, windowMs: 1000 });
    // Two clients sharing one limiter, as the pusher and the CLI would with one token.
    const a = client(s, { limiter });
    const b = client(s, { limiter });
    const calls = Array.from({ length: 12 }, (_, i) =>
      i % 3 === 0
        ? a.getBlockedLists()
        : i % 3 === 1
          ? b.updateBlockedLists('create', { senders: [`s${i}@evil.example`] })
          : a.getMitigationResults({ batchId: 'none' }),
    );
    await Promise.all(calls);
    expect(s.requestLog).toHaveLength(12);
    expect(s.requestLog.every((e) => e.status !== 429)).toBe(true);
    expect(maxInWindow(s.requestLog, 1000)).toBeLessThanOrEqual(5);
  });

  it('a waiting call can be cancelled by the call budget', async () => {
    const s = await sim();
    const limiter = new CasRateLimiter({ limit: 1, windowMs: 60_000 });
    const c = client(s, { limiter, retry: { maxAttempts: 2, baseMs: 5, maxMs: 10, totalMs: 200 } });
    await c.getBlockedLists();
    const err = await catchErr(c.getBlockedLists());
    expect(err.msg).toMatch(/rate limiter/);
    expect(s.requestLog).toHaveLength(1);
  });
});

describe('mitigation', () => {
  it.each(['null', 'string-null', 'empty', 'absent'] as const)('follows next_link across pages until it is %s', async (style) => {
    const s = await sim({ nextLinkStyle: style, mitigation: { createdMs: 0, executingMs: 0 } });
    const c = client(s);
    const items = Array.from({ length: 7 }, (_, i) => ({ ...okItem, mail_message_id: `<m${i}@example2.com>` }));
    const { batchId, traceId } = await c.mitigate(items);
    expect(batchId).toMatch(/^[0-9a-f-]{36}$/);
    expect(traceId).toMatch(/^[0-9a-f-]{36}$/);
    const actions = await c.getMitigationResults({ batchId }, 3);
    expect(actions).toHaveLength(7);
    expect(new Set(actions.map((a) => a.mail_message_id)).size).toBe(7);
    const gets = s.requestLog.filter((e) => e.method === 'GET');
    expect(gets).toHaveLength(3);
    expect(gets.every((e) => e.query['limit'] === '3')).toBe(true);
  });

  it('polls until every action is terminal: Success, Skipped and Failed', async () => {
    // Long enough in Created that the first look always sees it, even on a loaded machine.
    const s = await sim({ mitigation: { createdMs: 1_000, executingMs: 200 }, faults: { failMailboxes: ['gone@example2.com'] } });
    const c = client(s);
    await c.mitigate([okItem]);
    const { batchId } = await c.mitigate([okItem, { ...okItem, mail_message_id: '<new@example2.com>' }, { ...okItem, mailbox: 'gone@example2.com' }]);
    const first = await c.getMitigationResults({ batchId });
    expect(first.map((a) => a.status)).toEqual(['Created', 'Created', 'Created']);
    const actions = await c.pollMitigation(batchId, { intervalMs: 50, timeoutMs: 5_000 });
    expect(actions.map((a) => a.status)).toEqual(['Skipped', 'Success', 'Failed']);
    expect(actions[0]).toMatchObject({ error_code: 200, error_message: 'ResourceNotFound' });
    expect(actions[2]).toMatchObject({ error_code: -999 });
    expect(s.requestLog.filter((e) => e.method === 'GET').length).toBeGreaterThan(2);
  });

  it('gives up polling at the deadline with the last state', async () => {
    const s = await sim({ mitigation: { createdMs: 60_000, executingMs: 0 } });
    const c = client(s);
    const { batchId } = await c.mitigate([okItem]);
    const err = (await catchErr(c.pollMitigation(batchId, { intervalMs: 50, timeoutMs: 200 }))) as unknown as CasPollTimeoutError;
    expect(err).toBeInstanceOf(CasPollTimeoutError);
    expect(err.actions.map((a) => a.status)).toEqual(['Created']);
  });

  it('gets a 400 from the simulator for an invalid action, without retry', async () => {
    const s = await sim();
    const c = client(s);
    const err = await catchErr(c.mitigate([{ ...okItem, service: 'gmail', account_provider: 'google' }]));
    expect(err).toMatchObject({ status: 400, retryable: false });
    expect(err.msg).toMatch(/Gmail supports only MAIL_DELETE/);
  });
});

describe('total call budget', () => {
  it('ends a slow attempt when the call budget is spent, not only at the attempt deadline', async () => {
    const s = await sim({ faults: { always: { delayMs: 2_000 } } });
    const c = client(s, {
      retry: { maxAttempts: 5, baseMs: 5, maxMs: 10, totalMs: 300 },
      timeouts: { connectMs: 1_000, headersMs: 5_000, bodyMs: 5_000, requestMs: 5_000 },
    });
    const err = await catchErr(c.getBlockedLists());
    expect(err.status).toBe(0);
    expect(err.retryable).toBe(true);
    expect(s.requestLog).toHaveLength(1);
  });
});
