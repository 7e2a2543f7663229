// Command-line parsing for the SMTP engine: verb/argument split, MAIL FROM / RCPT TO paths and ESMTP parameters, and reply formatting.
import { catalogueReply, type SmtpReply } from '../errors.js';
import { decodeXText, type EsmtpParam } from './envelope.js';
import type { MailFromCommand, RcptToCommand } from './types.js';

/** Writes a reply as wire lines: `code-...` continuation lines, then `code ...`; the enhanced code on every line. */
export function formatReplyLines(reply: SmtpReply, enhanced = true): string {
  const prefix = enhanced && reply.enhanced ? `${reply.enhanced} ` : '';
  // One line, the usual case: no regex and no split on the per-command path.
  if (!reply.text.includes('\n') && !reply.text.includes('\r')) return `${reply.code} ${prefix}${reply.text}\r\n`;
  // CR is stripped so a text can never break the reply framing.
  const lines = reply.text.replace(/\r/g, '').split('\n');
  let out = '';
  for (let i = 0; i < lines.length; i++) out += `${reply.code}${i === lines.length - 1 ? ' ' : '-'}${prefix}${lines[i]}\r\n`;
  return out;
}

export function isPositive(reply: SmtpReply): boolean {
  return reply.code >= 200 && reply.code < 300;
}

/** 'mail FROM:<a@b>' → { verb: 'MAIL', arg: 'FROM:<a@b>' }. */
export function splitCommand(line: string): { verb: string; arg: string } {
  const sp = line.indexOf(' ');
  if (sp < 0) return { verb: line.toUpperCase(), arg: '' };
  return { verb: line.slice(0, sp).toUpperCase(), arg: line.slice(sp + 1).trim() };
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; reply: SmtpReply };

export interface ParamContext {
  dsn: boolean;
  /** 0 = no limit. */
  maxMessageBytes: number;
  /** AUTH is on offer in this session: then MAIL may carry AUTH=<mailbox> (RFC 4954 5), kept verbatim. */
  authOffered: boolean;
}

const fail = (code: Parameters<typeof catalogueReply>[0]): { ok: false; reply: SmtpReply } => ({ ok: false, reply: catalogueReply(code) });

/** RFC 5321 path limit, angle brackets included, in octets. */
const MAX_PATH = 256;
// Printable, no specials; non-ASCII allowed here and checked against SMTPUTF8 separately.
const ATOMS = /^[^\x00-\x20\x7f@"<>()[\]\\,;:]+$/;
const QUOTED = /^"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"$/;
const LITERAL = /^\[[^\x00-\x20\x7f[\]\\]+\]$/;
// esmtp-keyword and esmtp-value (RFC 5321 4.1.2); values may hold UTF-8 under SMTPUTF8.
const PARAM = /^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([^\x00-\x20\x7f=]+))?$/;
const XTEXT = /^(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*$/;

/**
 * Splits `<path> params` off after the "FROM:"/"TO:" keyword. One space after the colon is tolerated
 * (common client habit); the path ends at the first '>' outside a quoted local part.
 */
function splitPath(arg: string, keyword: 'FROM:' | 'TO:'): { path: string; rest: string } | null {
  if (arg.slice(0, keyword.length).toUpperCase() !== keyword) return null;
  let s = arg.slice(keyword.length);
  if (s.startsWith(' ')) s = s.slice(1);
  if (!s.startsWith('<')) return null;
  let quoted = false;
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (quoted && c === '\\') i++;
    else if (c === '"') quoted = !quoted;
    else if (c === '>' && !quoted) {
      const rest = s.slice(i + 1);
      if (rest !== '' && !rest.startsWith(' ')) return null;
      return { path: s.slice(1, i), rest };
    }
  }
  return null;
}

/** Validates a mailbox (already without <>); `null sender` and `postmaster` are the callers' business. */
function checkMailbox(path: string, smtpUtf8: boolean, allowPostmaster: boolean): Parsed<string> {
  if (Buffer.byteLength(path, 'utf8') + 2 > MAX_PATH) return fail('PATH_TOO_LONG');
  // A source route (<@a,@b:user@c>) is obsolete; RFC 5321 C says accept and ignore it.
  const addr = path.replace(/^@[^:]*:/, '');
  if (/[^\x00-\x7f]/.test(addr) && !smtpUtf8) return fail('UTF8_ADDRESS');
  if (allowPostmaster && addr.toLowerCase() === 'postmaster') return { ok: true, value: addr };
  const at = addr.lastIndexOf('@');
  if (at <= 0) return fail('BAD_ADDRESS');
  const local = addr.slice(0, at);
  const domain = addr.slice(at + 1);
  const localOk = QUOTED.test(local) || (ATOMS.test(local.replace(/\./g, 'a')) && !/^\.|\.\.|\.$/.test(local));
  const domainOk = LITERAL.test(domain) || (ATOMS.test(domain) && !/^\.|\.\.|\.$/.test(domain));
  if (!localOk || !domainOk) return fail('BAD_ADDRESS');
  return { ok: true, value: addr };
}

/** Splits the parameters; keywords upper-cased, values verbatim, duplicates refused. */
function splitParams(rest: string): Parsed<EsmtpParam[]> {
  const out: EsmtpParam[] = [];
  const seen = new Set<string>();
  for (const tok of rest.split(' ')) {
    if (tok === '') continue;
    const m = PARAM.exec(tok);
    if (!m) return fail('PARAM_SYNTAX');
    const key = m[1]!.toUpperCase();
    if (seen.has(key)) return fail('PARAM_SYNTAX');
    seen.add(key);
    out.push([key, m[2] ?? null]);
  }
  return { ok: true, value: out };
}

export function parseMailFrom(arg: string, ctx: ParamContext): Parsed<MailFromCommand> {
  const split = splitPath(arg, 'FROM:');
  if (!split) return fail('SYNTAX');
  const params = splitParams(split.rest);
  if (!params.ok) return params;
  const mail: MailFromCommand = { address: '', params: params.value, smtpUtf8: false };
  let size: number | undefined;
  for (const [key, value] of params.value) {
    switch (key) {
      case 'SIZE':
        if (value === null || !/^\d{1,20}$/.test(value)) return fail('PARAM_SYNTAX');
        size = Number(value);
        mail.size = size;
        break;
      case 'BODY': {
        const v = value?.toUpperCase();
        if (v === '7BIT') mail.bodyType = '7bit';
        else if (v === '8BITMIME') mail.bodyType = '8bitmime';
        else if (v === 'BINARYMIME')
          return fail('PARAM_UNKNOWN'); // never offered: no BDAT
        else return fail('PARAM_SYNTAX');
        break;
      }
      case 'SMTPUTF8':
        if (value !== null) return fail('PARAM_SYNTAX');
        mail.smtpUtf8 = true;
        break;
      case 'RET': {
        if (!ctx.dsn) return fail('PARAM_UNKNOWN');
        const v = value?.toUpperCase();
        if (v !== 'FULL' && v !== 'HDRS') return fail('PARAM_SYNTAX');
        mail.ret = v;
        break;
      }
      case 'ENVID':
        if (!ctx.dsn) return fail('PARAM_UNKNOWN');
        if (value === null || value.length > 100 || !XTEXT.test(value)) return fail('PARAM_SYNTAX');
        mail.envid = decodeXText(value);
        break;
      case 'AUTH':
        if (!ctx.authOffered) return fail('PARAM_UNKNOWN');
        if (value === null || !XTEXT.test(value)) return fail('PARAM_SYNTAX');
        break;
      default:
        return fail('PARAM_UNKNOWN');
    }
  }
  if (split.path !== '') {
    const addr = checkMailbox(split.path, mail.smtpUtf8, false);
    if (!addr.ok) return addr;
    mail.address = addr.value;
  }
  // Last: a well-formed MAIL that is only too big gets the size reply (552), not a syntax one.
  if (size !== undefined && ctx.maxMessageBytes > 0 && size > ctx.maxMessageBytes) return fail('SIZE_EXCEEDED');
  return { ok: true, value: mail };
}

const NOTIFY_VALUES = new Set(['SUCCESS', 'FAILURE', 'DELAY']);

/** `smtpUtf8`: the transaction's MAIL carried SMTPUTF8 (non-ASCII recipients need it too). */
export function parseRcptTo(arg: string, ctx: ParamContext, smtpUtf8: boolean): Parsed<RcptToCommand> {
  const split = splitPath(arg, 'TO:');
  if (!split) return fail('SYNTAX');
  const params = splitParams(split.rest);
  if (!params.ok) return params;
  const rcpt: RcptToCommand = { address: '', params: params.value };
  for (const [key, value] of params.value) {
    switch (key) {
      case 'NOTIFY': {
        if (!ctx.dsn) return fail('PARAM_UNKNOWN');
        const list = (value ?? '').toUpperCase().split(',');
        const ok = list.length === 1 && list[0] === 'NEVER' ? true : list.every((v) => NOTIFY_VALUES.has(v)) && new Set(list).size === list.length;
        if (value === null || !ok) return fail('PARAM_SYNTAX');
        rcpt.notify = list;
        break;
      }
      case 'ORCPT': {
        if (!ctx.dsn) return fail('PARAM_UNKNOWN');
        const semi = value?.indexOf(';') ?? -1;
        if (value === null || value.length > 500 || semi <= 0 || !/^[A-Za-z0-9-]+$/.test(value.slice(0, semi)) || !XTEXT.test(value.slice(semi + 1))) {
          return fail('PARAM_SYNTAX');
        }
        rcpt.orcpt = decodeXText(value);
        break;
      }
      default:
        return fail('PARAM_UNKNOWN');
    }
  }
  if (split.path === '') return fail('BAD_ADDRESS');
  const addr = checkMailbox(split.path, smtpUtf8, true);
  if (!addr.ok) return addr;
  rcpt.address = addr.value;
  return { ok: true, value: rcpt };
}

/** Strict base64 (RFC 4648, padding required) to bytes; null when it is not. */
export function decodeBase64(s: string): Buffer | null {
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return null;
  return Buffer.from(s, 'base64');
}
