// Admin operations on the quarantine (list, show, download, release, delete, purge, audit), shared by the CLI and the HTTP API; each one is audited in the store and the log.
import type { Readable } from 'node:stream';
import { walkMessage } from '../mime/walker.js';
import { QuarantineInputError } from './common.js';
import { isUnavailable } from './errors.js';
import { audited, auditTarget, guard, normalizeId, type Actor, type OperationsContext } from './ops-context.js';
import type { AuditFilter, AuditPage, DeleteResult, QuarantineFilter, QuarantinePage, QuarantineRecord } from './types.js';

export { normalizeId, DEFAULT_RELEASE_TIMEOUT_MS } from './ops-context.js';
export type { Actor, DeliverFn, DeliveryReport, OperationsContext, RescanFn, RescanResult } from './ops-context.js';
export { releaseMessage, releaseHeader, prependHeader, planRelease } from './release.js';
export type { ReleaseOptions, ReleaseOutcome, ReleasePlan, RecipientReport } from './release.js';

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
  /**
   * The HTML part as sent, only when asked for (PreviewLimits.maxHtmlChars): for the console's sandboxed frame, which
   * renders it with no scripts and no remote loads. Never for a terminal or the JSON API.
   */
  html?: { source: string; truncated: boolean };
  /** Set when the message could not be parsed completely; what was found so far is still returned. */
  error?: string;
}

export interface PreviewLimits {
  maxTextChars?: number;
  maxHeaders?: number;
  maxHeaderChars?: number;
  maxAttachments?: number;
  /** The preview stops (with `error` set) when this fires or after deadlineMs (default 30 s). */
  signal?: AbortSignal;
  deadlineMs?: number;
  /** Keep up to this many characters of the HTML part in `html` (default 0: not kept). */
  maxHtmlChars?: number;
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
 * Safe preview through the shared MIME walker (streaming mailparser under limits, an abort signal and a
 * deadline; never simpleParser, which buffers attachments). Attachments are only counted.
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
  let text: string | undefined;
  let html: string | undefined;
  const result = await walkMessage(
    source,
    {
      headerLines: (lines) => {
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
      },
      text: (data) => {
        if (typeof data.text === 'string' && data.text.trim() !== '') text = data.text;
        if (typeof data.html === 'string') html = data.html;
      },
      attachment: async (data) => {
        // Only counted: the bytes are read and dropped.
        let size = 0;
        for await (const c of data.content as Readable) size += (c as Buffer).length;
        if (preview.attachments.length < maxAttachments) {
          preview.attachments.push({
            filename: data.filename ? sanitizeText(data.filename).slice(0, 255) : null,
            contentType: sanitizeText(data.contentType ?? 'application/octet-stream').slice(0, 255),
            disposition: data.contentDisposition ? sanitizeText(data.contentDisposition).slice(0, 64) : null,
            size,
          });
        } else preview.attachmentsTruncated = true;
      },
    },
    {
      signal: limits.signal,
      deadlineMs: limits.deadlineMs ?? 30_000,
      parser: { skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true, skipTextLinks: true },
    },
  );
  if (result.error) {
    if (result.inputFailed && isUnavailable(result.error)) throw result.error;
    preview.error = sanitizeText(result.error.message).slice(0, 500);
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
  const maxHtml = limits.maxHtmlChars ?? 0;
  if (maxHtml > 0 && html !== undefined) {
    const h = truncate(html, maxHtml);
    preview.html = { source: h.text, truncated: h.truncated };
  }
  return preview;
}

/** The record an id names, or null once the miss is audited under `action` (a malformed id is simply not found). */
async function findRecord(ctx: OperationsContext, actor: Actor, action: 'show' | 'download', id: string): Promise<QuarantineRecord | null> {
  id = normalizeId(id);
  const target = auditTarget(id);
  const record = await guard(ctx, actor, action, target, () => ctx.store.get(id));
  if (!record) await audited(ctx, actor, action, target, 'not-found', target ? undefined : 'malformed id');
  return record;
}

export async function showMessage(
  ctx: OperationsContext,
  actor: Actor,
  id: string,
  limits?: PreviewLimits,
): Promise<{ record: QuarantineRecord; preview: MessagePreview } | null> {
  const record = await findRecord(ctx, actor, 'show', id);
  if (!record) return null;
  const preview = await guard(ctx, actor, 'show', record.id, () => buildPreview(ctx.store.openMessage(record.id), limits));
  await audited(ctx, actor, 'show', record.id, 'ok');
  return { record, preview };
}

/** The original EML as a stream; null for an unknown id (known before any byte is sent, so the API can answer 404). */
export async function downloadMessage(
  ctx: OperationsContext,
  actor: Actor,
  id: string,
): Promise<{ record: QuarantineRecord; stream: Readable } | null> {
  const record = await findRecord(ctx, actor, 'download', id);
  if (!record) return null;
  await audited(ctx, actor, 'download', record.id, 'ok');
  return { record, stream: ctx.store.openMessage(record.id) };
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
): Promise<{ purged: number; olderThan: string; ids: string[] }> {
  const days = opts.olderThanDays;
  if (typeof days !== 'number' || !Number.isFinite(days) || days < 0 || days > MAX_RETENTION_DAYS) {
    await audited(ctx, actor, 'purge', null, 'invalid', 'olderThanDays out of range');
    throw new QuarantineInputError(`olderThanDays must be a number from 0 to ${MAX_RETENTION_DAYS}`);
  }
  const now = (ctx.now ?? (() => new Date()))();
  const olderThan = new Date(now.getTime() - days * 86_400_000);
  const ids = await guard(ctx, actor, 'purge', null, () => ctx.store.purge(olderThan));
  const cutoff = `older than ${olderThan.toISOString()} (${days} days)`;
  // One entry per deleted id, like `delete`, so `audit --target ID` answers "where did this message go?"; the
  // summary entry after them carries the count (the ids stay out of it: a retention run can delete thousands).
  for (const id of ids) await audited(ctx, actor, 'purge', id, 'ok', cutoff);
  await audited(ctx, actor, 'purge', null, 'ok', `${cutoff}: ${ids.length} deleted`);
  return { purged: ids.length, olderThan: olderThan.toISOString(), ids };
}

export async function listAuditEntries(ctx: OperationsContext, actor: Actor, filter: AuditFilter): Promise<AuditPage> {
  const page = await guard(ctx, actor, 'audit', null, () => ctx.store.listAudit(filter));
  await audited(ctx, actor, 'audit', null, 'ok', `${describeFilter(filter)} -> ${page.items.length}`);
  return page;
}
