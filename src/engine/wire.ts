// What the UCWI simulator puts on the wire: the documented fixed answers, the error envelope, the metadata field as read, and the incident records it keeps.
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { MatchedPolicy } from './policies.js';

/** The channel list, verbatim from UCWI's documentation (reference ucwi.md §6). */
export const CHANNEL_LIST =
  '{"channels": [{"name": "web", "description": "Web channel"}, {"name": "email", "description": "Email channel"}, {"name": "webserviceapp", "description": "WebService Application channel"}]}';
/** ASSUMPTION: the email channel detail is not documented; this shape mirrors the documented webserviceapp one. */
export const EMAIL_CHANNEL_DETAIL = { email: [{ name: 'smtp', description: 'SMTP protocol' }] };

const ERROR_MESSAGES: Readonly<Record<number, string>> = {
  400: 'Invalid parameter', // the wording UCWI's documentation shows
  401: 'Unauthorized',
  404: 'Not found',
  405: 'Method not allowed',
  413: 'Request entity too large',
  500: 'Internal server error',
};

export interface Metadata {
  queryID: string;
  sender: string | null;
  recipients: string[];
  md5: string | null;
}

/**
 * Incident as kept for GET /skg/v1/dlp/incident/{id}. The documented fields are queryID, forensicsName,
 * detectTime, incidentTime, source, dest; ASSUMPTION: the key names for channel, action, severity,
 * max matches and policies are not public, these are our guesses.
 */
export interface Incident {
  id: string;
  queryID: string;
  forensicsName: string;
  detectTime: number;
  incidentTime: number;
  source: string | null;
  dest: string[];
  channel: 'email';
  protocol: string;
  action: number;
  severity: number;
  maxMatches: number;
  policies: MatchedPolicy[];
}

/** The last N incidents, findable by incident id or by the caller's queryID. */
export class IncidentRing {
  private readonly ring: (Incident | undefined)[];
  private next = 0;
  private readonly byKey = new Map<string, Incident>();
  constructor(size: number) {
    this.ring = new Array<Incident | undefined>(size);
  }
  add(inc: Incident): void {
    const old = this.ring[this.next];
    if (old) {
      if (this.byKey.get(old.id) === old) this.byKey.delete(old.id);
      if (this.byKey.get(old.queryID) === old) this.byKey.delete(old.queryID);
    }
    this.ring[this.next] = inc;
    this.next = (this.next + 1) % this.ring.length;
    this.byKey.set(inc.id, inc);
    // A reused queryID finds the newest incident.
    this.byKey.set(inc.queryID, inc);
  }
  get(key: string): Incident | undefined {
    return this.byKey.get(key);
  }
}

export function parseMetadata(raw: string | undefined, truncated: boolean): { parsed: unknown; meta: Metadata | null } {
  if (raw === undefined) return { parsed: null, meta: null };
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return { parsed: raw, meta: null };
  }
  if (truncated || typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { parsed, meta: null };
  const o = parsed as Record<string, unknown>;
  if (typeof o['queryID'] !== 'string' || o['queryID'].trim() === '') return { parsed, meta: null };
  // Optional fields of the wrong type are ignored rather than refused: UCWI documents no error for them.
  const recipients = Array.isArray(o['recipients']) ? o['recipients'].filter((r): r is string => typeof r === 'string') : [];
  return {
    parsed,
    meta: {
      queryID: o['queryID'],
      sender: typeof o['sender'] === 'string' ? o['sender'] : null,
      recipients,
      md5: typeof o['md5'] === 'string' && o['md5'] !== '' ? o['md5'] : null,
    },
  };
}

export function sendJson(res: ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  sendRaw(res, status, 'application/json; charset=utf-8', text, extraHeaders);
}

export function sendRaw(res: ServerResponse, status: number, contentType: string, text: string, extraHeaders: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text).toString(), ...extraHeaders });
  res.end(text);
}

/** UCWI's failure envelope (documented: result 1, errorCode, message). */
export function errorEnvelope(status: number): { result: 1; errorCode: number; message: string } {
  return { result: 1, errorCode: status, message: ERROR_MESSAGES[status] ?? STATUS_CODES[status] ?? 'Error' };
}

export function sendError(res: ServerResponse, status: number, extraHeaders: Record<string, string> = {}): void {
  sendJson(res, status, errorEnvelope(status), extraHeaders);
}
