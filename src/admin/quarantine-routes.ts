// The /api/v1/quarantine routes: HTTP parsing and status codes around the shared operations (operations.ts does the work and the auditing).
import { QuarantineInputError } from '../quarantine/common.js';
import { isUnavailable } from '../quarantine/errors.js';
import {
  deleteMessage,
  downloadMessage,
  listAuditEntries,
  listMessages,
  purgeMessages,
  releaseMessage,
  showMessage,
  type Actor,
  type OperationsContext,
  type ReleaseOptions,
} from '../quarantine/operations.js';
import { MAX_LIST_LIMIT, type AuditFilter, type QuarantineFilter, type QuarantineStatus } from '../quarantine/types.js';
import { HttpError, type AdminRequest, type AdminResponse, type AdminServer, type RouteHandler } from './server.js';

export const QUARANTINE_BASE = '/api/v1/quarantine';

const NOT_FOUND = (): HttpError => new HttpError(404, 'not found');

/** Store failures become 503 with a fixed body (details go to the log); bad filters become 400. */
function wrap(handler: RouteHandler): RouteHandler {
  return async (req, res) => {
    try {
      return await handler(req, res);
    } catch (err) {
      if (isUnavailable(err)) throw new HttpError(503, 'store unavailable');
      if (err instanceof QuarantineInputError) throw new HttpError(400, err.message);
      throw err;
    }
  };
}

/** The token is shared, so the actor is the API itself; the source says from where (and for whom, behind a reverse proxy). */
function actorOf(req: AdminRequest): Actor {
  return { name: 'admin-api', source: req.forwardedFor ? `${req.remoteAddress} for ${req.forwardedFor}` : req.remoteAddress };
}

function str(q: URLSearchParams, name: string, max = 320): string | undefined {
  const v = q.get(name);
  if (v === null) return undefined;
  if (v.length > max) throw new HttpError(400, `${name} is too long`);
  return v;
}

function date(q: URLSearchParams, name: string): Date | undefined {
  const v = str(q, name, 64);
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new HttpError(400, `${name} must be an ISO 8601 time`);
  return new Date(t);
}

function limit(q: URLSearchParams): number | undefined {
  const v = str(q, 'limit', 10);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_LIST_LIMIT) throw new HttpError(400, `limit must be an integer from 1 to ${MAX_LIST_LIMIT}`);
  return Number(v);
}

const STATUSES: readonly QuarantineStatus[] = ['held', 'released', 'deleted'];

/** What both listings take first: the time window, then the named text parameters, each at most its length. */
function windowAndText<K extends string>(q: URLSearchParams, maxLength: Record<K, number>): { from?: Date; to?: Date } & Partial<Record<K, string>> {
  const from = date(q, 'from');
  const to = date(q, 'to');
  const text: Partial<Record<K, string>> = {};
  for (const k of Object.keys(maxLength) as K[]) {
    const v = str(q, k, maxLength[k]);
    if (v !== undefined) text[k] = v;
  }
  return { ...(from ? { from } : {}), ...(to ? { to } : {}), ...text };
}

export function parseListQuery(q: URLSearchParams): QuarantineFilter {
  const f: QuarantineFilter = windowAndText(q, { sender: 320, recipient: 320, policy: 320, cursor: 512 });
  const ac = str(q, 'actionCode', 10);
  if (ac !== undefined) {
    if (ac === 'none' || ac === 'null') f.actionCode = null;
    else if (/^\d{1,3}$/.test(ac)) f.actionCode = Number(ac);
    else throw new HttpError(400, 'actionCode must be a number or "none"');
  }
  const status = str(q, 'status', 16);
  if (status !== undefined) {
    if (!STATUSES.includes(status as QuarantineStatus)) throw new HttpError(400, `status must be one of ${STATUSES.join(', ')}`);
    f.status = status as QuarantineStatus;
  }
  const l = limit(q);
  if (l !== undefined) f.limit = l;
  return f;
}

function parseAuditQuery(q: URLSearchParams): AuditFilter {
  const f: AuditFilter = windowAndText(q, { actor: 512, action: 512, target: 512, cursor: 512 });
  const l = limit(q);
  if (l !== undefined) f.limit = l;
  return f;
}

function parseReleaseBody(body: unknown): ReleaseOptions {
  if (body === undefined) return {};
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, 'body must be a JSON object');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!['rescan', 'recipients', 'redirectTo', 'drop'].includes(k)) throw new HttpError(400, `unknown field ${k}`);
  const out: ReleaseOptions = {};
  if (b.rescan !== undefined) {
    if (typeof b.rescan !== 'boolean') throw new HttpError(400, 'rescan must be true or false');
    out.rescan = b.rescan;
  }
  for (const k of ['recipients', 'drop'] as const) {
    const v = b[k];
    if (v === undefined) continue;
    if (!Array.isArray(v) || v.length > 10_000 || !v.every((r) => typeof r === 'string' && r.length <= 320))
      throw new HttpError(400, `${k} must be a list of addresses`);
    out[k] = v as string[];
  }
  if (b.redirectTo !== undefined) {
    if (typeof b.redirectTo !== 'string' || b.redirectTo.length > 320) throw new HttpError(400, 'redirectTo must be an address');
    out.redirectTo = b.redirectTo;
  }
  return out;
}

export function registerQuarantineRoutes(server: AdminServer, ctx: OperationsContext, base = QUARANTINE_BASE): void {
  // Every route needs the token, and every failure of the store or the filter becomes its status code (wrap).
  const route = (method: string, path: string, handler: (req: AdminRequest) => Promise<AdminResponse>): void =>
    server.addRoute(method, path, wrap(handler), { auth: true });

  route('GET', base, async (req) => {
    const page = await listMessages(ctx, actorOf(req), parseListQuery(req.query));
    return { status: 200, json: page };
  });

  route('GET', `${base}/audit`, async (req) => {
    const page = await listAuditEntries(ctx, actorOf(req), parseAuditQuery(req.query));
    return { status: 200, json: page };
  });

  route('POST', `${base}/purge`, async (req) => {
    const body = await req.json();
    const days = typeof body === 'object' && body !== null ? (body as Record<string, unknown>).olderThanDays : undefined;
    if (typeof days !== 'number') throw new HttpError(400, 'olderThanDays (number of days) is required');
    const result = await purgeMessages(ctx, actorOf(req), { olderThanDays: days });
    return { status: 200, json: result };
  });

  route('GET', `${base}/:id`, async (req) => {
    const shown = await showMessage(ctx, actorOf(req), req.params.id ?? '');
    if (!shown) throw NOT_FOUND();
    return { status: 200, json: shown };
  });

  route('GET', `${base}/:id/eml`, async (req) => {
    const dl = await downloadMessage(ctx, actorOf(req), req.params.id ?? '');
    if (!dl) throw NOT_FOUND();
    return {
      status: 200,
      stream: dl.stream,
      headers: {
        'content-type': 'message/rfc822',
        // The id is a checked UUID, so it is safe inside the header.
        'content-disposition': `attachment; filename="${dl.record.id}.eml"`,
      },
    };
  });

  route('POST', `${base}/:id/release`, async (req) => {
    const opts = parseReleaseBody(await req.json());
    const out = await releaseMessage(ctx, actorOf(req), req.params.id ?? '', opts);
    switch (out.status) {
      // One answer per recipient in every case; the status says how it went as a whole: all accepted 200,
      // some 207 (the rest stay held and can be released again), none 502 (nothing was delivered).
      case 'released':
        return { status: 200, json: out };
      case 'partial':
        return { status: 207, json: out };
      case 'undelivered':
        return { status: 502, json: out };
      case 'not-found':
        throw NOT_FOUND();
      case 'already-released':
        throw new HttpError(409, 'already released', { release: out.release });
      case 'in-progress':
        throw new HttpError(409, 'release in progress', { claim: out.claim });
      case 'blocked':
        throw new HttpError(422, 'release blocked by rescan', { rescan: out.rescan });
      case 'invalid':
        throw new HttpError(400, out.message);
      case 'failed':
        throw new HttpError(502, 'release failed', { detail: out.message });
    }
  });

  route('DELETE', `${base}/:id`, async (req) => {
    const id = req.params.id ?? '';
    const result = await deleteMessage(ctx, actorOf(req), id);
    if (result === 'not-found') throw NOT_FOUND();
    if (result === 'in-progress') throw new HttpError(409, 'release in progress');
    return { status: 200, json: { status: 'deleted', id } };
  });
}
