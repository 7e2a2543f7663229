// Optional sender notices on quarantine or reject: a short templated text (what happened, the reference, whom to ask), never any message content.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import type { StoredEnvelope } from './types.js';
import type { DeliverFn } from './operations.js';

export type NoticeKind = 'quarantine' | 'reject';

/** What the relay knows about the held or rejected message; only metadata, by design. */
export interface NoticeInput {
  kind: NoticeKind;
  queryId: string;
  /** The original envelope sender (MAIL FROM); '' for the null sender. */
  sender: string;
  recipients: string[];
  subject: string | null;
  /** Human-readable reason for the sender (not internal codes). */
  reason: string;
  /** Original headers that mark automated mail; any of them suppresses the notice (RFC 3834 §2). */
  autoSubmitted?: string | null;
  precedence?: string | null;
  listId?: string | null;
  /** Sender self-service ("confirm" holds): a signed single-use link, added below the template's text. */
  confirm?: { url: string; expiresAt: Date } | null;
}

export interface NoticeOptions {
  /** Address in From: (and the envelope sender unless envelopeFrom says otherwise). */
  from: string;
  /**
   * Envelope sender of the notice. Default '' (null reverse-path): RFC 3834 §3.3 recommends it for
   * automatic responses so a failing notice can never bounce back and start a loop.
   */
  envelopeFrom?: string;
  helpContact: string;
  /** Right-hand side of the notice's Message-ID. */
  hostname: string;
  /** Template text (see config/notification-*.txt). */
  template: string;
  now?: Date;
  messageId?: string;
}

export interface Notice {
  envelope: StoredEnvelope;
  message: Buffer;
}

/** Local parts that belong to automated senders: a notice to them is at best useless, at worst a loop (RFC 3834 §2). */
const AUTOMATED_LOCAL = /^(mailer-daemon|postmaster|owner-.+|.+-request|.+-bounces?|bounces?|no-?reply|do-?not-?reply)$/i;

/** Why a notice must not be sent, or null when it may be. */
export function noticeSuppressedBecause(input: NoticeInput, from: string): string | null {
  const sender = input.sender.trim().replace(/^<(.*)>$/, '$1');
  if (sender === '') return 'null sender';
  const at = sender.lastIndexOf('@');
  if (at <= 0 || at === sender.length - 1) return 'sender is not an address';
  if (/[\s<>\u0000-\u001f\u007f]/.test(sender)) return 'sender is not an address';
  const local = sender.slice(0, at).split('+')[0]!;
  if (AUTOMATED_LOCAL.test(local)) return 'automated sender';
  if (sender.toLowerCase() === from.trim().toLowerCase()) return 'sender is the notice address';
  if (input.autoSubmitted && input.autoSubmitted.trim().toLowerCase() !== 'no') return 'auto-submitted message';
  if (input.precedence && /^(bulk|junk|list)$/i.test(input.precedence.trim())) return 'bulk or list message';
  if (input.listId) return 'mailing list message';
  return null;
}

/** One line, printable, bounded: values land in a header or a short text, and come partly from the sender. */
export function oneLine(s: string, max: number): string {
  const clean = s
    .replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}

function recipientList(rcpts: readonly string[]): string {
  const shown = rcpts.slice(0, 10).map((r) => oneLine(r, 254));
  return rcpts.length > shown.length ? `${shown.join(', ')} and ${rcpts.length - shown.length} more` : shown.join(', ') || '(none)';
}

/** Splits a template into its optional "Subject:" line and the body; leading // lines are comments. */
export function parseTemplate(text: string): { subject: string | null; body: string } {
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  while (lines.length && lines[0]!.startsWith('//')) lines.shift();
  let subject: string | null = null;
  const first = lines[0];
  if (first !== undefined && /^subject:/i.test(first)) {
    subject = first.slice('subject:'.length).trim();
    lines.shift();
    if (lines[0] !== undefined && lines[0].trim() === '') lines.shift();
  }
  return { subject, body: lines.join('\n').replace(/\n+$/, '') + '\n' };
}

/** Single pass, so a value that itself contains "{reason}" is never expanded again. */
function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{(queryId|subject|recipients|helpContact|reason)\}/g, (_m, k: string) => values[k] ?? '');
}

/** RFC 2047 encoded words for a non-ASCII header value, split on character boundaries and folded. */
export function encodeHeaderValue(s: string): string {
  if (/^[\x20-\x7e]*$/.test(s)) return s;
  const words: string[] = [];
  let cur = '';
  for (const ch of s) {
    // 45 bytes of UTF-8 → 60 base64 chars → 72-char encoded word, under the 75 limit.
    if (Buffer.byteLength(cur + ch) > 45) {
      words.push(cur);
      cur = '';
    }
    cur += ch;
  }
  if (cur) words.push(cur);
  return words.map((w) => `=?UTF-8?B?${Buffer.from(w).toString('base64')}?=`).join('\r\n ');
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(
    d.getUTCMinutes(),
  )}:${p(d.getUTCSeconds())} +0000`;
}

/** A text/plain mail the relay itself writes (a sender notice, a reviewer digest). */
export interface GeneratedMail {
  /** From: and To: addresses, each already one printable line (oneLine). */
  from: string;
  to: readonly string[];
  /** Encoded here when it is not plain ASCII. */
  subject: string;
  /** RFC 3834: auto-replied for an answer to a message (a notice), auto-generated for anything else (a digest). */
  autoSubmitted: 'auto-replied' | 'auto-generated';
  /** Our own last header, naming what the mail is (X-DLP-Notice, X-DLP-Digest). */
  ownHeader: string;
  /** CRLF line endings. */
  body: string;
  /** Whether the body may go as 7bit; otherwise it is sent base64. */
  ascii: boolean;
  /** Right-hand side of the Message-ID. */
  hostname: string;
  now?: Date | undefined;
  messageId?: string | undefined;
}

/**
 * The headers and body of a mail we generate. It is marked automatic so that auto-responders (out-of-office)
 * stay quiet (RFC 3834) and Exchange suppresses its OOF replies.
 */
export function generatedMail(m: GeneratedMail): Buffer {
  const host = oneLine(m.hostname, 200).replace(/[^A-Za-z0-9.-]/g, '') || 'localhost';
  const headers = [
    `From: <${m.from}>`,
    `To: ${m.to.map((r) => `<${r}>`).join(',\r\n ')}`,
    `Subject: ${encodeHeaderValue(m.subject)}`,
    `Date: ${rfc5322Date(m.now ?? new Date())}`,
    `Message-ID: <${m.messageId ?? randomUUID()}@${host}>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    `Content-Transfer-Encoding: ${m.ascii ? '7bit' : 'base64'}`,
    `Auto-Submitted: ${m.autoSubmitted}`,
    'X-Auto-Response-Suppress: All',
    m.ownHeader,
  ];
  const encoded = m.ascii ? m.body : (Buffer.from(m.body).toString('base64').match(/.{1,76}/g) ?? []).join('\r\n') + '\r\n';
  return Buffer.from(`${headers.join('\r\n')}\r\n\r\n${encoded}`);
}

/**
 * Builds the notice (pure: pass `now` and `messageId` for a deterministic result). Returns null when the
 * sender must not be notified (null sender, MAILER-DAEMON/postmaster and other automated senders, lists).
 */
export function buildNotice(input: NoticeInput, opts: NoticeOptions): Notice | null {
  if (noticeSuppressedBecause(input, opts.from) !== null) return null;
  const sender = input.sender.trim().replace(/^<(.*)>$/, '$1');
  const values = {
    queryId: oneLine(input.queryId, 100),
    subject: input.subject ? oneLine(input.subject, 200) : '(no subject)',
    recipients: recipientList(input.recipients),
    helpContact: oneLine(opts.helpContact, 200),
    reason: oneLine(input.reason, 300),
  };
  const tpl = parseTemplate(opts.template);
  const defaultSubject = input.kind === 'quarantine' ? 'Your message is held for review (ref {queryId})' : 'Your message was not delivered (ref {queryId})';
  const subject = oneLine(fill(tpl.subject ?? defaultSubject, values), 300);
  const confirm = input.confirm
    ? `\nYou can send it yourself if it must go out: open the link below, give a reason, and confirm (or withdraw it).\nThe link works once, until ${input.confirm.expiresAt.toISOString().replace(/\.\d+Z$/, 'Z')}:\n${input.confirm.url.replace(/[^\x21-\x7e]/g, '')}\n`
    : '';
  const body = (fill(tpl.body, values) + confirm).replace(/\n/g, '\r\n');
  const ascii = /^[\x00-\x7f]*$/.test(body) && body.split('\r\n').every((l) => l.length <= 998);
  const from = oneLine(opts.from, 254);
  const message = generatedMail({
    from,
    to: [sender],
    subject,
    autoSubmitted: 'auto-replied',
    ownHeader: `X-DLP-Notice: ${input.kind}; ref=${values.queryId.replace(/[^\x21-\x7e]/g, '?')}`,
    body,
    ascii,
    hostname: opts.hostname,
    now: opts.now,
    messageId: opts.messageId,
  });
  const smtpUtf8 = /[^\x00-\x7f]/.test(sender) || /[^\x00-\x7f]/.test(from);
  return {
    envelope: { from: opts.envelopeFrom ?? '', to: [{ address: sender }], smtpUtf8, ...(smtpUtf8 ? {} : { bodyType: '7bit' as const }) },
    message,
  };
}

/** Sends a notice through the next hop. Never throws: a failed notice is logged and must not affect mail flow. */
export async function sendNotice(notice: Notice, deliver: DeliverFn, opts: { logger?: Logger; timeoutMs?: number; queryId?: string } = {}): Promise<boolean> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error('notice delivery timed out')), opts.timeoutMs ?? 30_000);
  timer.unref();
  try {
    const { response, recipients } = await deliver(notice.envelope, () => Readable.from([notice.message]), abort.signal);
    const to = notice.envelope.to.map((r) => r.address);
    // A notice has one recipient; sent means the next hop took it, not merely that it answered.
    if (!recipients.some((r) => r.status === 'accepted')) {
      opts.logger?.warn({ queryId: opts.queryId, to, recipients }, 'sender notice not accepted by the next hop');
      return false;
    }
    opts.logger?.info({ queryId: opts.queryId, to, response }, 'sender notice sent');
    return true;
  } catch (err) {
    opts.logger?.warn({ queryId: opts.queryId, err: err instanceof Error ? err.message : String(err) }, 'sender notice failed');
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export interface NotifySettings {
  /** Off by default: the relay sends nothing unless asked to. */
  enabled: boolean;
  onQuarantine: boolean;
  onReject: boolean;
  from: string;
  envelopeFrom?: string;
  helpContact: string;
  hostname: string;
  /** Directory holding notification-quarantine.txt and notification-reject.txt. */
  templateDir: string;
  timeoutMs?: number;
}

export interface NoticeTemplates {
  quarantine: string;
  reject: string;
}

export async function loadNoticeTemplates(dir: string): Promise<NoticeTemplates> {
  const [quarantine, reject] = await Promise.all([
    readFile(join(dir, 'notification-quarantine.txt'), 'utf8'),
    readFile(join(dir, 'notification-reject.txt'), 'utf8'),
  ]);
  return { quarantine, reject };
}

export interface Notifier {
  /** Fire-and-forget friendly: resolves false when nothing was sent (disabled, suppressed or failed), never rejects. */
  notify(input: NoticeInput): Promise<boolean>;
}

/** Loads the templates once at start (a missing template is a startup error, not a silent skip later). */
export async function createNotifier(settings: NotifySettings, deliver: DeliverFn, logger?: Logger): Promise<Notifier> {
  if (!settings.enabled) return { notify: async () => false };
  const templates = await loadNoticeTemplates(settings.templateDir);
  return {
    async notify(input: NoticeInput): Promise<boolean> {
      if (input.kind === 'quarantine' ? !settings.onQuarantine : !settings.onReject) return false;
      const why = noticeSuppressedBecause(input, settings.from);
      if (why) {
        logger?.debug({ queryId: input.queryId, why }, 'sender notice suppressed');
        return false;
      }
      const notice = buildNotice(input, {
        from: settings.from,
        ...(settings.envelopeFrom !== undefined ? { envelopeFrom: settings.envelopeFrom } : {}),
        helpContact: settings.helpContact,
        hostname: settings.hostname,
        template: input.kind === 'quarantine' ? templates.quarantine : templates.reject,
      });
      if (!notice) return false;
      return sendNotice(notice, deliver, { ...(logger ? { logger } : {}), timeoutMs: settings.timeoutMs ?? 30_000, queryId: input.queryId });
    },
  };
}
