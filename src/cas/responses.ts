// What CAS answers: the typed errors, the mitigation action records, and the reading and classifying of one HTTP response.
import type { Readable } from 'node:stream';
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

export interface RawResponse {
  status: number;
  body: Record<string, unknown> | null;
}

export type Json = Record<string, unknown>;

/** null for success; otherwise the error to throw or retry. */
export function classify(res: RawResponse & { text: string; retryAfterMs: number | null }, what: string, method: string): CasError | null {
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

export function transportError(cause: unknown, what: string, closed: boolean): CasError {
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

export async function readCapped(body: Readable, max: number): Promise<string> {
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
export function messageOf(body: Json | null | undefined): string {
  const msg = body?.['msg'];
  const message = body?.['message'];
  if (typeof msg === 'string' && msg) return msg;
  return typeof message === 'string' ? message : '';
}

export function strOrNull(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 ? v : null;
}

export function numOr(v: unknown, d: number): number {
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
