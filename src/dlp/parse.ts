// Reads a UCWI answer defensively: both documented success shapes, every failure turned into a classified DLP error. Pure, no I/O.
import type { MatchedPolicy } from '../quarantine/types.js';

export type DlpErrorClass =
  | 'auth' // 401/403, or result errorCode 401: keys or clock wrong
  | 'client_error' // other 4xx: we sent something UCWI refused
  | 'server_error' // 5xx, or result=1 with a server errorCode
  | 'timeout' // connect, headers, body or overall deadline
  | 'unreachable' // refused, reset, DNS, TLS
  | 'bad_response' // not JSON, not an object, missing actionCode, too large
  | 'unknown_action' // an actionCode outside 1..9
  | 'saturated'; // no free slot for a call within the deadline

export type DlpVerdict = { ok: true; actionCode: number; policies: MatchedPolicy[] };
export type DlpFailure = { ok: false; errorClass: DlpErrorClass; detail: string; httpStatus?: number; actionCode?: number };
export type DlpParsed = DlpVerdict | DlpFailure;

export const KNOWN_ACTION_CODES: ReadonlySet<number> = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9]);
const MAX_POLICIES = 100;

function toInt(v: unknown): number | null {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && /^-?\d{1,9}$/.test(v.trim())) return Number(v.trim());
  return null;
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 ? v.slice(0, 200) : null;
}

export function classifyStatus(status: number): DlpErrorClass | null {
  if (status === 200) return null;
  if (status === 401 || status === 403) return 'auth';
  if (status >= 400 && status < 500) return 'client_error';
  if (status >= 500) return 'server_error';
  return 'bad_response';
}

/**
 * Success is HTTP 200 and `result` 0, or `responseCode` 200, or neither field but an `actionCode`
 * (the seed's Python sample reads responseCode, its table documents result; real servers may send
 * either). Anything else is a failure the policy maps to an action.
 */
export function parseUcwiResponse(status: number, bodyText: string): DlpParsed {
  const statusClass = classifyStatus(status);
  let body: unknown;
  try {
    body = JSON.parse(bodyText);
  } catch {
    if (statusClass) return { ok: false, errorClass: statusClass, httpStatus: status, detail: `HTTP ${status}` };
    return { ok: false, errorClass: 'bad_response', httpStatus: status, detail: 'response is not JSON' };
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return { ok: false, errorClass: statusClass ?? 'bad_response', httpStatus: status, detail: 'response is not a JSON object' };
  }
  const o = body as Record<string, unknown>;
  const message = str(o['message']) ?? '';
  if (statusClass) {
    return { ok: false, errorClass: statusClass, httpStatus: status, detail: `HTTP ${status}${message ? `: ${message}` : ''}` };
  }
  const result = toInt(o['result']);
  const responseCode = toInt(o['responseCode']);
  const declaredFailure = (result !== null && result !== 0) || (responseCode !== null && responseCode !== 200 && result !== 0);
  if (declaredFailure) {
    const errorCode = toInt(o['errorCode']) ?? responseCode ?? 0;
    const cls: DlpErrorClass = errorCode === 401 || errorCode === 403 ? 'auth' : errorCode >= 400 && errorCode < 500 ? 'client_error' : 'server_error';
    return { ok: false, errorClass: cls, httpStatus: status, detail: `UCWI error ${errorCode}${message ? `: ${message}` : ''}` };
  }
  if (!('actionCode' in o)) return { ok: false, errorClass: 'bad_response', httpStatus: status, detail: 'no actionCode in response' };
  const actionCode = toInt(o['actionCode']);
  if (actionCode === null) return { ok: false, errorClass: 'bad_response', httpStatus: status, detail: 'actionCode is not an integer' };
  if (!KNOWN_ACTION_CODES.has(actionCode)) {
    return { ok: false, errorClass: 'unknown_action', httpStatus: status, actionCode, detail: `unknown actionCode ${actionCode}` };
  }
  return { ok: true, actionCode, policies: readPolicies(o['incident_info']) };
}

function readPolicies(info: unknown): MatchedPolicy[] {
  if (typeof info !== 'object' || info === null) return [];
  const list = (info as Record<string, unknown>)['matchedPolicies'];
  if (!Array.isArray(list)) return [];
  return list.slice(0, MAX_POLICIES).flatMap((p): MatchedPolicy[] => {
    if (typeof p !== 'object' || p === null) return [];
    const r = p as Record<string, unknown>;
    return [
      {
        name: str(r['name']) ?? '(unnamed)',
        severity: toInt(r['severity']),
        actionSettingName: str(r['actionSettingName']),
        numberOfMatches: toInt(r['numberOfMatches']),
      },
    ];
  });
}
