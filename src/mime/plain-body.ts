// Spares mailparser the body of the commonest message shape (a top-level text part with no Content-* field): the body is kept here and decoded exactly as mailparser would decode it, instead of walked line by line.
import { Writable } from 'node:stream';
import type { MessageText } from 'mailparser';

/**
 * Why this is worth a module: mailsplit (under MailParser) handles a body one line at a time with a
 * setImmediate per line, then MailParser copies it through a decoder and builds an HTML rendering of it
 * (`textAsHtml`) nobody here reads. For a 10 KiB body that is most of the CPU a scan costs.
 *
 * When it is exact: mailsplit takes a header field's name as the text before its first ':' (trimmed,
 * lower-cased), so a header block that holds no "content-" (ASCII case-insensitive) anywhere has no
 * Content-Type, Content-Transfer-Encoding or Content-Disposition field. Such a top-level node is
 * text/plain, inline, with no boundary, no charset (MailParser then takes utf-8 and skips its charset
 * decoder), no format=flowed and an identity transfer encoding. For that node mailsplit passes every byte
 * after the header block's blank line to the body (the root keeps its last line break, it has no parent
 * boundary to give it to), and MailParser's text is `Buffer.concat(body).toString()` with CRLF/LF turned
 * into LF, and it has no HTML. That is what `textItem()` returns. MailParser still parses the header
 * block (it gets the same bytes up to and including the blank line, then its end), so the `headers`
 * event is unchanged. Any other header block sends every byte on to MailParser as before.
 */
const CONTENT_FIELD = /content-/i;
/**
 * One header field line MailParser would hand over unchanged: a name without spaces or controls, printable
 * ASCII after the colon, CRLF or LF. A block of only such lines has no folding, no mbox "From " line and
 * no 8-bit bytes; with no "=?" in a Subject either, MailParser's Subject is the field's value trimmed
 * (decodeHeader trims, decodeWords finds no encoded word, latin1 → UTF-8 changes no ASCII byte), the last
 * non-empty one when there are several (Subject is one of its single-value keys, and it drops empty values).
 */
const SIMPLE_FIELD = /([\x21-\x39\x3b-\x7e]+):([\x20-\x7e]*)\r?\n/y;

/** What MailParser's headers would give the engine for a simple header block: its Subject; null when the block is not simple. */
export function simpleHeaderSubject(fields: string): { subject: string | undefined } | null {
  let subject: string | undefined;
  SIMPLE_FIELD.lastIndex = 0;
  while (SIMPLE_FIELD.lastIndex < fields.length) {
    const m = SIMPLE_FIELD.exec(fields);
    if (!m) return null;
    if (m[1]!.toLowerCase() !== 'subject') continue;
    const value = m[2]!.trim();
    if (value.includes('=?')) return null;
    if (value) subject = value;
  }
  return { subject };
}

/** A header block still without its blank line past this size is left to MailParser (the walk's header limit trips well before). */
const MAX_HELD_HEAD = 1024 * 1024;

export class PlainBodySplitter extends Writable {
  /** null until the header block has ended; then true when the body is kept here, false when MailParser gets it. */
  diverted: boolean | null = null;
  private head: Buffer = Buffer.alloc(0);
  /** Start of the header line not yet known to be complete. */
  private lineStart = 0;
  private readonly body: Buffer[] = [];
  private bodyBytes = 0;
  private settle: (headOnly: { subject: string | undefined } | null) => void = () => {};
  /**
   * Settles once the header block has ended (or the stream has): with the Subject when the block is simple
   * and `skipParser` allows it, MailParser then getting nothing at all; with null when MailParser has it.
   */
  readonly decided = new Promise<{ subject: string | undefined } | null>((resolve) => (this.settle = resolve));

  constructor(
    /** MailParser, made on first use by the walk. */
    private readonly parser: () => Writable,
    private readonly skipParser: boolean,
  ) {
    super();
  }

  /** MailParser's text item for the kept body (call once the splitter has finished). */
  textItem(): MessageText {
    // replaceAll of CRLF is MailParser's /\r?\n/ → LF (a bare LF becomes itself), without the regex.
    const text = Buffer.concat(this.body, this.bodyBytes).toString().replaceAll('\r\n', '\n');
    // MailParser sets `text` only for a non-empty text and `html` only when an HTML part exists.
    return text ? { type: 'text', text } : { type: 'text' };
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.diverted === true) {
      this.keep(chunk);
      return cb();
    }
    if (this.diverted === false) return this.forward(chunk, cb);
    this.head = this.head.length ? Buffer.concat([this.head, chunk]) : chunk;
    const end = this.headEnd();
    if (end < 0) {
      if (this.head.length <= MAX_HELD_HEAD) return cb();
      this.diverted = false;
      this.settle(null);
      return this.forward(this.takeHead(this.head.length), cb);
    }
    const fieldsEnd = this.lineStart;
    const head = this.takeHead(end);
    const rest = this.head;
    this.head = Buffer.alloc(0);
    const text = head.toString('latin1');
    if (CONTENT_FIELD.test(text)) {
      this.diverted = false;
      this.settle(null);
      return this.forward(rest.length ? Buffer.concat([head, rest]) : head, cb);
    }
    this.diverted = true;
    this.keep(rest);
    const headOnly = this.skipParser ? simpleHeaderSubject(text.slice(0, fieldsEnd)) : null;
    if (!headOnly) this.toParser(head, true);
    this.settle(headOnly);
    cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    // No blank line at all: every byte is header for mailsplit too, so MailParser gets them all.
    if (this.diverted === null) {
      this.diverted = false;
      this.settle(null);
      if (this.head.length) this.toParser(this.takeHead(this.head.length), false);
    }
    if (!this.diverted) this.toParser(null, true);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.settle(null);
    cb(err);
  }

  /** Offset just past mailsplit's end of the header block (the first line that is exactly LF or CRLF), or -1 when not seen yet. */
  private headEnd(): number {
    const buf = this.head;
    for (;;) {
      const p = this.lineStart;
      if (p >= buf.length) return -1;
      if (buf[p] === 0x0a) return p + 1;
      if (buf[p] === 0x0d) {
        if (p + 1 >= buf.length) return -1;
        if (buf[p + 1] === 0x0a) return p + 2;
      }
      const lf = buf.indexOf(0x0a, p);
      if (lf < 0) return -1;
      this.lineStart = lf + 1;
    }
  }

  /** The first `n` held bytes; the rest stays held. */
  private takeHead(n: number): Buffer {
    const out = this.head.subarray(0, n);
    this.head = this.head.subarray(n);
    return out;
  }

  private keep(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.body.push(chunk);
    this.bodyBytes += chunk.length;
  }

  /** Writes to MailParser, or ends it; a parser destroyed by the walk's stop() takes nothing more (the walk is ending anyway). */
  private toParser(chunk: Buffer | null, end: boolean): boolean {
    const parser = this.parser();
    if (parser.destroyed) return true;
    if (end) {
      if (chunk) parser.end(chunk);
      else parser.end();
      return true;
    }
    return chunk ? parser.write(chunk) : true;
  }

  private forward(chunk: Buffer, cb: (err?: Error | null) => void): void {
    if (this.toParser(chunk, false)) return cb();
    const parser = this.parser();
    const onDrain = (): void => {
      parser.off('close', onDrain);
      parser.off('drain', onDrain);
      cb();
    };
    parser.on('drain', onDrain);
    parser.on('close', onDrain);
  }
}
