// Trend Micro Cloud App Security REST client: bearer auth, one shared rate limiter, bounded retries, typed errors.
import { Pool } from 'undici';
import type { Readable } from 'node:stream';
import { setTimeout as sleepTimer } from 'node:timers/promises';
import type { Logger } from '../observability/logger.js';
import { CAS_REGION_HOSTS, type CasRegion, type CasRateSettings, type CasRetrySettings, type CasTimeoutSettings } from '../config/cas-schema.js';
import type { CasRuleAction, CasRules, CasList } from './items.js';
import { CAS_LISTS } from './items.js';
import type { MitigationItem } from './validate.js';
import { maskUrl } from '../util/mask.js';
import type { CasLimiter } from './shared-rate.js';
import { DlpError } from '../errors.js';

/** Body `code` of the documented throttle answer (cas.md §2); seen on 429, honoured on any status. */
export const CAS_THROTTLE_CODE = -4290001;

/** Action states after which nothing changes any more (cas.md §6). */
export const TERMINAL_STATUSES = ['Success', 'Skipped', 'Failed'] as const;

/**
 * A failed CAS call. `status` is the HTTP status (0 when no response arrived: timeout, reset,
 * refused); `code`, `msg` and `traceId` come from the vendor's error body when there was one, so an
 * operator can quote the traceId to Trend Micro support.
 */
export class CasError extends DlpError {
  readonly errorCode = 'DLP_ERR_CAS' as const;
  readonly status: number;
  readonly code: number | null;
  readonly msg: string;
  readonly traceId: string | null;
  readonly retryable: boolean;
  /** Attempts made before giving up (1 when the error was not retryable). */
  attempts = 1;
  /** Server's Retry-After, if it ever sends one (not documented); used to pause the limiter. */
  retryAfterMs: number | null = null;
  constructor(what: string, f: { status: number; code: number | null; msg: string; traceId: string | null; retryable: boolean }, opts?: { cause?: unknown }) {
    const parts = [`CAS ${what} failed:`, f.status ? `HTTP ${f.status}` : 'no response'];
    if (f.code !== null) parts.push(`code ${f.code}`);
    if (f.msg) parts.push(`- ${f.msg}`);
    if (f.traceId) parts.push(`(traceId ${f.traceId})`);
    const hint = HINTS[f.status];
    if (hint) parts.push(`- ${hint}`);
    super(parts.join(' '), opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CasError';
    this.status = f.status;
    this.code = f.code;
    this.msg = f.msg;
    this.traceId = f.traceId;
    this.retryable = f.retryable;
  }
}

const HINTS: Record<number, string> = {
  400: 'the request was rejected as malformed; it will not be retried',
  401: 'the token is missing, wrong, expired (365 days) or deleted; create or refresh it in the CAS console',
  403: 'the token lacks the API type this call needs (Threat Mitigation / Threat Remediation)',
  404: 'unknown API path or batch',
  429: 'throttled: more than the allowed requests per minute for this token',
};

/** `pollMitigation` ran out of time; `actions` is the last state seen so the caller can still report it. */
export class CasPollTimeoutError extends DlpError {
  readonly errorCode = 'DLP_ERR_CAS_POLL_TIMEOUT' as const;
  readonly actions: MitigationAction[];
  constructor(batchId: string, timeoutMs: number, actions: MitigationAction[]) {
    const open = actions.filter((a) => !isTerminal(a.status)).length;
    super(`CAS results for batch ${batchId} not final after ${timeoutMs} ms (${open} of ${actions.length} actions still open)`);
    this.name = 'CasPollTimeoutError';
    this.actions = actions;
  }
}

/**
 * Fixed-window throttle on our side of the wire. Each of the `limit` slots is held while its request
 * is in flight and becomes free again `windowMs` after the response (or failure) arrived. Counting
 * from the response rather than the send means that, whatever the network delay, the server cannot
 * see more than `limit` arrivals in any `windowMs` span: a slot's next request leaves only after the
 * previous one has certainly arrived plus a full window. That holds for the vendor's window opened by
 * the first request (cas.md §2) wherever that window starts, which a client-side clock-aligned window
 * cannot promise. One instance must be shared by every call made with one token.
 */
export class CasRateLimiter implements CasLimiter {
  readonly limit: number;
  readonly windowMs: number;
  private readonly slots: number[];
  private readonly waiters: Array<{ grant: (release: () => void) => void }> = [];
  private pausedUntil = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;

  constructor(rate: CasRateSettings, now: () => number = Date.now) {
    if (!(rate.limit >= 1) || !(rate.windowMs >= 1)) throw new RangeError('rate limit and window must be positive');
    this.limit = Math.floor(rate.limit);
    this.windowMs = rate.windowMs;
    this.slots = new Array<number>(this.limit).fill(0);
    this.now = now;
  }

  /** Resolves with a release function once a request may be sent; rejects if `signal` aborts first. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: (release: () => void) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(abortReason(signal!));
        this.pump();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
      this.pump();
    });
  }

  /** After a 429 nobody sends until the server's window has surely passed: the quota is per token, not per call. */
  pauseFor(ms: number): void {
    this.pausedUntil = Math.max(this.pausedUntil, this.now() + ms);
    this.pump();
  }

  /** Requests waiting for a slot (for metrics and tests). */
  get queued(): number {
    return this.waiters.length;
  }

  private pump(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    // Bounded: each pass either grants a waiter or arms one timer and leaves.
    while (this.waiters.length > 0) {
      const t = this.now();
      if (t < this.pausedUntil) return this.arm(this.pausedUntil - t);
      let idx = 0;
      for (let i = 1; i < this.slots.length; i++) if (this.slots[i]! < this.slots[idx]!) idx = i;
      const freeAt = this.slots[idx]!;
      if (freeAt === Infinity) return; // all held; a release will pump again
      if (freeAt > t) return this.arm(freeAt - t);
      this.slots[idx] = Infinity;
      const waiter = this.waiters.shift()!;
      let released = false;
      waiter.grant(() => {
        if (released) return;
        released = true;
        this.slots[idx] = this.now() + this.windowMs;
        this.pump();
      });
    }
  }

  private arm(ms: number): void {
    // Referenced on purpose: a CLI process waiting only on the limiter must not exit early.
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.pump();
      },
      Math.max(1, ms),
    );
  }
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}

/** One action of a mitigation batch as GET /v1/mitigation/mails returns it (cas.md §6); unknown fields are kept. */
export interface MitigationAction {
  action_id: string;
  batch_id: string;
  action_type: string;
  status: string;
  service?: string;
  account_provider?: string;
  account_user_email?: string;
  mailbox?: string;
  mail_message_id?: string;
  mail_unique_id?: string;
  action_requested_at?: string;
  action_executed_at?: string;
  error_code?: number;
  error_message?: string;
  [key: string]: unknown;
}

export function isTerminal(status: string): boolean {
  return (TERMINAL_STATUSES as readonly string[]).includes(status);
}

export type BlockedLists = Record<CasList, string[]>;

export interface CasClientOptions {
  token: string;
  /** Region name (cas.md §1); ignored when `url` is given. */
  region?: CasRegion | null;
  /** Explicit base URL, e.g. a proxy or the simulator. */
  url?: string | null;
  /**
   * Share one limiter between every client using the same token (a PgCasRateLimiter shares it between
   * relays); created from `rate` otherwise.
   */
  limiter?: CasLimiter;
  rate?: CasRateSettings;
  retry?: Partial<CasRetrySettings>;
  timeouts?: Partial<CasTimeoutSettings>;
  logger?: Logger;
  /** Parallel connections to the service; the limiter, not this, bounds the request rate. */
  connections?: number;
  /** Jitter source in [0,1); injectable so backoff tests are reproducible. */
  random?: () => number;
  /** Largest response body we read (a results page of 500 actions is a few hundred KB). */
  maxResponseBytes?: number;
}

const DEFAULT_RETRY: CasRetrySettings = { maxAttempts: 5, baseMs: 2_000, maxMs: 32_000, totalMs: 180_000 };
const DEFAULT_TIMEOUTS: CasTimeoutSettings = { connectMs: 10_000, headersMs: 30_000, bodyMs: 30_000, requestMs: 60_000 };

/** Base URL from an explicit URL or a region; `/api/` is deliberately absent (cas.md §1). */
export function casBaseUrl(opts: { region?: CasRegion | null; url?: string | null }): string {
  if (opts.url) {
    const u = new URL(opts.url);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error(`CAS URL must be http(s): ${maskUrl(opts.url)}`);
    return u.origin + u.pathname.replace(/\/+$/, '');
  }
  if (opts.region) {
    const host = CAS_REGION_HOSTS[opts.region];
    if (!host) throw new Error(`unknown CAS region "${String(opts.region)}" (known: ${Object.keys(CAS_REGION_HOSTS).join(', ')})`);
    return `https://${host}`;
  }
  throw new Error('CAS needs a region or a URL');
}

interface RawResponse {
  status: number;
  body: Record<string, unknown> | null;
}

type Json = Record<string, unknown>;

/** The subset of the client the outbox pusher and the CLI need; tests may stub it. */
export interface CasApi {
  updateBlockedLists(action: CasRuleAction, rules: CasRules): Promise<{ code: number; message: string; traceId: string | null }>;
  getBlockedLists(): Promise<BlockedLists>;
  mitigate(items: MitigationItem[]): Promise<{ batchId: string; traceId: string | null }>;
  getMitigationResults(query: { batchId: string } | { start: string; end: string }, limit?: number): Promise<MitigationAction[]>;
  pollMitigation(batchId: string, opts: { intervalMs: number; timeoutMs: number }): Promise<MitigationAction[]>;
}

export class CasClient implements CasApi {
  readonly baseUrl: string;
  readonly limiter: CasLimiter;
  private readonly origin: string;
  private readonly basePath: string;
  private readonly pool: Pool;
  /** ES private: invisible to JSON.stringify, pino and util.inspect, so logging the client cannot leak it. */
  readonly #authorization: string;
  private readonly retry: CasRetrySettings;
  private readonly timeouts: CasTimeoutSettings;
  private readonly logger: Logger | undefined;
  private readonly random: () => number;
  private readonly maxResponseBytes: number;
  private readonly closing = new AbortController();

  constructor(opts: CasClientOptions) {
    if (!opts.token || /[\r\n]/.test(opts.token)) throw new Error('CAS token is empty or malformed');
    this.baseUrl = casBaseUrl(opts);
    const u = new URL(this.baseUrl);
    this.origin = u.origin;
    this.basePath = u.pathname === '/' ? '' : u.pathname;
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
    this.limiter = opts.limiter ?? new CasRateLimiter(opts.rate ?? { limit: 20, windowMs: 60_000 });
    this.logger = opts.logger;
    this.random = opts.random ?? Math.random;
    this.maxResponseBytes = opts.maxResponseBytes ?? 16 * 1024 * 1024;
    this.#authorization = `Bearer ${opts.token}`;
    this.pool = new Pool(this.origin, {
      connections: opts.connections ?? 4,
      connect: { timeout: this.timeouts.connectMs },
      headersTimeout: this.timeouts.headersMs,
      bodyTimeout: this.timeouts.bodyMs,
      keepAliveTimeout: 30_000,
    });
  }

  async close(): Promise<void> {
    this.closing.abort(new Error('CAS client closed'));
    await this.pool.close().catch(() => this.pool.destroy());
  }

  async updateBlockedLists(action: CasRuleAction, rules: CasRules): Promise<{ code: number; message: string; traceId: string | null }> {
    const body: { action_type: CasRuleAction; rules: CasRules } = { action_type: action, rules: {} };
    for (const list of CAS_LISTS) {
      const values = rules[list];
      if (values && values.length > 0) body.rules[list] = values;
    }
    if (Object.keys(body.rules).length === 0) throw new Error('updateBlockedLists needs at least one non-empty list');
    const res = await this.call('POST', '/v1/remediation/mails', body, `blocked-list ${action}`);
    return { code: numOr(res.body?.['code'], 0), message: messageOf(res.body), traceId: strOrNull(res.body?.['traceId']) };
  }

  async getBlockedLists(): Promise<BlockedLists> {
    const res = await this.call('GET', '/v1/remediation/mails', undefined, 'get blocked lists');
    // Older tenants omit file256hashes and an empty list may come back without `rules` (cas.md §4).
    const rules = (res.body?.['rules'] ?? {}) as Json;
    const out = {} as BlockedLists;
    for (const list of CAS_LISTS) {
      const v = rules[list];
      out[list] = Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
    }
    return out;
  }

  async mitigate(items: MitigationItem[]): Promise<{ batchId: string; traceId: string | null }> {
    if (items.length === 0) throw new Error('mitigate needs at least one item');
    const res = await this.call('POST', '/v1/mitigation/mails', items, 'mitigation');
    const batchId = res.body?.['batch_id'];
    if (typeof batchId !== 'string' || !batchId) {
      throw new CasError('mitigation', {
        status: res.status,
        code: null,
        msg: 'response carries no batch_id',
        traceId: strOrNull(res.body?.['traceId']),
        retryable: false,
      });
    }
    // The German doc example misspells it `tracdId`; accept that too rather than print nothing.
    return { batchId, traceId: strOrNull(res.body?.['traceId']) ?? strOrNull(res.body?.['tracdId']) };
  }

  async getMitigationResults(query: { batchId: string } | { start: string; end: string }, limit = 500): Promise<MitigationAction[]> {
    const params = new URLSearchParams();
    if ('batchId' in query) params.set('batch_id', query.batchId);
    else {
      params.set('start', query.start);
      params.set('end', query.end);
    }
    params.set('limit', String(Math.min(500, Math.max(1, Math.floor(limit)))));
    let path = `/v1/mitigation/mails?${params.toString()}`;
    const actions: MitigationAction[] = [];
    const seen = new Set<string>();
    // Bounded: 1,000 pages of 500 is far beyond anything a 72-hour window holds; a repeating link ends it too.
    for (let page = 0; page < 1000; page++) {
      seen.add(path);
      const res = await this.call('GET', path, undefined, 'mitigation results');
      const list = res.body?.['actions'];
      if (Array.isArray(list)) for (const a of list) if (a && typeof a === 'object') actions.push(a as MitigationAction);
      const next = this.nextPath(res.body?.['next_link']);
      if (!next || seen.has(next)) break;
      path = next;
    }
    return actions;
  }

  async pollMitigation(batchId: string, opts: { intervalMs: number; timeoutMs: number }): Promise<MitigationAction[]> {
    const deadline = Date.now() + opts.timeoutMs;
    const interval = Math.max(1, opts.intervalMs);
    const maxRounds = Math.ceil(opts.timeoutMs / interval) + 2;
    let last: MitigationAction[] = [];
    for (let round = 0; round < maxRounds; round++) {
      last = await this.getMitigationResults({ batchId });
      // An empty list means "not visible yet", never "done": a batch always has at least one action.
      if (last.length > 0 && last.every((a) => isTerminal(a.status))) return last;
      const left = deadline - Date.now();
      if (left <= 0) break;
      await sleepTimer(Math.min(interval, left), undefined, { signal: this.closing.signal });
    }
    throw new CasPollTimeoutError(batchId, opts.timeoutMs, last);
  }

  /**
   * `next_link` is followed as given (it carries an opaque token) but always against our own origin:
   * the bearer token must never go to a host named in a response. Absent, null, "null" and "" all end paging.
   */
  private nextPath(link: unknown): string | null {
    if (typeof link !== 'string') return null;
    const s = link.trim();
    if (!s || s === 'null') return null;
    if (s.startsWith(this.baseUrl + '/')) return s.slice(this.baseUrl.length);
    let u: URL;
    try {
      u = new URL(s, this.baseUrl + '/');
    } catch {
      return null;
    }
    const p = u.pathname.startsWith(this.basePath + '/') ? u.pathname.slice(this.basePath.length) : u.pathname;
    return p + u.search;
  }

  /** One logical call: limiter, attempts with backoff, all inside the call's total budget. */
  private async call(method: 'GET' | 'POST', path: string, body: unknown, what: string): Promise<RawResponse> {
    const started = Date.now();
    const budget = AbortSignal.any([AbortSignal.timeout(this.retry.totalMs), this.closing.signal]);
    let lastErr: CasError | null = null;
    for (let attempt = 1; attempt <= this.retry.maxAttempts; attempt++) {
      let release: () => void;
      try {
        release = await this.limiter.acquire(budget);
      } catch (cause) {
        throw this.giveUp(lastErr, what, attempt - 1, 'waiting for the rate limiter', cause);
      }
      let err: CasError;
      try {
        const res = await this.once(method, path, body, budget);
        const classified = classify(res, what, method);
        if (!classified) return res;
        err = classified;
      } catch (cause) {
        err = transportError(cause, what, this.closing.signal.aborted);
      } finally {
        release();
      }
      err.attempts = attempt;
      lastErr = err;
      if (!err.retryable || attempt >= this.retry.maxAttempts) throw err;
      if (err.status === 429 || err.code === CAS_THROTTLE_CODE) this.limiter.pauseFor(err.retryAfterMs ?? this.limiter.windowMs);
      // Full jitter: spreads the retries of several relays that failed together.
      const cap = Math.min(this.retry.maxMs, this.retry.baseMs * 2 ** (attempt - 1));
      const delay = Math.floor(this.random() * cap);
      if (Date.now() - started + delay >= this.retry.totalMs) throw err;
      this.logger?.warn({ cas: what, status: err.status, code: err.code, traceId: err.traceId, attempt, delayMs: delay }, 'CAS call failed, retrying');
      try {
        await sleepTimer(delay, undefined, { signal: budget });
      } catch (cause) {
        throw this.giveUp(err, what, attempt, 'backing off', cause);
      }
    }
    throw lastErr ?? new CasError(what, { status: 0, code: null, msg: 'no attempt made', traceId: null, retryable: false });
  }

  private giveUp(last: CasError | null, what: string, attempts: number, phase: string, cause: unknown): CasError {
    if (this.closing.signal.aborted) return new CasError(what, { status: 0, code: null, msg: 'client closed', traceId: null, retryable: false }, { cause });
    if (last) return last;
    const e = new CasError(
      what,
      { status: 0, code: null, msg: `time budget of ${this.retry.totalMs} ms spent ${phase}`, traceId: null, retryable: true },
      { cause },
    );
    e.attempts = attempts;
    return e;
  }

  private async once(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    budget: AbortSignal,
  ): Promise<RawResponse & { text: string; retryAfterMs: number | null }> {
    const headers: Record<string, string> = { authorization: this.#authorization, accept: 'application/json' };
    let payload: string | undefined;
    if (body !== undefined) {
      payload = JSON.stringify(body);
      headers['content-type'] = 'application/json';
    }
    // The attempt ends at its own deadline or when the whole call's budget is spent, whichever is first.
    const signal = AbortSignal.any([AbortSignal.timeout(this.timeouts.requestMs), budget]);
    const res = await this.pool.request({ method, path: this.basePath + path, headers, body: payload ?? null, signal });
    const text = await readCapped(res.body, this.maxResponseBytes);
    let parsed: Json | null = null;
    try {
      const v: unknown = JSON.parse(text);
      if (v && typeof v === 'object' && !Array.isArray(v)) parsed = v as Json;
    } catch {
      /* gateway HTML or an empty body: classified below */
    }
    const ra = res.headers['retry-after'];
    const raSec = typeof ra === 'string' && /^\d{1,5}$/.test(ra.trim()) ? Number(ra) : null;
    return { status: res.statusCode, body: parsed, text, retryAfterMs: raSec === null ? null : raSec * 1000 };
  }
}

/** null for success; otherwise the error to throw or retry. */
function classify(res: RawResponse & { text: string; retryAfterMs: number | null }, what: string, method: string): CasError | null {
  const code = typeof res.body?.['code'] === 'number' ? res.body['code'] : null;
  const traceId = strOrNull(res.body?.['traceId']);
  const msg = res.body ? messageOf(res.body) : snippet(res.text);
  let err: CasError;
  if (res.status >= 200 && res.status < 300) {
    if (res.body && (code === null || code === 0)) return null;
    if (!res.body) {
      // A 2xx we cannot read: safe to repeat a GET; a POST may have taken effect, so report instead.
      err = new CasError(what, {
        status: res.status,
        code: null,
        msg: `unreadable success body: ${snippet(res.text)}`,
        traceId: null,
        retryable: method === 'GET',
      });
    } else {
      err = new CasError(what, { status: res.status, code, msg, traceId, retryable: code === CAS_THROTTLE_CODE });
    }
  } else {
    const retryable = res.status === 429 || res.status === 408 || res.status >= 500 || code === CAS_THROTTLE_CODE;
    err = new CasError(what, { status: res.status, code, msg: msg || `HTTP ${res.status}`, traceId, retryable });
  }
  err.retryAfterMs = res.retryAfterMs;
  return err;
}

function transportError(cause: unknown, what: string, closed: boolean): CasError {
  if (closed) return new CasError(what, { status: 0, code: null, msg: 'client closed', traceId: null, retryable: false }, { cause });
  const e = cause as { code?: string; name?: string; message?: string };
  const kind =
    e?.name === 'TimeoutError' || e?.name === 'AbortError' || e?.code === 'UND_ERR_ABORTED'
      ? 'request deadline exceeded'
      : e?.code === 'UND_ERR_CONNECT_TIMEOUT'
        ? 'connect timeout'
        : e?.code === 'UND_ERR_HEADERS_TIMEOUT'
          ? 'response headers timeout'
          : e?.code === 'UND_ERR_BODY_TIMEOUT'
            ? 'response body timeout'
            : `${e?.code ?? e?.name ?? 'error'}: ${e?.message ?? String(cause)}`;
  // Every transport failure is worth another attempt: resets, refusals and timeouts are what outages look like.
  return new CasError(what, { status: 0, code: null, msg: kind, traceId: null, retryable: true }, { cause });
}

async function readCapped(body: Readable, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of body) {
    const b = chunk as Buffer;
    n += b.length;
    if (n > max) {
      body.destroy();
      throw Object.assign(new Error(`response larger than ${max} bytes`), { code: 'CAS_RESPONSE_TOO_LARGE' });
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Error and success bodies use `msg` or `message` depending on the endpoint (cas.md §2); read both. */
function messageOf(body: Json | null | undefined): string {
  const msg = body?.['msg'];
  const message = body?.['message'];
  if (typeof msg === 'string' && msg) return msg;
  return typeof message === 'string' ? message : '';
}

function strOrNull(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 ? v : null;
}

function numOr(v: unknown, d: number): number {
  return typeof v === 'number' ? v : d;
}

/** A short, tag-free excerpt of a non-JSON body (an HTML 502 page) for the error message. */
function snippet(text: string): string {
  const t = text
    .replace(/<[^>]*>/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return t.length > 160 ? `${t.slice(0, 157)}...` : t;
}
