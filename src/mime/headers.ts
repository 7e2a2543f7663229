// Parsing of the few MIME header fields the structure scanner needs (Content-Type, -Disposition, -Transfer-Encoding, -ID), with RFC 2231 and RFC 2047 names.
import { TextDecoder } from 'node:util';

export class MimeStructureError extends Error {
  constructor(
    /** Short machine-readable reason: it becomes the quarantine reason and a log field. */
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'MimeStructureError';
  }
}

export interface HeaderField {
  /** Lower-cased field name. */
  name: string;
  /** Unfolded value, latin1-decoded (8-bit bytes survive one to one). */
  value: string;
}

/**
 * Splits a raw header block (up to and including the blank line) into fields. A line that is neither a
 * field nor a continuation is "broken": parsers disagree on what it means (some end the header there,
 * some skip it), so in strict mode it is an error rather than a guess.
 */
export function parseHeaderBlock(raw: Buffer, strict: boolean): HeaderField[] {
  const text = raw.toString('latin1');
  const lines = text.split(/\r?\n/);
  const fields: HeaderField[] = [];
  for (const line of lines) {
    if (line === '') continue;
    if (line[0] === ' ' || line[0] === '\t') {
      const last = fields[fields.length - 1];
      if (last) last.value += ` ${line.trim()}`;
      else if (strict) throw new MimeStructureError('broken-header', 'header block starts with a continuation line');
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0 || !/^[\x21-\x39\x3b-\x7e]+[ \t]*$/.test(line.slice(0, colon))) {
      if (strict) throw new MimeStructureError('broken-header', `header line without a field name: ${JSON.stringify(line.slice(0, 60))}`);
      continue;
    }
    fields.push({ name: line.slice(0, colon).trim().toLowerCase(), value: line.slice(colon + 1).trim() });
  }
  return fields;
}

export interface ParsedValue {
  /** Lower-cased main value ("multipart/mixed", "attachment"). */
  value: string;
  /** Lower-cased parameter names; RFC 2231 continuations joined and decoded. */
  params: Map<string, string>;
}

/** `value; a=b; c="d; e"` → value and parameters. Tolerant: a parameter it cannot read is skipped. */
export function parseParameterized(input: string): ParsedValue {
  let i = input.indexOf(';');
  const value = (i < 0 ? input : input.slice(0, i)).trim().toLowerCase();
  const raw = new Map<string, string>();
  while (i >= 0 && i < input.length) {
    i++;
    const eq = input.indexOf('=', i);
    if (eq < 0) break;
    const name = input.slice(i, eq).trim().toLowerCase();
    let j = eq + 1;
    while (input[j] === ' ' || input[j] === '\t') j++;
    let val = '';
    if (input[j] === '"') {
      j++;
      while (j < input.length && input[j] !== '"') {
        if (input[j] === '\\' && j + 1 < input.length) j++;
        val += input[j] ?? '';
        j++;
      }
      i = input.indexOf(';', j);
    } else {
      const end = input.indexOf(';', j);
      val = (end < 0 ? input.slice(j) : input.slice(j, end)).trim();
      i = end;
    }
    if (name && !raw.has(name)) raw.set(name, val);
  }
  return { value, params: joinRfc2231(raw) };
}

/** RFC 2231: name*0*=utf-8''a%20b; name*1=c → name = "a bc"; name*=… likewise. */
function joinRfc2231(raw: Map<string, string>): Map<string, string> {
  const out = new Map<string, string>();
  const pieces = new Map<string, Array<{ n: number; v: string; enc: boolean }>>();
  for (const [k, v] of raw) {
    const m = /^([^*]+)\*(?:(\d{1,3})\*?|)$/.exec(k);
    const star = k.endsWith('*');
    if (!m || !k.includes('*')) {
      out.set(k, v);
      continue;
    }
    const base = m[1] as string;
    const list = pieces.get(base) ?? [];
    list.push({ n: m[2] === undefined ? 0 : Number(m[2]), v, enc: star });
    pieces.set(base, list);
  }
  for (const [base, list] of pieces) {
    list.sort((a, b) => a.n - b.n);
    let charset = 'utf-8';
    const bytes: number[] = [];
    for (const [idx, p] of list.entries()) {
      let v = p.v;
      if (p.enc && idx === 0) {
        const q = /^([^']*)'[^']*'(.*)$/.exec(v);
        if (q) {
          charset = q[1] || 'utf-8';
          v = q[2] as string;
        }
      }
      if (p.enc) {
        for (let k = 0; k < v.length; k++) {
          if (v[k] === '%' && /^[0-9a-f]{2}$/i.test(v.slice(k + 1, k + 3))) {
            bytes.push(parseInt(v.slice(k + 1, k + 3), 16));
            k += 2;
          } else bytes.push(v.charCodeAt(k) & 0xff);
        }
      } else for (let k = 0; k < v.length; k++) bytes.push(v.charCodeAt(k) & 0xff);
    }
    out.set(base, decodeBytes(Buffer.from(bytes), charset));
  }
  return out;
}

function decodeBytes(buf: Buffer, charset: string): string {
  try {
    return new TextDecoder(charset.trim().toLowerCase() || 'utf-8').decode(buf);
  } catch {
    return buf.toString('latin1');
  }
}

/** RFC 2047 encoded words (=?charset?B|Q?…?=) decoded; anything else left as it is. */
export function decodeEncodedWords(s: string): string {
  return s
    .replace(/(=\?[^?\s]+\?[bq]\?[^?\s]*\?=)\s+(?==\?[^?\s]+\?[bq]\?[^?\s]*\?=)/gi, '$1')
    .replace(/=\?([^?\s]+)\?([bq])\?([^?\s]*)\?=/gi, (whole, charset: string, enc: string, text: string) => {
      const cs = charset.split('*')[0] ?? 'utf-8';
      if (enc.toLowerCase() === 'b') return decodeBytes(Buffer.from(text, 'base64'), cs);
      const bytes: number[] = [];
      for (let k = 0; k < text.length; k++) {
        const c = text[k] as string;
        if (c === '_') bytes.push(0x20);
        else if (c === '=' && /^[0-9a-f]{2}$/i.test(text.slice(k + 1, k + 3))) {
          bytes.push(parseInt(text.slice(k + 1, k + 3), 16));
          k += 2;
        } else bytes.push(c.charCodeAt(0) & 0xff);
      }
      return bytes.length || whole === '' ? decodeBytes(Buffer.from(bytes), cs) : '';
    });
}

/** 8-bit header bytes read as latin1 back to UTF-8 text when they are valid UTF-8 (common in the wild). */
export function latin1ToText(s: string): string {
  if (!/[\x80-\xff]/.test(s)) return s;
  const buf = Buffer.from(s, 'latin1');
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(buf);
  } catch {
    return s;
  }
}
