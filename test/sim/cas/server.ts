// Trend Micro CAS simulator on loopback: the documented routes, auth, fixed-window throttle, validation and fault knobs (cas.md §11).
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { CAS_LISTS, compareKey, normalizeItem, ruleCounts, type CasList, type CasRules } from '../../../src/cas/items.js';
import type { MitigationItem } from '../../../src/cas/validate.js';
// Request bodies are judged by the simulator's own rules from the vendor reference, not by the client's validators.
import { MAX_ITEMS_PER_REQUEST_LIST, isRemediationList, isZonedDateTime, mitigationItemProblems, remediationItemProblem } from './wire-rules.js';

/**
 * One injected failure. A number answers with that status and a JSON error body (502 is sent as the
 * HTML page a gateway would produce); `reset` destroys the socket without answering; `malformed-json`
 * answers 200 with a truncated body; `throttle-200` answers 200 with the throttle body (code
 * -4290001), which a client must treat like a 429; `{delayMs}` answers normally after a pause.
 */
export type CasSimFault = number | 'html502' | 'reset' | 'malformed-json' | 'throttle-200' | { delayMs: number };

export interface CasSimFaults {
  /** Consumed one per request, in arrival order, before auth and throttle. */
  next?: CasSimFault[];
  /** Applied to every request while set, once `next` is used up (e.g. 503 for "CAS is down"). */
  always?: CasSimFault | null;
  /** Added before every answer. */
  latencyMs?: number;
  /** Mitigation actions for these mailboxes end `Failed` (-999). */
  failMailboxes?: string[];
}

export interface CasSimOptions {
  port?: number;
  host?: string;
  token: string;
  /** Per-token fixed window opened by the first request; 20 per 60 s like the real service. */
  rateLimit?: { limit: number; windowMs: number };
  faults?: CasSimFaults;
  /** Status of a successful remediation POST; the vendor text says 200, its example 201 (cas.md §10.1). */
  remediationStatus?: 200 | 201;
  /** Cap on the stored total per list (the 2,048 limit may apply there too); null = unbounded. */
  maxStoredPerList?: number | null;
  /** Reproduce the observed GET normalisation of URLs: scheme stripped, trailing slash added. */
  normalizeUrls?: boolean;
  /** Time an action stays `Created`, then `Executing`, before it reaches its terminal state. */
  mitigation?: { createdMs?: number; executingMs?: number };
  /** How the last results page says "no more": JSON null (observed), the string "null", "" or no key. */
  nextLinkStyle?: 'null' | 'string-null' | 'empty' | 'absent';
  /** Send Retry-After on 429 (not documented, so off by default). */
  retryAfter?: boolean;
  initialLists?: CasRules;
}

export interface CasSimRequest {
  at: number;
  method: string;
  path: string;
  query: Record<string, string>;
  /** 0 while in flight, or when the socket was reset. */
  status: number;
  fault: string | null;
  actionType: string | null;
  counts: Record<CasList, number> | null;
  rules: CasRules | null;
  mitigationItems: number | null;
}

export interface SimAction {
  action_id: string;
  batch_id: string;
  item: MitigationItem;
  requestedAt: number;
  outcome: { status: 'Success' | 'Skipped' | 'Failed'; error_code: number; error_message: string };
}

export interface CasSimState {
  blocked: Record<CasList, Set<string>>;
  batches: Map<string, SimAction[]>;
}

export interface CasSim {
  url: string;
  port: number;
  state: CasSimState;
  requestLog: CasSimRequest[];
  setFaults(f: CasSimFaults): void;
  setToken(token: string): void;
  /** Sorted snapshot of one list, for assertions. */
  list(list: CasList): string[];
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 8 * 1024 * 1024;

// Error codes other than the throttle's are not documented; `-<status>0001` follows its pattern (cas.md §2, a guess).
const errCode = (status: number) => -(status * 10_000 + 1);

const HTML_502 =
  '<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>awselb/2.0</center>\r\n</body>\r\n</html>\r\n';

export async function startCasSim(opts: CasSimOptions): Promise<CasSim> {
  let token = opts.token;
  const rate = opts.rateLimit ?? { limit: 20, windowMs: 60_000 };
  let faults: CasSimFaults = { ...opts.faults, next: [...(opts.faults?.next ?? [])] };
  const createdMs = opts.mitigation?.createdMs ?? 50;
  const executingMs = opts.mitigation?.executingMs ?? 50;
  const state: CasSimState = {
    blocked: { senders: new Set(), urls: new Set(), filehashes: new Set(), file256hashes: new Set() },
    batches: new Map(),
  };
  for (const list of CAS_LISTS) for (const v of opts.initialLists?.[list] ?? []) state.blocked[list].add(stored(list, v));
  const actioned = new Set<string>();
  const requestLog: CasSimRequest[] = [];
  const windows = new Map<string, { start: number; count: number }>();
  let baseUrl = '';

  function stored(list: CasList, v: string): string {
    const n = normalizeItem(list, v);
    if (list !== 'urls' || !opts.normalizeUrls) return n;
    const noScheme = n.replace(/^https?:\/\//i, '');
    return noScheme.endsWith('/') ? noScheme : `${noScheme}/`;
  }

  function send(res: ServerResponse, entry: CasSimRequest, status: number, body: unknown, headers: Record<string, string> = {}) {
    entry.status = status;
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'content-type': typeof body === 'string' ? 'text/html' : 'application/json', ...headers });
    res.end(text);
  }

  function error(res: ServerResponse, entry: CasSimRequest, status: number, msg: string, code = errCode(status)) {
    send(res, entry, status, { code, traceId: randomUUID(), msg });
  }

  async function readBody(req: IncomingMessage): Promise<Buffer | null> {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of req) {
      n += (c as Buffer).length;
      if (n > MAX_BODY_BYTES) return null;
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks);
  }

  /** The fault for this request, if any: the scripted queue first, then the standing one. */
  function takeFault(): CasSimFault | null {
    if (faults.next && faults.next.length > 0) return faults.next.shift()!;
    return faults.always ?? null;
  }

  async function handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://sim');
    const entry: CasSimRequest = {
      at: Date.now(),
      method: req.method ?? '',
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      status: 0,
      fault: null,
      actionType: null,
      counts: null,
      rules: null,
      mitigationItems: null,
    };
    requestLog.push(entry);
    const raw = await readBody(req);
    let body: unknown = undefined;
    if (raw && raw.length > 0) {
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch {
        body = Symbol.for('invalid-json');
      }
    }
    if (entry.path === '/v1/remediation/mails' && body && typeof body === 'object' && !Array.isArray(body)) {
      const b = body as { action_type?: unknown; rules?: unknown };
      if (typeof b.action_type === 'string') entry.actionType = b.action_type;
      if (b.rules && typeof b.rules === 'object') {
        entry.rules = b.rules;
        entry.counts = ruleCounts(b.rules);
      }
    }
    if (entry.path === '/v1/mitigation/mails' && Array.isArray(body)) entry.mitigationItems = body.length;

    const latency = faults.latencyMs ?? 0;
    if (latency > 0) await new Promise((r) => setTimeout(r, latency));

    const fault = takeFault();
    if (fault !== null) {
      entry.fault = typeof fault === 'object' ? `delay ${fault.delayMs}` : String(fault);
      if (fault === 'reset') {
        req.socket.destroy();
        return;
      }
      if (typeof fault === 'object') await new Promise((r) => setTimeout(r, fault.delayMs));
      else if (fault === 'html502' || fault === 502) return send(res, entry, 502, HTML_502);
      else if (fault === 'malformed-json') {
        entry.status = 200;
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end('{"code":0,"msg":"');
      } else if (fault === 'throttle-200') return error(res, entry, 200, 'Maximum allowed requests exceeded', -4290001);
      else if (fault === 429) return error(res, entry, 429, 'Maximum allowed requests exceeded', -4290001);
      else return error(res, entry, fault, fault >= 500 ? 'Service unavailable (injected)' : 'Injected error');
    }
    if (raw === null) return error(res, entry, 400, 'Request body too large');

    const auth = req.headers['authorization'];
    const m = typeof auth === 'string' ? /^Bearer\s+(\S+)$/i.exec(auth.trim()) : null;
    if (!m || m[1] !== token) return error(res, entry, 401, 'Authentication token not found');

    // Fixed window per token, opened by the first request after the previous one expired (cas.md §2).
    const now = Date.now();
    let w = windows.get(m[1]);
    if (!w || now >= w.start + rate.windowMs) {
      w = { start: now, count: 0 };
      windows.set(m[1], w);
    }
    w.count++;
    if (w.count > rate.limit) {
      const headers: Record<string, string> = opts.retryAfter ? { 'retry-after': String(Math.ceil((w.start + rate.windowMs - now) / 1000)) } : {};
      entry.status = 429;
      res.writeHead(429, { 'content-type': 'application/json', ...headers });
      return res.end(JSON.stringify({ code: -4290001, traceId: randomUUID(), msg: 'Maximum allowed requests exceeded' }));
    }

    const route = entry.path;
    const routes: Record<string, Partial<Record<string, () => void>>> = {
      '/v1/remediation/mails': { GET: () => getRules(res, entry), POST: () => postRules(res, entry, body) },
      '/v1/mitigation/mails': { GET: () => getResults(res, entry, url), POST: () => postMitigation(res, entry, body) },
      '/v1/sweeping/mails': {
        GET: () => send(res, entry, 200, { current_link: baseUrl + (req.url ?? ''), next_link: null, traceId: randomUUID(), value: [] }),
      },
    };
    const r = routes[route];
    if (!r) return error(res, entry, 404, 'API not found');
    const h = r[entry.method];
    if (!h) return error(res, entry, 405, 'Method not allowed');
    h();
  }

  function getRules(res: ServerResponse, entry: CasSimRequest) {
    const rules = Object.fromEntries(CAS_LISTS.map((l) => [l, [...state.blocked[l]]]));
    send(res, entry, 200, { code: 0, message: 'Get rules successfully.', rules });
  }

  function postRules(res: ServerResponse, entry: CasSimRequest, body: unknown) {
    if (!body || typeof body !== 'object' || Array.isArray(body)) return error(res, entry, 400, 'Request body must be a JSON object');
    const b = body as Record<string, unknown>;
    const unknownKeys = Object.keys(b).filter((k) => k !== 'action_type' && k !== 'rules');
    if (unknownKeys.length) return error(res, entry, 400, `Unknown parameter: ${unknownKeys.join(', ')}`);
    if (b['action_type'] !== 'create' && b['action_type'] !== 'delete') return error(res, entry, 400, 'Invalid action_type');
    const rules = b['rules'];
    if (!rules || typeof rules !== 'object' || Array.isArray(rules)) return error(res, entry, 400, 'Missing parameter: rules');
    const lists: Array<[CasList, string[]]> = [];
    for (const [k, v] of Object.entries(rules as Record<string, unknown>)) {
      if (!isRemediationList(k)) return error(res, entry, 400, `Unknown rule list: ${k}`);
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) return error(res, entry, 400, `${k} must be an array of strings`);
      if (v.length > MAX_ITEMS_PER_REQUEST_LIST) return error(res, entry, 400, `A maximum of ${MAX_ITEMS_PER_REQUEST_LIST} items in ${k} is supported`);
      if (v.length > 0) lists.push([k, v as string[]]);
    }
    if (lists.length === 0) return error(res, entry, 400, 'Specify at least one of senders, urls, filehashes and file256hashes');
    const bad: string[] = [];
    for (const [list, values] of lists) for (const v of values) if (remediationItemProblem(list, v)) bad.push(`${list}: ${v}`);
    if (bad.length) return error(res, entry, 400, `Invalid items: ${bad.slice(0, 5).join('; ')}${bad.length > 5 ? ` (+${bad.length - 5} more)` : ''}`);
    const create = b['action_type'] === 'create';
    if (create && opts.maxStoredPerList != null) {
      for (const [list, values] of lists) {
        const after = new Set([...state.blocked[list], ...values.map((v) => stored(list, v))]);
        if (after.size > opts.maxStoredPerList) return error(res, entry, 400, `The ${list} list would exceed ${opts.maxStoredPerList} items`);
      }
    }
    // Duplicate adds and absent deletes are silent successes (cas.md §8 leaves both unknown).
    for (const [list, values] of lists) {
      if (create) for (const v of values) state.blocked[list].add(stored(list, v));
      else {
        const keys = new Set(values.map((v) => compareKey(list, v)));
        for (const s of [...state.blocked[list]]) if (keys.has(compareKey(list, s))) state.blocked[list].delete(s);
      }
    }
    send(res, entry, opts.remediationStatus ?? 201, { code: 0, message: create ? 'Add rules successfully.' : 'Delete rules successfully.' });
  }

  function postMitigation(res: ServerResponse, entry: CasSimRequest, body: unknown) {
    if (!Array.isArray(body) || body.length === 0) return error(res, entry, 400, 'Request body must be a non-empty JSON array');
    const problems = body.flatMap((item: unknown, i) => mitigationItemProblems(item).map((p) => `item ${i} ${p}`));
    if (problems.length) return error(res, entry, 400, `Invalid parameter: ${problems.slice(0, 5).join('; ')}`);
    // Valid by the checks above: every field a string, the required ones present (trimmed like the client sends them).
    const items = body.map((item) => trimmedItem(item as Record<string, unknown>));
    const batchId = randomUUID();
    const fail = new Set((faults.failMailboxes ?? []).map((s) => s.toLowerCase()));
    const now = Date.now();
    const actions: SimAction[] = items.map((item) => {
      const key = `${item.action_type}|${item.mailbox.toLowerCase()}|${item.mail_message_id ?? ''}|${item.mail_unique_id ?? ''}`;
      let outcome: SimAction['outcome'];
      if (fail.has(item.mailbox.toLowerCase())) outcome = { status: 'Failed', error_code: -999, error_message: 'The action for these mails failed.' };
      else if (actioned.has(key)) outcome = { status: 'Skipped', error_code: 200, error_message: 'ResourceNotFound' };
      else outcome = { status: 'Success', error_code: 0, error_message: '' };
      actioned.add(key);
      return { action_id: randomUUID(), batch_id: batchId, item, requestedAt: now, outcome };
    });
    state.batches.set(batchId, actions);
    send(res, entry, 201, { code: 0, msg: '', batch_id: batchId, traceId: randomUUID() });
  }

  function view(a: SimAction, now: number): Record<string, unknown> {
    const age = now - a.requestedAt;
    const done = age >= createdMs + executingMs;
    const status = done ? a.outcome.status : age >= createdMs ? 'Executing' : 'Created';
    return {
      action_type: a.item.action_type,
      service: a.item.service,
      account_provider: a.item.account_provider,
      account_user_email: a.item.mailbox,
      mailbox: a.item.mailbox,
      ...(a.item.mail_message_id ? { mail_message_id: a.item.mail_message_id } : {}),
      ...(a.item.mail_unique_id ? { mail_unique_id: a.item.mail_unique_id } : {}),
      action_id: a.action_id,
      batch_id: a.batch_id,
      status,
      action_requested_at: new Date(a.requestedAt).toISOString(),
      action_executed_at: done ? new Date(a.requestedAt + createdMs + executingMs).toISOString() : null,
      error_code: done ? a.outcome.error_code : 0,
      error_message: done ? a.outcome.error_message : '',
    };
  }

  function getResults(res: ServerResponse, entry: CasSimRequest, url: URL) {
    const q = url.searchParams;
    const limitRaw = q.get('limit');
    const limit = limitRaw === null ? 500 : Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 500) return error(res, entry, 400, 'limit must be 1..500');
    const now = Date.now();
    let selected: SimAction[];
    const batchId = q.get('batch_id');
    if (batchId) selected = state.batches.get(batchId) ?? [];
    else {
      const start = q.get('start');
      const end = q.get('end');
      for (const [k, v] of [
        ['start', start],
        ['end', end],
      ] as const)
        if (v !== null && !isZonedDateTime(v)) return error(res, entry, 400, `${k} must be ISO 8601`);
      const FIVE_MIN = 5 * 60_000;
      const s = start ? Date.parse(start) : end ? Date.parse(end) - FIVE_MIN : now - FIVE_MIN;
      const e = end ? Date.parse(end) : start ? s + FIVE_MIN : now;
      if (s < now - 72 * 3_600_000) return error(res, entry, 400, 'start must be within the last 72 hours');
      selected = [...state.batches.values()].flat().filter((a) => a.requestedAt >= s && a.requestedAt <= e);
    }
    const skipRaw = q.get('skiptoken');
    const offset = skipRaw ? Number(Buffer.from(skipRaw, 'base64url').toString('utf8')) || 0 : 0;
    const page = selected.slice(offset, offset + limit);
    const more = offset + limit < selected.length;
    const current = `${baseUrl}${url.pathname}${url.search}`;
    let next: string | null | undefined;
    if (more) {
      const nq = new URLSearchParams(q);
      nq.set('skiptoken', Buffer.from(String(offset + limit)).toString('base64url'));
      next = `${baseUrl}${url.pathname}?${nq.toString()}`;
    } else {
      const style = opts.nextLinkStyle ?? 'null';
      next = style === 'null' ? null : style === 'string-null' ? 'null' : style === 'empty' ? '' : undefined;
    }
    const body: Record<string, unknown> = { code: 0, msg: '', count: page.length, current_link: current };
    if (next !== undefined) body['next_link'] = next;
    body['actions'] = page.map((a) => view(a, now));
    body['traceId'] = randomUUID();
    send(res, entry, 200, body);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: errCode(500), traceId: randomUUID(), msg: `simulator error: ${(err as Error).message}` }));
      } else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  baseUrl = `http://${opts.host ?? '127.0.0.1'}:${port}`;

  return {
    url: baseUrl,
    port,
    state,
    requestLog,
    setFaults(f: CasSimFaults) {
      faults = { ...f, next: [...(f.next ?? [])] };
    },
    setToken(t: string) {
      token = t;
    },
    list(list: CasList) {
      return [...state.blocked[list]].sort();
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

function trimmedItem(o: Record<string, unknown>): MitigationItem {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(o)) if (typeof v === 'string' && v.trim()) out[k] = v.trim();
  return out as unknown as MitigationItem;
}
