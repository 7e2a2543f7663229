// SMTP reply parsing for the client side: multi-line replies, enhanced status codes, and a strict incremental line reader.

import { DlpError } from '../errors.js';

/** One complete server reply (RFC 5321 §4.2), possibly multi-line. */
export interface Reply {
  code: number;
  /** '2.1.5' when the first line's text starts with an enhanced code whose class matches the basic code. */
  enhanced: string | null;
  /** Text of each line without the "250-"/"250 " prefix (enhanced codes kept). */
  lines: string[];
  /** All lines joined into one line: first line's text, then continuation texts without their codes/enhanced codes. */
  text: string;
  /** "250 2.1.5 Ok" style one-liner for logs. */
  toString(): string;
}

/** RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including the CRLF. */
export const MAX_REPLY_LINE = 512;

/** Continuation lines accepted in one reply (EHLO answers have a few dozen at most). */
export const MAX_REPLY_LINES = 1000;

/** Thrown by parseReply and ReplyReader for bytes that are not a well-formed reply; the client turns it into kind 'protocol'. */
export class ReplySyntaxError extends DlpError {
  readonly errorCode = 'DLP_ERR_REPLY_SYNTAX' as const;
  override name = 'ReplySyntaxError';
}

// First digit outside 2-5 is fatal (§4.2); "ddd" alone is a valid last line.
const LINE = /^([2-5]\d\d)(?:([ -])(.*))?$/s;
const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})(?: +|$)/;

/** Splits off a leading enhanced code whose class digit matches `code`'s first digit. */
function splitEnhanced(code: number, text: string): { enhanced: string | null; rest: string } {
  const m = ENHANCED.exec(text);
  // A class that does not match the reply ("250 5.1.1 ...") is not an enhanced code, just text (RFC 3463 §2).
  if (!m || Number(m[1]) !== Math.floor(code / 100)) return { enhanced: null, rest: text };
  return { enhanced: `${m[1]}.${m[2]}.${m[3]}`, rest: text.slice(m[0].length) };
}

class ParsedReply implements Reply {
  constructor(
    readonly code: number,
    readonly enhanced: string | null,
    readonly lines: string[],
    readonly text: string,
  ) {}
  toString(): string {
    // A bare "250" has no text: no trailing blank in the log line.
    return `${this.code} ${this.enhanced ? this.enhanced + ' ' : ''}${this.text}`.trimEnd();
  }
}

/**
 * Builds a Reply from raw lines as received (without CRLF). Every line must carry the same code;
 * all but the last use "-", the last " " or nothing. Throws ReplySyntaxError otherwise.
 */
export function parseReply(lines: string[]): Reply {
  if (lines.length === 0) throw new ReplySyntaxError('empty reply');
  let code = 0;
  const texts: string[] = [];
  lines.forEach((line, i) => {
    const m = LINE.exec(line);
    if (!m) throw new ReplySyntaxError(`malformed reply line: ${JSON.stringify(line.slice(0, 80))}`);
    const c = Number(m[1]);
    if (i === 0) code = c;
    else if (c !== code) throw new ReplySyntaxError(`reply code changed inside a multi-line reply (${code} then ${c})`);
    const last = i === lines.length - 1;
    if ((m[2] === '-') === last) {
      throw new ReplySyntaxError(last ? 'multi-line reply does not end with "ddd " line' : 'final-style line inside a multi-line reply');
    }
    texts.push(m[3] ?? '');
  });
  const first = splitEnhanced(code, texts[0]!);
  // Continuations usually repeat the enhanced code ("250-2.0.0 a", "250 2.0.0 b"): the one-liner keeps it once.
  const rest = texts.slice(1).map((t) => splitEnhanced(code, t).rest);
  const text = [first.rest, ...rest].filter((t) => t !== '').join(' ');
  return new ParsedReply(code, first.enhanced, texts, text);
}

/**
 * Incremental reader: bytes in, complete replies out. Lines end in LF (a preceding CR is removed; a
 * bare LF from a sloppy server is tolerated since it cannot be ambiguous in this direction). A line
 * over 512 octets, or buffered bytes that exceed that without a line end, throw ReplySyntaxError.
 */
export class ReplyReader {
  private partial: Buffer = Buffer.alloc(0);
  private lines: string[] = [];

  /** Bytes received that do not yet form a complete reply (partial line or unfinished multi-line reply). */
  get buffered(): number {
    return this.partial.length + this.lines.reduce((n, l) => n + l.length + 2, 0);
  }

  push(chunk: Buffer): Reply[] {
    const out: Reply[] = [];
    let buf = this.partial.length ? Buffer.concat([this.partial, chunk]) : chunk;
    for (let nl = buf.indexOf(0x0a); nl !== -1; nl = buf.indexOf(0x0a)) {
      if (nl + 1 > MAX_REPLY_LINE) throw new ReplySyntaxError(`reply line longer than ${MAX_REPLY_LINE} octets`);
      const end = nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl;
      const line = buf.subarray(0, end).toString('utf8');
      buf = buf.subarray(nl + 1);
      this.lines.push(line);
      // A server that never ends its reply must not grow our memory without bound.
      if (this.lines.length > MAX_REPLY_LINES) throw new ReplySyntaxError(`reply longer than ${MAX_REPLY_LINES} lines`);
      // Decide per line, so a malformed line fails at once instead of after a never-coming last line.
      const m = LINE.exec(line);
      if (!m) throw new ReplySyntaxError(`malformed reply line: ${JSON.stringify(line.slice(0, 80))}`);
      if (m[2] !== '-') {
        const lines = this.lines;
        this.lines = [];
        out.push(parseReply(lines));
      }
    }
    if (buf.length >= MAX_REPLY_LINE) throw new ReplySyntaxError(`reply line longer than ${MAX_REPLY_LINE} octets`);
    // Copy: the remainder must not pin the (possibly large) chunk it was cut from.
    this.partial = Buffer.from(buf);
    return out;
  }
}

/** EHLO keywords (upper-cased) → parameter string; the first line is the server's name, not an extension. */
export function parseExtensions(ehlo: Reply): Map<string, string> {
  const exts = new Map<string, string>();
  for (const line of ehlo.lines.slice(1)) {
    const m = /^([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](.*))?$/.exec(line.trim());
    if (!m) continue;
    const key = m[1]!.toUpperCase();
    // Old servers repeat AUTH as "AUTH=LOGIN": the standard line, usually first, wins.
    if (!exts.has(key)) exts.set(key, (m[2] ?? '').trim());
  }
  return exts;
}
