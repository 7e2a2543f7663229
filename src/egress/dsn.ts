// RFC 3464 failure notifications for recipients the next hop refused after the client already got 250 for the message.
import { randomBytes } from 'node:crypto';
import { encodeXText } from './connection.js';
import type { OutboundEnvelope } from './relay.js';

export interface FailedRecipient {
  address: string;
  /** ORCPT as the client sent it (xtext-decoded), e.g. 'rfc822;user@example.com'. */
  orcpt?: string;
  code: number;
  /** The next hop's reply to this recipient. */
  response: string;
}

export interface FailureDsnInput {
  /** Our host name: Reporting-MTA and MAILER-DAEMON domain. */
  reportingMta: string;
  originalEnvelope: OutboundEnvelope;
  arrivalDate: Date;
  failed: FailedRecipient[];
  /** The original message's header block (with or without the blank line that ends it). */
  originalHeaders: Buffer;
  queryId: string;
}

export type DsnEvent = 'failure' | 'delay' | 'success';

/**
 * RFC 3461 §4.1: with no NOTIFY the MTA decides, and by convention reports failures and delays but
 * not successes; NOTIFY=NEVER asks for nothing; otherwise only the listed events are reported.
 */
export function shouldNotify(notify: readonly string[] | undefined, event: DsnEvent = 'failure'): boolean {
  const list = (notify ?? []).map((n) => n.trim().toUpperCase()).filter((n) => n !== '');
  if (list.length === 0) return event !== 'success';
  if (list.includes('NEVER')) return false;
  return list.includes(event.toUpperCase());
}

/**
 * Builds the failure DSN, or returns null when nobody should get one: the original sender is the null
 * sender (never bounce a bounce, RFC 5321 §6.1 / RFC 3461 §6.2), or every failed recipient asked not
 * to be told about failures.
 */
export function buildFailureDsn(input: FailureDsnInput): { envelope: OutboundEnvelope; message: Buffer } | null {
  const sender = input.originalEnvelope.from.trim();
  if (sender === '') return null;

  const byAddress = new Map<string, OutboundEnvelope['to'][number]>();
  for (const r of input.originalEnvelope.to) {
    const key = r.address.toLowerCase();
    if (!byAddress.has(key)) byAddress.set(key, r);
  }
  const report = input.failed
    .map((f) => ({ ...f, original: byAddress.get(f.address.toLowerCase()) }))
    .filter((f) => shouldNotify(f.original?.notify, 'failure'));
  if (report.length === 0) return null;

  const mta = oneLine(input.reportingMta) || 'localhost';
  const queryId = oneLine(input.queryId);
  const now = new Date();
  const boundary = `=_dlp-relay-dsn_${randomBytes(12).toString('hex')}`;

  // --- part 1: for people --------------------------------------------------------------------------
  const human: string[] = [
    `This is the mail system at host ${mta}.`,
    '',
    report.length === 1
      ? 'Your message could not be delivered to one of its recipients: the next mail server refused it.'
      : `Your message could not be delivered to ${report.length} of its recipients: the next mail server refused them.`,
    'Recipients not listed below were not affected by this problem.',
    '',
    `Reference: ${queryId}`,
    `Arrival date: ${rfc5322Date(input.arrivalDate)}`,
    '',
    ...report.flatMap((f) => [`<${oneLine(f.address)}>:`, `    the next mail server replied: ${oneLine(f.response)}`, '']),
    'This notification does not contain the body of your message; its headers are attached.',
  ];
  const humanText = human.join('\r\n') + '\r\n';

  // --- part 2: for programs (RFC 3464 §2) -----------------------------------------------------------
  const perMessage: string[] = [`Reporting-MTA: dns; ${mta}`, `X-DLP-Relay-Query-ID: ${queryId}`];
  if (input.originalEnvelope.envid) perMessage.push(`Original-Envelope-Id: ${xtextIfNeeded(input.originalEnvelope.envid)}`);
  perMessage.push(`Arrival-Date: ${rfc5322Date(input.arrivalDate)}`);
  const perRecipient = report.map((f) => {
    const fields: string[] = [];
    const orcpt = f.orcpt ?? f.original?.orcpt;
    if (orcpt) fields.push(`Original-Recipient: ${typedAddress(orcpt)}`);
    const address = oneLine(f.address);
    // RFC 6533: a non-ASCII address is reported with the utf-8 address type.
    fields.push(`Final-Recipient: ${isAscii(address) ? 'rfc822' : 'utf-8'}; ${address}`);
    fields.push('Action: failed');
    fields.push(`Status: ${statusOf(f.code, f.response)}`);
    fields.push(`Diagnostic-Code: smtp; ${oneLine(f.response).slice(0, 900)}`);
    return fields.join('\r\n');
  });
  const statusText = [perMessage.join('\r\n'), ...perRecipient].join('\r\n\r\n') + '\r\n';
  // RFC 6533: UTF-8 in the status fields needs the "global" media type.
  const statusType = isAscii(statusText) ? 'message/delivery-status' : 'message/global-delivery-status';

  // --- part 3: the original headers -----------------------------------------------------------------
  const headers = canonicalHeaderBlock(input.originalHeaders);
  const headersType = isAsciiBytes(headers) ? 'text/rfc822-headers' : 'message/global-headers';

  const body = Buffer.concat([
    Buffer.from(
      [
        `--${boundary}`,
        'Content-Description: Notification',
        'Content-Type: text/plain; charset=utf-8',
        `Content-Transfer-Encoding: ${isAscii(humanText) ? '7bit' : '8bit'}`,
        '',
        humanText,
      ].join('\r\n'),
      'utf8',
    ),
    Buffer.from([`--${boundary}`, 'Content-Description: Delivery report', `Content-Type: ${statusType}`, '', statusText].join('\r\n'), 'utf8'),
    Buffer.from([`--${boundary}`, 'Content-Description: Undelivered Message Headers', `Content-Type: ${headersType}`, '', ''].join('\r\n'), 'utf8'),
    headers,
    Buffer.from(`\r\n--${boundary}--\r\n`, 'utf8'),
  ]);
  const eightBit = !isAsciiBytes(body) || !isAscii(sender);

  const head = [
    `From: Mail Delivery System <MAILER-DAEMON@${mta}>`,
    `To: <${oneLine(sender)}>`,
    'Subject: Delivery Status Notification (Failure)',
    `Date: ${rfc5322Date(now)}`,
    `Message-ID: <${safeIdPart(queryId)}.${now.getTime()}.${randomBytes(4).toString('hex')}@${mta}>`,
    // RFC 3834: machine-generated, so auto-responders stay quiet.
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${boundary}"`,
    ...(eightBit ? ['Content-Transfer-Encoding: 8bit'] : []),
    '',
    'This is a MIME-encapsulated message.',
    '',
    '',
  ].join('\r\n');
  const message = Buffer.concat([Buffer.from(head, 'utf8'), body]);

  const envelope: OutboundEnvelope = {
    // The null sender: nothing may ever bounce back to us for a DSN.
    from: '',
    to: [{ address: sender }],
    smtpUtf8: !isAscii(sender),
    bodyType: eightBit ? '8bitmime' : '7bit',
    size: message.length,
  };
  return { envelope, message };
}

/** Status from the reply's enhanced code when present, else the class default (RFC 3463 x.0.0). */
function statusOf(code: number, response: string): string {
  const m = /^\d{3}[ -]([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)/.exec(response.trim());
  if (m && Number(m[1]) === Math.floor(code / 100)) return `${m[1]}.${m[2]}.${m[3]}`;
  const cls = Math.floor(code / 100);
  return cls === 4 ? '4.0.0' : '5.0.0';
}

/** "rfc822;user@x" → "rfc822; user@x"; characters outside printable ASCII are xtext-encoded (RFC 3464 §2.1.1). */
function typedAddress(orcpt: string): string {
  const i = orcpt.indexOf(';');
  const type = i > 0 ? orcpt.slice(0, i).trim() : 'rfc822';
  const addr = i > 0 ? orcpt.slice(i + 1).trim() : orcpt.trim();
  return `${type}; ${xtextIfNeeded(addr)}`;
}

function xtextIfNeeded(value: string): string {
  return /^[\x20-\x7e]*$/.test(value) ? value : encodeXText(value);
}

/** Header fields and the text we quote must never break out of their line. */
function oneLine(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
}

function safeIdPart(value: string): string {
  return value.replace(/[^A-Za-z0-9._-]/g, '') || 'dsn';
}

function isAscii(s: string): boolean {
  return /^[\x00-\x7f]*$/.test(s);
}

function isAsciiBytes(b: Buffer): boolean {
  for (const c of b) if (c > 0x7f) return false;
  return true;
}

/** The header block with CRLF line ends and without its terminating blank line, ending in one CRLF. */
function canonicalHeaderBlock(raw: Buffer): Buffer {
  let end = raw.length;
  while (end > 0 && (raw[end - 1] === 0x0a || raw[end - 1] === 0x0d)) end--;
  const out: number[] = [];
  for (let i = 0; i < end; i++) {
    const c = raw[i]!;
    if (c === 0x0a && (i === 0 || raw[i - 1] !== 0x0d)) out.push(0x0d);
    out.push(c);
  }
  out.push(0x0d, 0x0a);
  return Buffer.from(out);
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 date-time in UTC with a numeric zone ("GMT" is only the obsolete form). */
export function rfc5322Date(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}
