// The console's HTTP routes on the admin listener: sign-in and sessions, list/show/download/release/delete/bulk and audit pages, each action as the signed-in user.
import type { Logger } from '../observability/logger.js';
import { QuarantineInputError } from '../quarantine/common.js';
import { isUnavailable } from '../quarantine/errors.js';
import { audited } from '../quarantine/ops-context.js';
import {
  deleteMessage,
  downloadMessage,
  listAuditEntries,
  listMessages,
  releaseMessage,
  showMessage,
  type Actor,
  type OperationsContext,
  type ReleaseOptions,
  type ReleaseOutcome,
} from '../quarantine/operations.js';
import { parseListQuery } from '../admin/quarantine-routes.js';
import { HttpError, readBody, type AdminRequest, type AdminResponse, type AdminServer } from '../admin/server.js';
import { CSS, SECURITY_HEADERS, html, page, redirect, type Html, type LayoutUser } from './html.js';
import { auditPage, errorPage, listPage, loginPage, messagePage, resultsPage, type ActionResult } from './pages.js';
import { LoginThrottle, SessionStore, parseCookies, cookieName, sameToken, setCookie, type CookiePolicy, type Session } from './sessions.js';
import { CAN, type FileUserStore } from './users.js';
import { randomBytes } from 'node:crypto';

export interface ConsoleSettings {
  basePath: string;
  trustProxy: boolean;
  secureCookie: boolean;
  sessionIdleMs: number;
  sessionMaxMs: number;
  maxFailures: number;
  lockoutMs: number;
}

export interface ConsoleDeps {
  ops: OperationsContext;
  users: FileUserStore;
  settings: ConsoleSettings;
  logger?: Logger;
}

/** Selections larger than this are refused (as Google's batch release): one request must stay reviewable. */
export const MAX_BULK = 500;
const MAX_FORM_BYTES = 64 * 1024;

/** Reads an application/x-www-form-urlencoded body, bounded. */
export async function readForm(req: AdminRequest, max = MAX_FORM_BYTES): Promise<URLSearchParams> {
  const ct = req.headers['content-type'] ?? '';
  if (!/^application\/x-www-form-urlencoded\s*(;|$)/i.test(ct)) throw new HttpError(415, 'expected a form');
  return new URLSearchParams((await readBody(req.raw, max, 'form too large')).toString('utf8'));
}

export interface ConsoleContext {
  base: string;
  sessions: SessionStore;
  cookiePolicy(req: AdminRequest): CookiePolicy;
  session(req: AdminRequest): Session | null;
  actor(req: AdminRequest, s: Session | null): Actor;
  /** Refuses cross-site requests: a foreign Origin, or Sec-Fetch-Site other than same-origin/none. */
  sameOrigin(req: AdminRequest): boolean;
  who(s: Session): LayoutUser;
}

export function consoleContext(deps: ConsoleDeps): ConsoleContext {
  const st = deps.settings;
  const base = st.basePath;
  const sessions = new SessionStore({ idleMs: st.sessionIdleMs, maxMs: st.sessionMaxMs });
  const first = (v: string | string[] | undefined): string => (Array.isArray(v) ? v[0] : v)?.split(',')[0]?.trim() ?? '';
  const cookiePolicy = (req: AdminRequest): CookiePolicy => ({
    secure: st.secureCookie || (st.trustProxy && first(req.headers['x-forwarded-proto']).toLowerCase() === 'https'),
    basePath: base,
  });
  return {
    base,
    sessions,
    cookiePolicy,
    session: (req) => sessions.get(parseCookies(req.headers).get(cookieName('session', cookiePolicy(req)))),
    actor: (req, s) => ({
      name: s ? `console:${s.user}` : 'console',
      // Behind a trusted proxy the browser's address is the one that matters; the proxy's stays for the record.
      source: st.trustProxy && req.forwardedFor ? `${req.forwardedFor} via ${req.remoteAddress}` : req.remoteAddress,
    }),
    sameOrigin(req) {
      const site = first(req.headers['sec-fetch-site']);
      if (site && site !== 'same-origin' && site !== 'none') return false;
      const origin = first(req.headers.origin);
      if (!origin) return true; // old browsers and curl: the CSRF token still has to match
      const host = (st.trustProxy && first(req.headers['x-forwarded-host'])) || first(req.headers.host);
      try {
        return new URL(origin).host === host;
      } catch {
        return false; // "null" and garbage
      }
    },
    who: (s) => ({ user: s.user, role: s.role, csrf: s.csrf }),
  };
}

/** Turns failures into HTML pages: store down 503, bad input 400, HttpError as it says. Never a JSON body in the browser. */
function pages(c: ConsoleContext, fn: (req: AdminRequest) => Promise<AdminResponse>): (req: AdminRequest) => Promise<AdminResponse> {
  return async (req) => {
    try {
      return await fn(req);
    } catch (err) {
      const s = c.session(req);
      const who = s ? c.who(s) : null;
      if (err instanceof HttpError) return page(err.status, errorPage(c.base, who, err.status, err.message));
      if (err instanceof QuarantineInputError) return page(400, errorPage(c.base, who, 400, err.message));
      if (isUnavailable(err)) return page(503, errorPage(c.base, who, 503, 'The quarantine store is unavailable; try again shortly.'), { 'retry-after': '30' });
      throw err;
    }
  };
}

function releaseText(out: ReleaseOutcome): { ok: boolean; text: string } {
  switch (out.status) {
    case 'released':
    case 'partial':
    case 'undelivered': {
      const per = out.recipients.map((r) => `${r.address}: ${r.status} (${r.response || r.code})`).join('; ');
      const rest = out.pending.length ? ` Still held for ${out.pending.join(', ')}.` : '';
      return { ok: out.status === 'released', text: `${out.status}: ${per}${rest}` };
    }
    case 'not-found':
      return { ok: false, text: 'not found' };
    case 'already-released':
      return { ok: false, text: `already released${out.release ? ` by ${out.release.by} at ${out.release.at}` : ''}` };
    case 'in-progress':
      return { ok: false, text: 'a release is in progress' };
    case 'blocked':
      return { ok: false, text: `blocked by the re-scan: ${out.rescan.detail}` };
    case 'invalid':
      return { ok: false, text: `invalid: ${out.message}` };
    case 'failed':
      return { ok: false, text: `failed: ${out.message}` };
  }
}

/** The datetime-local control sends no zone; the console labels it UTC and says so here. */
function utc(v: string): string {
  return /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?$/.test(v) ? `${v}Z` : v;
}

export function registerConsoleRoutes(server: AdminServer, deps: ConsoleDeps): ConsoleContext {
  const c = consoleContext(deps);
  const { base } = c;
  const ops = deps.ops;
  const throttle = new LoginThrottle(deps.settings.maxFailures, deps.settings.lockoutMs);
  // Every console route does its own authentication (session cookie), so none needs the bearer token.
  const open = { auth: false };
  const forbidden = (s: Session, what: string): AdminResponse => page(403, errorPage(base, c.who(s), 403, `Your role (${s.role}) may not ${what}.`));

  /** A signed-in user with `can`, and for changes a same-origin request carrying the session's CSRF token. */
  const guard = async (
    req: AdminRequest,
    can: (r: Session['role']) => boolean,
    what: string,
    change: boolean,
  ): Promise<{ s: Session; form: URLSearchParams | null } | AdminResponse> => {
    const s = c.session(req);
    if (!s) return change ? page(403, errorPage(base, null, 403, 'Your session has ended; sign in again.')) : redirect(`${base}/login`);
    if (!can(s.role)) return forbidden(s, what);
    if (!change) return { s, form: null };
    const form = await readForm(req);
    if (!c.sameOrigin(req) || !sameToken(form.get('_csrf'), s.csrf)) {
      await audited(ops, c.actor(req, s), 'csrf', null, 'refused', `${req.method} ${req.path}`);
      return page(403, errorPage(base, c.who(s), 403, 'This form is out of date or did not come from this console (CSRF check failed).'));
    }
    return { s, form };
  };
  const isResponse = (v: unknown): v is AdminResponse => typeof v === 'object' && v !== null && 'status' in v;
  /** A route for a signed-in user whose role `can` (`what` names the right in a refusal); a POST is a change and is CSRF-checked. */
  const signedIn = (
    method: 'GET' | 'POST',
    path: string,
    can: (r: Session['role']) => boolean,
    what: string,
    handler: (req: AdminRequest, g: { s: Session; form: URLSearchParams | null }) => Promise<AdminResponse>,
  ): void =>
    server.addRoute(
      method,
      path,
      pages(c, async (req) => {
        const g = await guard(req, can, what, method === 'POST');
        return isResponse(g) ? g : handler(req, g);
      }),
      open,
    );

  server.addRoute('GET', base, () => redirect(`${base}/messages`), open);
  server.addRoute(
    'GET',
    `${base}/static/console.css`,
    () => ({ status: 200, text: CSS, headers: { 'content-type': 'text/css; charset=utf-8', 'cache-control': 'max-age=3600' } }),
    open,
  );

  server.addRoute(
    'GET',
    `${base}/login`,
    (req) => {
      if (c.session(req)) return redirect(`${base}/messages`);
      // Login CSRF: the form carries a value that must equal this cookie, which another site can neither read nor set.
      const token = randomBytes(24).toString('base64url');
      return page(200, loginPage(base, token, null), { 'set-cookie': setCookie('login', token, c.cookiePolicy(req), 600) });
    },
    open,
  );

  server.addRoute(
    'POST',
    `${base}/login`,
    pages(c, async (req) => {
      const form = await readForm(req, 8 * 1024);
      const policy = c.cookiePolicy(req);
      const name = (form.get('user') ?? '').trim().slice(0, 64);
      const password = form.get('password') ?? '';
      const again = (status: number, msg: string): AdminResponse => {
        const token = randomBytes(24).toString('base64url');
        return page(status, loginPage(base, token, msg, name), { 'set-cookie': setCookie('login', token, policy, 600) });
      };
      const actor: Actor = { ...c.actor(req, null), name: `console:${name.replace(/[^A-Za-z0-9._@-]/g, '?') || '?'}` };
      if (!c.sameOrigin(req) || !sameToken(form.get('_login'), parseCookies(req.headers).get(cookieName('login', policy)) ?? ''))
        return again(403, 'The sign-in form expired; try again.');
      if (throttle.locked(name)) {
        await audited(ops, actor, 'sign-in', null, 'locked');
        return again(429, 'Too many failed sign-ins: this account is locked for a while.');
      }
      const user = await deps.users.verify(name, password);
      if (!user) {
        const nowLocked = throttle.fail(name);
        await audited(ops, actor, 'sign-in', null, nowLocked ? 'locked' : 'failed');
        return again(401, 'Wrong user name or password.');
      }
      throttle.succeed(name);
      const s = c.sessions.create(user.name, user.role);
      await audited(ops, actor, 'sign-in', null, 'ok', `role ${user.role}`);
      // A fresh id at every sign-in (no fixation); the login cookie simply expires.
      return redirect(`${base}/messages`, { 'set-cookie': setCookie('session', s.id, policy) });
    }),
    open,
  );

  signedIn('POST', `${base}/logout`, CAN.view, 'sign out', async (req, g) => {
    c.sessions.destroy(g.s.id);
    await audited(ops, c.actor(req, g.s), 'sign-out', null, 'ok');
    return redirect(`${base}/login`, { 'set-cookie': setCookie('session', '', c.cookiePolicy(req), 0) });
  });

  signedIn('GET', `${base}/messages`, CAN.view, 'list messages', async (req, g) => {
    const shown: Record<string, string> = {};
    const q = new URLSearchParams();
    for (const [k, v] of req.query) {
      const t = v.trim();
      if (!t || shown[k] !== undefined) continue;
      shown[k] = t;
      q.set(k, k === 'from' || k === 'to' ? utc(t) : t);
    }
    let filter;
    try {
      filter = parseListQuery(q);
    } catch (err) {
      if (err instanceof HttpError)
        return page(400, listPage(base, c.who(g.s), { items: [], nextCursor: null, query: shown, canDecide: false }, errorNotice(err.message)));
      throw err;
    }
    const res = await listMessages(ops, c.actor(req, g.s), filter);
    return page(200, listPage(base, c.who(g.s), { items: res.items, nextCursor: res.nextCursor, query: shown, canDecide: CAN.decide(g.s.role) }));
  });

  signedIn('POST', `${base}/messages/bulk`, CAN.decide, 'release or delete messages', async (req, g) => {
    const ids = [...new Set(g.form!.getAll('id'))];
    const action = g.form!.get('action');
    if (action !== 'release' && action !== 'delete') throw new HttpError(400, 'choose release or delete');
    if (ids.length === 0) throw new HttpError(400, 'select at least one message');
    if (ids.length > MAX_BULK) throw new HttpError(400, `select at most ${MAX_BULK} messages at once`);
    const actor = c.actor(req, g.s);
    const results: ActionResult[] = [];
    // One by one: each is audited on its own and a failure stops nothing but itself.
    for (const id of ids) {
      if (req.signal.aborted) break;
      results.push(
        action === 'release' ? { id, ...releaseText(await releaseMessage(ops, actor, id, {})) } : { id, ...deleteText(await deleteMessage(ops, actor, id)) },
      );
    }
    return page(200, resultsPage(base, c.who(g.s), action === 'release' ? 'Bulk release' : 'Bulk delete', results));
  });

  signedIn('GET', `${base}/messages/:id`, CAN.view, 'view messages', async (req, g) => {
    // The HTML part is kept (bounded) so the page can offer the sandboxed view; text stays the default.
    const shown = await showMessage(ops, c.actor(req, g.s), req.params.id ?? '', { maxHtmlChars: 500_000 });
    if (!shown) throw new HttpError(404, 'No such message (it may have been deleted or purged).');
    const view = req.query.get('view') === 'html' ? 'html' : 'text';
    return page(200, messagePage(base, c.who(g.s), { ...shown, canDecide: CAN.decide(g.s.role), view }));
  });

  signedIn('GET', `${base}/messages/:id/eml`, CAN.decide, 'download messages', async (req, g) => {
    const dl = await downloadMessage(ops, c.actor(req, g.s), req.params.id ?? '');
    if (!dl) throw new HttpError(404, 'No such message.');
    return {
      status: 200,
      stream: dl.stream,
      // Generic type and attachment: the browser saves it, never renders hostile content as a page of ours.
      headers: { ...SECURITY_HEADERS, 'content-type': 'application/octet-stream', 'content-disposition': `attachment; filename="${dl.record.id}.eml"` },
    };
  });

  signedIn('POST', `${base}/messages/:id/release`, CAN.decide, 'release messages', async (req, g) => {
    const id = req.params.id ?? '';
    const form = g.form!;
    const opts: ReleaseOptions = {};
    if (form.get('rescan')) opts.rescan = true;
    const redirectTo = (form.get('redirectTo') ?? '').trim();
    if (redirectTo) opts.redirectTo = redirectTo;
    else {
      const chosen = form.getAll('recipient');
      const record = await ops.store.get(id);
      // All boxes ticked is a plain release (which also retries deferred ones); fewer is a subset.
      if (record && chosen.length < record.envelope.to.length) {
        if (chosen.length === 0) throw new HttpError(400, 'tick at least one recipient, or give a redirect address');
        opts.recipients = chosen;
      }
    }
    const out = await releaseMessage(ops, c.actor(req, g.s), id, opts);
    return page(200, resultsPage(base, c.who(g.s), 'Release', [{ id, ...releaseText(out) }]));
  });

  signedIn('POST', `${base}/messages/:id/delete`, CAN.decide, 'delete messages', async (req, g) => {
    const id = req.params.id ?? '';
    return page(200, resultsPage(base, c.who(g.s), 'Delete', [{ id, ...deleteText(await deleteMessage(ops, c.actor(req, g.s), id)) }]));
  });

  signedIn('GET', `${base}/audit`, CAN.administer, 'read the audit', async (req, g) => {
    const query: Record<string, string> = {};
    const f: Parameters<typeof listAuditEntries>[2] = { limit: 100 };
    for (const k of ['actor', 'action', 'target', 'cursor'] as const) {
      const v = req.query.get(k)?.trim().slice(0, 512);
      if (v) {
        query[k] = v;
        f[k] = v;
      }
    }
    const res = await listAuditEntries(ops, c.actor(req, g.s), f);
    return page(200, auditPage(base, c.who(g.s), res.items, res.nextCursor, query));
  });

  return c;
}

function deleteText(r: 'deleted' | 'not-found' | 'in-progress'): { ok: boolean; text: string } {
  return r === 'deleted' ? { ok: true, text: 'deleted' } : { ok: false, text: r === 'not-found' ? 'not found' : 'a release is in progress' };
}

function errorNotice(msg: string): Html {
  return html`<p class="notice err" role="alert">${msg}</p>`;
}
