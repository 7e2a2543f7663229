// Byte-level SMTP pieces of the test peer (test/helpers/smtp-peer.ts) and its client: dot-stuffing both ways, the end-of-DATA scan, MAIL/RCPT paths. Shares no code with src/smtp, which it checks.

const DOT = 0x2e;
const CR = 0x0d;
const LF = 0x0a;
const END = Buffer.from('\r\n.\r\n');

/**
 * Where a line starts for dot-stuffing: after LF (so after CRLF and a bare LF) and after a bare CR. The widest
 * reading, the same both ways: whatever a sender stuffed by it comes back byte for byte, and a sender that stuffs
 * only after CRLF never has a dot after a bare CR or LF doubled, so nothing of its bytes is lost either.
 */
function lineStartAt(buf: Buffer, i: number): boolean {
  return i === 0 || buf[i - 1] === LF || buf[i - 1] === CR;
}

/** RFC 5321 4.5.2 sender side: a dot opening a line is doubled. */
export function dotStuff(payload: string | Buffer, opts: { afterBareCr?: boolean } = {}): Buffer {
  const buf = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = buf.indexOf(DOT); i >= 0; i = buf.indexOf(DOT, i + 1)) {
    const start = i === 0 || buf[i - 1] === LF || (opts.afterBareCr === true && buf[i - 1] === CR);
    if (!start) continue;
    parts.push(buf.subarray(from, i + 1));
    from = i; // the dot goes out twice: once closing the part above, once opening the next
  }
  parts.push(buf.subarray(from));
  return Buffer.concat(parts);
}

/** RFC 5321 4.5.2 receiver side: the first dot of a line is dropped (line starts as in lineStartAt). */
export function unstuff(raw: Buffer): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = raw.indexOf(DOT); i >= 0; i = raw.indexOf(DOT, i + 1)) {
    if (!lineStartAt(raw, i)) continue;
    parts.push(raw.subarray(from, i));
    from = i + 1; // a second dot right after follows a dot, not a line start: it stays
  }
  parts.push(raw.subarray(from));
  return Buffer.concat(parts);
}

/**
 * Reads one message after a 354: finds CRLF.CRLF across any chunking (or ".\r\n" right at the start, an empty
 * message) without rescanning what it has seen, and keeps the wire bytes.
 */
export class DataReader {
  private readonly chunks: Buffer[] = [];
  /** Content bytes stored so far (the wire bytes, still stuffed). */
  size = 0;
  /** Up to the last 4 bytes seen; starts as the CRLF that ended the DATA line, so ".\r\n" first is the end too. */
  private tail = Buffer.from('\r\n');

  /**
   * Feeds received bytes. Returns -1 while the message goes on, else the offset in `chunk` where the bytes after
   * the terminator begin (the next command).
   */
  feed(chunk: Buffer): number {
    const window = Buffer.concat([this.tail, chunk]);
    const at = window.indexOf(END);
    if (at < 0) {
      this.store(chunk);
      this.tail = window.subarray(Math.max(0, window.length - 4));
      return -1;
    }
    // The CRLF before the dot belongs to the message; parts of it (or of the terminator) may sit in stored bytes.
    const contentEnd = at + 2 - this.tail.length;
    if (contentEnd >= 0) this.store(chunk.subarray(0, contentEnd));
    else this.trim(-contentEnd);
    return at + END.length - this.tail.length;
  }

  /** The message as on the wire: stuffed, with its last CRLF, without the final ".\r\n". */
  raw(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }

  private store(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.size += b.length;
  }

  private trim(n: number): void {
    const all = this.raw().subarray(0, this.size - n);
    this.chunks.length = 0;
    this.chunks.push(all);
    this.size = all.length;
  }
}

export type PathArgs = Record<string, string | true>;

export interface ParsedPath {
  /** The address between < and > ('' for the null sender); null when the line has no <path>. */
  address: string | null;
  /** ESMTP parameters by upper-cased keyword: the value as written, or true for a bare keyword. */
  args: PathArgs;
}

/** "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME" → { address: 'a@b', args: { SIZE: '10', BODY: '8BITMIME' } }. */
export function parsePath(line: string): ParsedPath {
  const colon = line.indexOf(':');
  const rest = colon < 0 ? '' : line.slice(colon + 1).trim();
  const m = /^<([^<>]*)>(.*)$/.exec(rest);
  if (!m) return { address: null, args: {} };
  const args: PathArgs = {};
  for (const word of m[2]!.trim().split(/\s+/)) {
    if (!word) continue;
    const eq = word.indexOf('=');
    if (eq < 0) args[word.toUpperCase()] = true;
    else args[word.slice(0, eq).toUpperCase()] = word.slice(eq + 1);
  }
  // A source route ("<@relay:user@host>") is accepted and ignored (RFC 5321 appendix C).
  return { address: m[1]!.replace(/^@[^:]+:/, ''), args };
}
