// Admin operations on the quarantine (list, show, download, release, delete, purge, audit), shared by the CLI and the HTTP API; each one is audited in the store and the log.
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MailParser, type AttachmentStream, type MessageText } from 'mailparser';
import type { Logger } from '../observability/logger.js';
import { isSafeId, QuarantineInputError, DEFAULT_CLAIM_TTL_MS } from './common.js';
import { isUnavailable } from './errors.js';
import type {
  AuditFilter,
  AuditPage,
  DeleteResult,
  QuarantineFilter,
  QuarantinePage,
  QuarantineRecord,
  QuarantineStore,
  ReleaseClaimInfo,
  ReleaseInfo,
  StoredEnvelope,
  StoredRecipient,
} from './types.js';

/**
 * Hands a message to the next hop with exactly this envelope; must honour the signal (abort = give up, reject).
 * `rejected` (optional, as NextHopRelay.deliver returns it) lists recipients the next hop refused while accepting the rest.
 */
export type DeliverFn = (
  env: StoredEnvelope,
  openMessage: () => Readable,
  signal: AbortSignal,
) => Promise<{ response: string; rejected?: Array<{ address: string; response: string }> }>;
/** Asks the DLP engine again; `allow: false` stops the release. */
export type RescanFn = (
  record: QuarantineRecord,
  openMessage: () => Readable,
  signal: AbortSignal,
) => Promise<{ actionCode: number | null; allow: boolean; detail: string }>;

export type RescanResult = Awaited<ReturnType<RescanFn>>;

/** Who acts: "admin-api", "cli:<user>", "retention"; source is the remote address or user@host. */
export interface Actor {
  name: string;
  source?: string;
}

export interface OperationsContext {
  store: QuarantineStore;
  logger?: Logger;
  /** Required for release only. */
  deliver?: DeliverFn;
  rescan?: RescanFn;
  /** Budget for re-scan plus delivery (default 2 minutes); must stay well below the claim TTL. */
  releaseTimeoutMs?: number;
  /** Age after which a release claim counts as left by a crash (default 15 minutes). */
  claimTtlMs?: number;
  /** Clock, for the release header and purge cut-off. */
  now?: () => Date;
}

export const DEFAULT_RELEASE_TIMEOUT_MS = 120_000;

// ---------------------------------------------------------------------------------------------
// audit

async function audited(
  ctx: OperationsContext,
  actor: Actor,
  action: string,
  target: string | null,
  result: string,
  detail?: string,
): Promise<void> {
  const entry = {
    actor: actor.name,
    action,
    target,
    result,
    ...(detail !== undefined ? { detail } : {}),
    ...(actor.source !== undefined ? { source: actor.source } : {}),
  };
  const failed = !['ok', 'not-found', 'already-released', 'in-progress'].includes(result);
  ctx.logger?.[failed ? 'warn' : 'info']({ audit: entry }, `quarantine ${action}: ${result}`);
  try {
    await ctx.store.audit(entry);
  } catch (err) {
    // The action already happened (or failed for its own reason); a lost store entry must not change its answer, but it must be visible.
    ctx.logger?.error({ audit: entry, err: err instanceof Error ? err.message : String(err) }, 'quarantine audit entry could not be stored');
  }
}

/** Runs `fn`; if the store fails, audits the failure (best effort) and rethrows so the caller answers 503 / exit 1. */
async function guard<T>(ctx: OperationsContext, actor: Actor, action: string, target: string | null, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof QuarantineInputError) {
      await audited(ctx, actor, action, target, 'invalid', err.message);
    } else {
      await audited(ctx, actor, action, target, 'error', isUnavailable(err) ? 'store unavailable' : err instanceof Error ? err.message : String(err));
    }
    throw err;
  }
}

/** Operators paste ids from logs and mail headers: accept surrounding blanks and upper case, the store only ever sees the canonical form. */
export function normalizeId(id: string): string {
  const t = typeof id === 'string' ? id.trim() : '';
  return /^[0-9a-fA-F-]{36}$/.test(t) ? t.toLowerCase() : t;
}

/** Only well-formed ids are written to the audit as targets; anything else is recorded as "malformed" and never echoed. */
function auditTarget(id: string): string | null {
  return isSafeId(id) ? id : null;
}

function describeFilter(f: QuarantineFilter | AuditFilter): string {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f)) if (v !== undefined && k !== 'cursor') out[k] = v instanceof Date ? v.toISOString() : v;
  return JSON.stringify(out);
}

// ---------------------------------------------------------------------------------------------
// list / show / download

export async function listMessages(ctx: OperationsContext, actor: Actor, filter: QuarantineFilter): Promise<QuarantinePage> {
  const page = await guard(ctx, actor, 'list', null, () => ctx.store.list(filter));
  await audited(ctx, actor, 'list', null, 'ok', `${describeFilter(filter)} -> ${page.items.length}`);
  return page;
}

export interface AttachmentSummary {
  filename: string | null;
  contentType: string;
  disposition: string | null;
  size: number;
}

export interface MessagePreview {
  /** Top-level header fields, unfolded, as stored (encoded words are not decoded). */
  headers: Array<{ name: string; value: string }>;
  headersTruncated: boolean;
  /** The text part; from the HTML part with tags stripped when there is no text part. Never rendered HTML. */
  text: string;
  textSource: 'text' | 'html-stripped' | 'none';
  textTruncated: boolean;
  attachments: AttachmentSummary[];
  attachmentsTruncated: boolean;
  /** Set when the message could not be parsed completely; what was found so far is still returned. */
  error?: string;
}

export interface PreviewLimits {
  maxTextChars?: number;
  maxHeaders?: number;
  maxHeaderChars?: number;
  maxAttachments?: number;
}

/**
 * Control characters (except tab and newline) and bidi overrides are replaced: preview text ends up in
 * terminals and admin UIs, and message content is attacker-controlled.
 */
export function sanitizeText(s: string): string {
  return s.replace(/\r\n?/g, '\n').replace(/[\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]/g, '\uFFFD');
}

function truncate(s: string, max: number): { text: string; truncated: boolean } {
  return s.length > max ? { text: s.slice(0, max), truncated: true } : { text: s, truncated: false };
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]{1,6}|#\d{1,7}|[a-z]{2,8});/gi, (m, e: string) => {
    if (e[0] === '#') {
      const cp = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return cp > 0 && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) ? String.fromCodePoint(cp) : '\uFFFD';
    }
    return ENTITIES[e.toLowerCase()] ?? m;
  });
}

const SKIP_CONTENT = new Set(['script', 'style', 'head', 'title', 'template', 'noscript', 'svg', 'object']);
const BLOCK_TAGS = new Set(['br', 'p', 'div', 'tr', 'li', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'table', 'ul', 'ol', 'blockquote', 'hr']);

/**
 * HTML to plain text by dropping tags, in one linear pass (no backtracking regex over attacker HTML).
 * Script/style content is dropped; block tags become line breaks; entities are decoded last so they can never form tags.
 */
export function stripHtml(html: string): string {
  const out: string[] = [];
  let i = 0;
  while (i < html.length) {
    const lt = html.indexOf('<', i);
    if (lt < 0) {
      out.push(html.slice(i));
      break;
    }
    out.push(html.slice(i, lt));
    if (html.startsWith('<!--', lt)) {
      const end = html.indexOf('-->', lt + 4);
      if (end < 0) break;
      i = end + 3;
      continue;
    }
    const gt = html.indexOf('>', lt + 1);
    if (gt < 0) break; // unterminated tag: drop the rest
    const m = /^<\/?\s*([a-zA-Z][a-zA-Z0-9]*)/.exec(html.slice(lt, Math.min(gt + 1, lt + 40)));
    const name = m?.[1]?.toLowerCase() ?? '';
    const closing = html[lt + 1] === '/';
    i = gt + 1;
    if (BLOCK_TAGS.has(name)) out.push('\n');
    else out.push(' ');
    if (!closing && SKIP_CONTENT.has(name) && html[gt - 1] !== '/') {
      const re = new RegExp(`</\\s*${name}\\s*>`, 'gi');
      re.lastIndex = i;
      const close = re.exec(html);
      if (!close) break;
      i = close.index + close[0].length;
    }
  }
  return decodeEntities(out.join(''))
    .replace(/[ \t\u00a0]+/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/**
 * Safe preview through mailparser's streaming MailParser (never simpleParser: it buffers attachments).
 * Attachment streams are drained and only counted, otherwise the parser stalls.
 */
export async function buildPreview(source: Readable, limits: PreviewLimits = {}): Promise<MessagePreview> {
  const maxText = limits.maxTextChars ?? 8_000;
  const maxHeaders = limits.maxHeaders ?? 100;
  const maxHeaderChars = limits.maxHeaderChars ?? 2_000;
  const maxAttachments = limits.maxAttachments ?? 200;
  const preview: MessagePreview = {
    headers: [],
    headersTruncated: false,
    text: '',
    textSource: 'none',
    textTruncated: false,
    attachments: [],
    attachmentsTruncated: false,
  };
  const parser = new MailParser({ skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true, skipTextLinks: true });
  parser.on('headerLines', (lines: Array<{ key: string; line: string }>) => {
    for (const { line } of lines) {
      if (preview.headers.length >= maxHeaders) {
        preview.headersTruncated = true;
        break;
      }
      const colon = line.indexOf(':');
      const name = sanitizeText(colon > 0 ? line.slice(0, colon) : line).trim();
      const value = colon > 0 ? line.slice(colon + 1).replace(/\r?\n[ \t]+/g, ' ').trim() : '';
      const t = truncate(sanitizeText(value), maxHeaderChars);
      preview.headers.push({ name, value: t.truncated ? `${t.text}…` : t.text });
    }
  });
  let text: string | undefined;
  let html: string | undefined;
  parser.on('data', (data: AttachmentStream | MessageText) => {
    if (data.type === 'text') {
      if (typeof data.text === 'string' && data.text.trim() !== '') text = data.text;
      if (typeof data.html === 'string') html = data.html;
      return;
    }
    let size = 0;
    const content = data.content as Readable;
    content.on('data', (c: Buffer) => (size += c.length));
    content.on('end', () => {
      if (preview.attachments.length < maxAttachments) {
        preview.attachments.push({
          filename: data.filename ? sanitizeText(data.filename).slice(0, 255) : null,
          contentType: sanitizeText(data.contentType ?? 'application/octet-stream').slice(0, 255),
          disposition: data.contentDisposition ? sanitizeText(data.contentDisposition).slice(0, 64) : null,
          size,
        });
      } else preview.attachmentsTruncated = true;
      data.release();
    });
    content.on('error', () => data.release());
  });
  try {
    await pipeline(source, parser);
  } catch (err) {
    if (isUnavailable(err)) throw err;
    preview.error = sanitizeText(err instanceof Error ? err.message : String(err)).slice(0, 500);
  }
  let body = '';
  if (text !== undefined) {
    body = text;
    preview.textSource = 'text';
  } else if (html !== undefined) {
    // Cap the input first: stripping is linear, but there is no point reading megabytes to show a few thousand characters.
    body = stripHtml(html.slice(0, Math.max(maxText * 20, 200_000)));
    preview.textSource = 'html-stripped';
  }
  const t = truncate(sanitizeText(body), maxText);
  preview.text = t.text;
  preview.textTruncated = t.truncated;
  return preview;
}

export async function showMessage(
  ctx: OperationsContext,
  actor: Actor,
  id: string,
  limits?: PreviewLimits,
): Promise<{ record: QuarantineRecord; preview: MessagePreview } | null> {
  id = normalizeId(id);
  const target = auditTarget(id);
  const record = await guard(ctx, actor, 'show', target, () => ctx.store.get(id));
  if (!record) {
    await audited(ctx, actor, 'show', target, 'not-found', target ? undefined : 'malformed id');
    return null;
  }
  const preview = await guard(ctx, actor, 'show', target, () => buildPreview(ctx.store.openMessage(record.id), limits));
  await audited(ctx, actor, 'show', record.id, 'ok');
  return { record, preview };
}

/** The original EML as a stream; null for an unknown id (known before any byte is sent, so the API can answer 404). */
export async function downloadMessage(
  ctx: OperationsContext,
  actor: Actor,
  id: string,
): Promise<{ record: QuarantineRecord; stream: Readable } | null> {
  id = normalizeId(id);
  const target = auditTarget(id);
  const record = await guard(ctx, actor, 'download', target, () => ctx.store.get(id));
  if (!record) {
    await audited(ctx, actor, 'download', target, 'not-found', target ? undefined : 'malformed id');
    return null;
  }
  await audited(ctx, actor, 'download', record.id, 'ok');
  return { record, stream: ctx.store.openMessage(record.id) };
}

// ---------------------------------------------------------------------------------------------
// release

export interface ReleaseOptions {
  /** Ask the DLP engine again first; a "not allowed" answer stops the release. */
  rescan?: boolean;
  /** Deliver to these original recipients only (must be a subset of the envelope). */
  recipients?: string[];
  /** Deliver to this address instead of the original recipients. */
  redirectTo?: string;
}

export type ReleaseOutcome =
  | { status: 'released'; id: string; recipients: string[]; rejected: string[]; response: string; releasedAt: string; rescan?: RescanResult }
  | { status: 'not-found'; id: string }
  | { status: 'already-released'; id: string; release: ReleaseInfo | null }
  | { status: 'in-progress'; id: string; claim: ReleaseClaimInfo | null }
  | { status: 'blocked'; id: string; rescan: RescanResult }
  | { status: 'invalid'; id: string; message: string }
  | { status: 'failed'; id: string; message: string };

/** Printable ASCII only, bounded: what goes into a header we add must never break the header block. */
function headerSafe(s: string, max = 200): string {
  return s.replace(/[^\x20-\x7e]/g, '?').replace(/\s+/g, ' ').trim().slice(0, max) || '?';
}

/**
 * The one header a release adds: when, who, and the reference the sender was given. Only the actor's
 * name goes out with the mail; its source (admin address, user@host) stays in the audit trail.
 */
export function releaseHeader(at: Date, actor: Actor, queryId: string): string {
  return `X-DLP-Released: ${at.toISOString()} by ${headerSafe(actor.name)} (ref ${headerSafe(queryId, 100)})`;
}

/**
 * Prepends one header line to a stored message without touching a byte of it; the line ending follows
 * the message's own (CRLF as received over SMTP, LF if it was stored that way).
 */
export function prependHeader(source: Readable, headerLine: string): Readable {
  const eolOf = (buf: Buffer): string => {
    const nl = buf.indexOf(0x0a);
    return nl < 0 || (nl > 0 && buf[nl - 1] === 0x0d) ? '\r\n' : '\n';
  };
  async function* gen(): AsyncGenerator<Buffer> {
    // Hold back only until the first line ending is seen (or 64 KiB), then pass chunks through untouched.
    const head: Buffer[] = [];
    let headBytes = 0;
    let sent = false;
    for await (const c of source) {
      const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c as string);
      if (sent) {
        yield chunk;
        continue;
      }
      head.push(chunk);
      headBytes += chunk.length;
      if (chunk.indexOf(0x0a) < 0 && headBytes < 64 * 1024) continue;
      const buf = Buffer.concat(head, headBytes);
      yield Buffer.from(headerLine + eolOf(buf));
      yield buf;
      sent = true;
    }
    if (!sent) {
      const buf = Buffer.concat(head, headBytes);
      yield Buffer.from(headerLine + eolOf(buf));
      if (buf.length) yield buf;
    }
  }
  return Readable.from(gen(), { objectMode: false });
}

const ADDRESS = /^[^\s<>()[\]\\,;:@"\u0000-\u001f\u007f]{1,64}@[^\s<>()[\]\\,;:@"\u0000-\u001f\u007f]{1,253}$/;

function planEnvelope(record: QuarantineRecord, opts: ReleaseOptions): StoredEnvelope | string {
  const env = record.envelope;
  if (opts.recipients !== undefined && opts.redirectTo !== undefined) return 'recipients and redirectTo cannot be combined';
  if (opts.redirectTo !== undefined) {
    const a = opts.redirectTo.trim();
    if (!ADDRESS.test(a) || a.length > 254) return 'redirectTo is not a valid address';
    const nonAscii = /[^\x00-\x7f]/.test(a);
    return { ...env, to: [{ address: a }], smtpUtf8: env.smtpUtf8 || nonAscii };
  }
  if (opts.recipients !== undefined) {
    if (!Array.isArray(opts.recipients) || opts.recipients.length === 0) return 'recipients must be a non-empty list';
    const chosen: StoredRecipient[] = [];
    for (const want of opts.recipients) {
      if (typeof want !== 'string') return 'recipients must be addresses';
      const match = env.to.find((r) => r.address.toLowerCase() === want.trim().toLowerCase());
      if (!match) return 'recipients must be a subset of the original recipients';
      if (!chosen.includes(match)) chosen.push(match);
    }
    return { ...env, to: chosen };
  }
  return env;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Release: claim (atomic, cross-process) → optional re-scan → deliver original bytes plus one header with
 * the original envelope (or the chosen subset / redirect) → mark released. A second release, concurrent
 * or later, gets "already released" or "in progress" and delivers nothing. A failed delivery or re-scan
 * drops the claim so the operator can retry.
 */
export async function releaseMessage(ctx: OperationsContext, actor: Actor, id: string, opts: ReleaseOptions = {}): Promise<ReleaseOutcome> {
  id = normalizeId(id);
  const target = auditTarget(id);
  const who = actor.source ? `${actor.name} [${actor.source}]` : actor.name;
  if (!target) {
    await audited(ctx, actor, 'release', null, 'not-found', 'malformed id');
    return { status: 'not-found', id };
  }
  const deliver = ctx.deliver;
  if (!deliver) throw new Error('release needs a deliver function');
  if (opts.rescan && !ctx.rescan) {
    await audited(ctx, actor, 'release', id, 'invalid', 'rescan requested but no scanner configured');
    return { status: 'invalid', id, message: 'rescan is not available' };
  }
  const current = await guard(ctx, actor, 'release', id, () => ctx.store.get(id));
  if (!current) {
    await audited(ctx, actor, 'release', id, 'not-found');
    return { status: 'not-found', id };
  }
  if (current.status === 'released') {
    await audited(ctx, actor, 'release', id, 'already-released');
    return { status: 'already-released', id, release: current.release ?? null };
  }
  const plan = planEnvelope(current, opts);
  if (typeof plan === 'string') {
    await audited(ctx, actor, 'release', id, 'invalid', plan);
    return { status: 'invalid', id, message: plan };
  }

  const claim = await guard(ctx, actor, 'release', id, () =>
    ctx.store.claimRelease(id, { actor: who, claimTtlMs: ctx.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS }),
  );
  if (claim.status === 'not-found') {
    await audited(ctx, actor, 'release', id, 'not-found');
    return { status: 'not-found', id };
  }
  if (claim.status === 'already-released') {
    await audited(ctx, actor, 'release', id, 'already-released');
    return { status: 'already-released', id, release: claim.record.release ?? null };
  }
  if (claim.status === 'in-progress') {
    await audited(ctx, actor, 'release', id, 'in-progress');
    return { status: 'in-progress', id, claim: claim.record.releaseClaim ?? null };
  }

  const record = claim.record;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error('release timed out')), ctx.releaseTimeoutMs ?? DEFAULT_RELEASE_TIMEOUT_MS);
  timer.unref();
  const giveBack = async (): Promise<void> => {
    await ctx.store.abandonRelease(id, claim.token).catch((err: unknown) => {
      // The claim then expires after its TTL; until then the message shows "release in progress".
      ctx.logger?.error({ id, err: errText(err) }, 'quarantine release claim could not be dropped');
    });
  };
  try {
    let rescan: RescanResult | undefined;
    if (opts.rescan && ctx.rescan) {
      try {
        rescan = await ctx.rescan(record, () => ctx.store.openMessage(id), abort.signal);
      } catch (err) {
        await giveBack();
        await audited(ctx, actor, 'release', id, 'failed', `rescan failed: ${errText(err)}`);
        return { status: 'failed', id, message: `rescan failed: ${errText(err)}` };
      }
      if (!rescan.allow) {
        await giveBack();
        await audited(ctx, actor, 'release', id, 'blocked', `rescan actionCode=${rescan.actionCode ?? 'none'}: ${rescan.detail}`);
        return { status: 'blocked', id, rescan };
      }
    }
    const at = (ctx.now ?? (() => new Date()))();
    const header = releaseHeader(at, actor, record.queryId);
    let response: string;
    let rejected: string[] = [];
    try {
      const result = await deliver(plan, () => prependHeader(ctx.store.openMessage(id), header), abort.signal);
      response = result.response;
      rejected = (result.rejected ?? []).map((r) => r.address);
    } catch (err) {
      await giveBack();
      await audited(ctx, actor, 'release', id, 'failed', `delivery failed: ${errText(err)}`);
      return { status: 'failed', id, message: `delivery failed: ${errText(err)}` };
    }
    // Partly refused counts as released: the accepted copies are out, so a retry would duplicate them.
    const refused = new Set(rejected.map((a) => a.toLowerCase()));
    const recipients = plan.to.map((r) => r.address).filter((a) => !refused.has(a.toLowerCase()));
    const info: ReleaseInfo = { at: at.toISOString(), by: who, recipients, response };
    // Delivered: marking must not be lost lightly, or the claim could go stale and allow a second delivery.
    let marked = false;
    for (let attempt = 0; attempt < 3 && !marked; attempt++) {
      try {
        await ctx.store.completeRelease(id, claim.token, info);
        marked = true;
      } catch (err) {
        ctx.logger?.error({ id, attempt, err: errText(err) }, 'quarantine release delivered but not yet marked released');
      }
    }
    await audited(
      ctx,
      actor,
      'release',
      id,
      'ok',
      `to ${recipients.join(', ')}${opts.redirectTo ? ' (redirect)' : ''}${rejected.length ? `; refused: ${rejected.join(', ')}` : ''}: ${response}${
        marked ? '' : ' [WARNING: not marked released]'
      }`,
    );
    return { status: 'released', id, recipients, rejected, response, releasedAt: info.at, ...(rescan ? { rescan } : {}) };
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// delete / purge / audit

export async function deleteMessage(ctx: OperationsContext, actor: Actor, id: string): Promise<DeleteResult> {
  id = normalizeId(id);
  const target = auditTarget(id);
  if (!target) {
    await audited(ctx, actor, 'delete', null, 'not-found', 'malformed id');
    return 'not-found';
  }
  const result = await guard(ctx, actor, 'delete', id, () => ctx.store.delete(id));
  await audited(ctx, actor, 'delete', id, result === 'deleted' ? 'ok' : result);
  return result;
}

export const MAX_RETENTION_DAYS = 36_500;

/** Deletes everything quarantined more than `olderThanDays` days ago (0: everything up to now). */
export async function purgeMessages(
  ctx: OperationsContext,
  actor: Actor,
  opts: { olderThanDays: number },
): Promise<{ purged: number; olderThan: string }> {
  const days = opts.olderThanDays;
  if (typeof days !== 'number' || !Number.isFinite(days) || days < 0 || days > MAX_RETENTION_DAYS) {
    await audited(ctx, actor, 'purge', null, 'invalid', 'olderThanDays out of range');
    throw new QuarantineInputError(`olderThanDays must be a number from 0 to ${MAX_RETENTION_DAYS}`);
  }
  const now = (ctx.now ?? (() => new Date()))();
  const olderThan = new Date(now.getTime() - days * 86_400_000);
  const purged = await guard(ctx, actor, 'purge', null, () => ctx.store.purge(olderThan));
  await audited(ctx, actor, 'purge', null, 'ok', `older than ${olderThan.toISOString()} (${days} days): ${purged} deleted`);
  return { purged, olderThan: olderThan.toISOString() };
}

export async function listAuditEntries(ctx: OperationsContext, actor: Actor, filter: AuditFilter): Promise<AuditPage> {
  const page = await guard(ctx, actor, 'audit', null, () => ctx.store.listAudit(filter));
  await audited(ctx, actor, 'audit', null, 'ok', `${describeFilter(filter)} -> ${page.items.length}`);
  return page;
}
