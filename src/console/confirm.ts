// Sender self-service for "confirm" holds: signed, expiring, single-use links (HMAC over id and expiry) and the small page where the sender confirms with a justification or withdraws.
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { FrozenConfig } from '../config/load.js';
import { audited } from '../quarantine/ops-context.js';
import { deleteMessage, releaseMessage, type Actor, type OperationsContext } from '../quarantine/operations.js';
import type { QuarantineRecord } from '../quarantine/types.js';
import { HttpError, type AdminRequest, type AdminResponse, type AdminServer } from '../admin/server.js';
import { sameToken } from './sessions.js';
import { html, layout, page } from './html.js';
import { readForm, type ConsoleContext } from './routes.js';

/** Audit actions that close a link: after one of them the link is spent, whatever the store says. */
const CLOSING = ['sender-confirm', 'sender-withdraw'];

/** Reads the link key, creating it (32 random bytes, 0600) on first use so links survive restarts and are shared by every process on this state dir. */
export function loadLinkKey(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    try {
      writeFileSync(file, randomBytes(32), { flag: 'wx', mode: 0o600 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e; // another process made it first: use theirs
    }
    return readFileSync(file);
  }
}

export interface ConfirmSettings {
  actionCodes: readonly number[];
  onConfirm: 'release' | 'review';
  linkTtlMs: number;
  publicUrl: string | null;
  basePath: string;
}

export class ConfirmLinks {
  private origin: string | null;

  constructor(
    private readonly key: Buffer,
    readonly settings: ConfirmSettings,
    private readonly now: () => number = Date.now,
  ) {
    this.origin = settings.publicUrl ? settings.publicUrl.replace(/\/+$/, '') : null;
  }

  static fromConfig(c: FrozenConfig): ConfirmLinks | null {
    const k = c.console;
    if (!k.enabled || !k.confirm.enabled) return null;
    return new ConfirmLinks(loadLinkKey(k.confirm.linkKeyFile), { ...k.confirm, basePath: k.basePath });
  }

  /** Without console.confirm.publicUrl, links point at the admin listener itself (known once it listens). */
  useOrigin(url: string): void {
    this.origin ??= url.replace(/\/+$/, '');
  }

  private mac(id: string, exp: number): string {
    return createHmac('sha256', this.key).update(`dlp-relay confirm v1\n${id}\n${exp}`).digest('base64url');
  }

  sign(id: string): { token: string; expiresAt: Date } {
    const exp = Math.floor((this.now() + this.settings.linkTtlMs) / 1000);
    return { token: `${id}.${exp}.${this.mac(id, exp)}`, expiresAt: new Date(exp * 1000) };
  }

  /** The link for a held message, or null when its actionCode is not a "confirm" one. */
  linkFor(actionCode: number | null, id: string): { url: string; expiresAt: Date } | null {
    if (actionCode === null || !this.settings.actionCodes.includes(actionCode) || !this.origin) return null;
    const { token, expiresAt } = this.sign(id);
    return { url: `${this.origin}${this.settings.basePath}/confirm/${token}`, expiresAt };
  }

  verify(token: string): { ok: true; id: string; exp: number } | { ok: false; why: 'invalid' | 'expired' } {
    const m = /^([0-9a-f-]{36})\.(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(token);
    if (!m) return { ok: false, why: 'invalid' };
    const [id, exp] = [m[1]!, Number(m[2])];
    if (!sameToken(m[3], this.mac(id, exp))) return { ok: false, why: 'invalid' };
    if (this.now() >= exp * 1000) return { ok: false, why: 'expired' };
    return { ok: true, id, exp };
  }
}

function senderPage(base: string, title: string, body: ReturnType<typeof html>, status = 200): AdminResponse {
  return page(status, layout(base, title, body, null));
}

/** GET shows the page; POST acts once. The signed token is the only credential, so nothing here reveals content. */
export function registerConfirmRoutes(server: AdminServer, c: ConsoleContext, ops: OperationsContext, links: ConfirmLinks): void {
  const base = c.base;
  const open = { auth: false };

  /** The held record behind a valid, unexpired, unused link, or the page that says why not. */
  const resolve = async (token: string): Promise<{ record: QuarantineRecord; id: string } | AdminResponse> => {
    const v = links.verify(token);
    if (!v.ok)
      return v.why === 'expired'
        ? senderPage(
            base,
            'Link expired',
            html`<p class="notice err" role="alert">This link has expired. Ask your IT help desk to review the message.</p>`,
            410,
          )
        : senderPage(base, 'Invalid link', html`<p class="notice err" role="alert">This link is not valid.</p>`, 404);
    const used = await ops.store.listAudit({ target: v.id, limit: 50 });
    const record = await ops.store.get(v.id);
    if (used.items.some((a) => CLOSING.includes(a.action) && a.result === 'ok') || !record || record.status !== 'held')
      return senderPage(
        base,
        'Link already used',
        html`<p class="notice err" role="alert">This link has already been used, or the message was decided by a reviewer.</p>`,
        410,
      );
    return { record, id: v.id };
  };
  const isResponse = (v: unknown): v is AdminResponse => typeof v === 'object' && v !== null && 'status' in v;
  const actorFor = (req: AdminRequest, r: QuarantineRecord): Actor => ({ ...c.actor(req, null), name: `sender:${r.envelope.from || '<>'}` });

  server.addRoute(
    'GET',
    `${base}/confirm/:token`,
    async (req) => {
      const r = await resolve(req.params.token ?? '');
      if (isResponse(r)) return r;
      const rec = r.record;
      const policies = rec.policies.map((p) => p.name).join(', ') || 'a data-loss-prevention rule';
      const next = links.settings.onConfirm === 'release' ? 'it is delivered at once' : 'a reviewer is asked to release it';
      // Metadata only: subject, recipients, policy names. Never the body or attachments (the link may be forwarded).
      return senderPage(
        base,
        'Your message is held',
        html`<dl class="kv" id="held">
            <dt>Subject</dt>
            <dd>${rec.subject ?? '(no subject)'}</dd>
            <dt>Recipients</dt>
            <dd>${rec.envelope.to.map((t) => t.address).join(', ')}</dd>
            <dt>Matched policy</dt>
            <dd>${policies}</dd>
          </dl>
          <form method="post" action="${base}/confirm/${req.params.token ?? ''}" class="login">
            <label>Why must this message go out? <textarea name="justification" rows="4" maxlength="1000" required></textarea></label>
            <p class="muted">If you confirm, ${next}. Your justification is recorded.</p>
            <button type="submit" name="action" value="confirm">Confirm and send</button>
            <button type="submit" name="action" value="withdraw" class="danger" formnovalidate>Withdraw the message</button>
          </form>`,
      );
    },
    open,
  );

  server.addRoute(
    'POST',
    `${base}/confirm/:token`,
    async (req) => {
      const form = await readForm(req, 8 * 1024);
      if (!c.sameOrigin(req)) throw new HttpError(403, 'cross-site request refused');
      const r = await resolve(req.params.token ?? '');
      if (isResponse(r)) return r;
      const actor = actorFor(req, r.record);
      const action = form.get('action');
      const justification = (form.get('justification') ?? '')
        .replace(/[\u0000-\u001f\u007f]+/g, ' ')
        .trim()
        .slice(0, 1000);
      if (action === 'withdraw') {
        const del = await deleteMessage(ops, actor, r.id);
        await audited(ops, actor, 'sender-withdraw', r.id, del === 'deleted' ? 'ok' : del);
        return senderPage(base, 'Message withdrawn', html`<p class="notice ok" role="status">Your message was withdrawn and will not be delivered.</p>`);
      }
      if (action !== 'confirm') throw new HttpError(400, 'choose confirm or withdraw');
      if (justification.length < 3)
        return senderPage(base, 'Justification needed', html`<p class="notice err" role="alert">Please say why the message must go out.</p>`, 400);
      // Recorded first: the link is spent even if the release then waits for a retry or a reviewer.
      await audited(ops, actor, 'sender-confirm', r.id, 'ok', justification);
      if (links.settings.onConfirm === 'review') {
        await audited(ops, actor, 'release-requested', r.id, 'ok', justification);
        return senderPage(base, 'Release requested', html`<p class="notice ok" role="status">Thank you. A reviewer will decide on your message.</p>`);
      }
      const out = await releaseMessage(ops, actor, r.id, {});
      const sent = out.status === 'released';
      return senderPage(
        base,
        sent ? 'Message sent' : 'Release pending',
        sent
          ? html`<p class="notice ok" role="status">Thank you. Your message has been delivered.</p>`
          : html`<p class="notice err" role="status">
              Your confirmation is recorded; delivery did not complete yet (${out.status}). A reviewer will follow up.
            </p>`,
      );
    },
    open,
  );
}
