// Trend Micro Cloud App Security REST client: bearer auth, one shared rate limiter, bounded retries, typed errors.
import { Pool } from 'undici';
import { setTimeout as sleepTimer } from 'node:timers/promises';
import type { Logger } from '../observability/logger.js';
import {
  CAS_REGION_HOSTS,
  DEFAULT_CAS_SETTINGS,
  type CasRegion,
  type CasRateSettings,
  type CasRetrySettings,
  type CasTimeoutSettings,
} from '../config/cas-schema.js';
import type { CasRuleAction, CasRules, CasList } from './items.js';
import { CAS_LISTS } from './items.js';
import type { MitigationItem } from './validate.js';
import { maskUrl } from '../util/mask.js';
import type { CasLimiter } from './shared-rate.js';
import { CasRateLimiter } from './rate-limiter.js';
import {
  CAS_THROTTLE_CODE,
  CasError,
  CasPollTimeoutError,
  classify,
  isTerminal,
  messageOf,
  numOr,
  readCapped,
  strOrNull,
  transportError,
  type Json,
  type MitigationAction,
  type RawResponse,
} from './responses.js';

// Callers import these from here, where they were first defined.
export { CasRateLimiter } from './rate-limiter.js';
export { CAS_THROTTLE_CODE, CasError, CasPollTimeoutError, TERMINAL_STATUSES, isTerminal, type MitigationAction } from './responses.js';

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
    // What the caller leaves out is the config schema's default (cas.retry, cas.timeouts, cas.rate): one set of numbers.
    this.retry = { ...DEFAULT_CAS_SETTINGS.retry, ...opts.retry };
    this.timeouts = { ...DEFAULT_CAS_SETTINGS.timeouts, ...opts.timeouts };
    this.limiter = opts.limiter ?? new CasRateLimiter(opts.rate ?? DEFAULT_CAS_SETTINGS.rate);
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
