// Byte-level streaming MIME structure scanner: header blocks, delimiters and body bytes of every part, exactly as they are on the wire, under node/depth/header limits.
import { MimeStructureError, decodeEncodedWords, latin1ToText, parseHeaderBlock, parseParameterized } from './headers.js';

export { MimeStructureError };

export interface MimeLimits {
  /** MIME parts per message, nested messages' parts included. */
  maxParts: number;
  /** Nesting depth (multipart in multipart, message in multipart …); the top-level message is depth 0. */
  maxDepth: number;
  /** Bytes of one part's header block. */
  maxHeaderBytes: number;
}

/**
 * Below mailsplit's own limits (1 MB head, its maxChildNodes), so ours always trip first: when one of
 * mailsplit's trips after the input has ended, MailParser swallows the error and never finishes.
 */
export const DEFAULT_MIME_LIMITS: Readonly<MimeLimits> = Object.freeze({ maxParts: 1000, maxDepth: 32, maxHeaderBytes: 256 * 1024 });

export interface PartInfo {
  /** 0 for the first part seen (the top-level message), counting every part in order. */
  index: number;
  depth: number;
  /** Lower-cased "type/subtype"; defaulted as RFC 2045/2046 say when missing. */
  contentType: string;
  boundary: string | null;
  /** Lower-cased disposition ("attachment", "inline") or null. */
  disposition: string | null;
  /** Decoded file name (Content-Disposition filename, else Content-Type name) or null. */
  filename: string | null;
  /** Lower-cased Content-Transfer-Encoding, "7bit" when missing. */
  transferEncoding: string;
  hasContentId: boolean;
  /** The enclosing part's content type (null for the top-level message). */
  parentType: string | null;
  /** The top-level message or the root of a message/rfc822 body: its header block carries the message's own fields. */
  messageRoot: boolean;
}

/** Receives the message in order; concatenating every `raw` and `data` gives back the input exactly. */
export interface MimeScanHandler {
  headers(raw: Buffer, part: PartInfo): void;
  /** Body bytes of `part` (for a multipart: its preamble and epilogue). */
  body(data: Buffer, part: PartInfo): void;
  /** A delimiter line with the line break before it, which belongs to the delimiter (RFC 2046 §5.1.1). */
  delimiter(raw: Buffer, close: boolean): void;
}

export interface ScannerOptions extends Partial<MimeLimits> {
  /**
   * Strict: anything two parsers could read differently (broken header lines, an unterminated or
   * reopened multipart, a delimiter line with trailing text, nested boundaries that prefix each other,
   * duplicate Content-* fields) is an error. Off, only the limits are enforced.
   */
  strict?: boolean;
}

interface OpenPart {
  info: PartInfo;
  closed: boolean;
}

const IDENTITY = new Set(['7bit', '8bit', 'binary']);
/** A line we have not seen the end of yet is passed on as body once it is this long (a delimiter line is never). */
const MAX_HELD_LINE = 8192;
const EMPTY = Buffer.alloc(0);
const NL_DASHES = Buffer.from('\n--', 'latin1');

export class MimeScanner {
  private readonly limits: MimeLimits;
  private readonly strict: boolean;
  private readonly stack: OpenPart[] = [];
  private mode: 'headers' | 'body' = 'headers';
  private headerChunks: Buffer[] = [];
  private headerBytes = 0;
  private pending: Buffer = EMPTY;
  /** The line break after the last body line: it belongs to a delimiter if one follows. */
  private pendingEol: Buffer = EMPTY;
  private midLine = false;
  private parts = 0;
  private ended = false;

  constructor(
    private readonly handler: MimeScanHandler,
    opts: ScannerOptions = {},
  ) {
    this.limits = {
      maxParts: opts.maxParts ?? DEFAULT_MIME_LIMITS.maxParts,
      maxDepth: opts.maxDepth ?? DEFAULT_MIME_LIMITS.maxDepth,
      maxHeaderBytes: opts.maxHeaderBytes ?? DEFAULT_MIME_LIMITS.maxHeaderBytes,
    };
    this.strict = opts.strict ?? true;
  }

  /** Parts seen so far. */
  get partCount(): number {
    return this.parts;
  }

  /** Feeds bytes; throws MimeStructureError on the first violation (the scanner is then unusable). */
  write(chunk: Buffer): void {
    if (this.ended) throw new Error('write after end');
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let start = 0;
    for (;;) {
      if (this.mode === 'body' && !this.midLine && !(buf[start] === 0x2d && buf[start + 1] === 0x2d)) {
        // Fast path: every complete line up to the next one starting with "--" is body, passed on in one piece.
        const dash = buf.indexOf(NL_DASHES, start);
        const runEnd = dash >= 0 ? dash + 1 : buf.lastIndexOf(0x0a) + 1;
        if (runEnd > start) {
          this.bodyRun(buf.subarray(start, runEnd));
          start = runEnd;
          continue;
        }
      }
      const lf = buf.indexOf(0x0a, start);
      if (lf < 0) break;
      this.line(buf.subarray(start, lf + 1), true);
      start = lf + 1;
    }
    buf = buf.subarray(start);
    if (this.mode === 'headers') {
      if (this.headerBytes + buf.length > this.limits.maxHeaderBytes)
        this.fail('header-too-large', `a header block exceeds ${this.limits.maxHeaderBytes} bytes`);
    } else if (buf.length > MAX_HELD_LINE) {
      this.line(buf, false);
      buf = EMPTY;
    }
    // Copy: the caller may reuse its chunk, and a subarray would pin the whole chunk in memory.
    this.pending = buf.length ? Buffer.from(buf) : EMPTY;
  }

  /** Input is over: flushes what is held and checks every multipart was closed. */
  end(): void {
    if (this.ended) return;
    if (this.pending.length) {
      const rest = this.pending;
      this.pending = EMPTY;
      this.line(rest, false);
    }
    if (this.mode === 'headers' && this.headerChunks.length) this.finishHeaders();
    if (this.pendingEol.length) this.handler.body(this.pendingEol, this.top().info);
    this.pendingEol = EMPTY;
    this.ended = true;
    if (this.strict) {
      const open = this.stack.find((p) => p.info.boundary !== null && !p.closed);
      if (open) this.fail('unterminated-multipart', `multipart part ${open.info.index} (${open.info.contentType}) has no closing delimiter`);
    }
    if (this.parts === 0) this.fail('empty-message', 'no message');
  }

  private fail(reason: string, message: string): never {
    this.ended = true;
    throw new MimeStructureError(reason, message);
  }

  private top(): OpenPart {
    const p = this.stack[this.stack.length - 1];
    if (!p) throw new Error('no open part');
    return p;
  }

  /** Complete body lines, none of them a delimiter candidate. */
  private bodyRun(run: Buffer): void {
    const eolLen = run.length >= 2 && run[run.length - 2] === 0x0d ? 2 : 1;
    const part = this.top().info;
    if (this.pendingEol.length) this.handler.body(this.pendingEol, part);
    if (run.length > eolLen) this.handler.body(run.subarray(0, run.length - eolLen), part);
    this.pendingEol = Buffer.from(run.subarray(run.length - eolLen));
  }

  /** One line (with its LF when complete), or a long piece of one (complete=false). */
  private line(line: Buffer, complete: boolean): void {
    if (this.mode === 'headers') {
      this.headerBytes += line.length;
      if (this.headerBytes > this.limits.maxHeaderBytes) this.fail('header-too-large', `a header block exceeds ${this.limits.maxHeaderBytes} bytes`);
      this.headerChunks.push(Buffer.from(line));
      if (complete && (line.length === 1 || (line.length === 2 && line[0] === 0x0d))) this.finishHeaders();
      return;
    }
    const atStart = !this.midLine;
    this.midLine = !complete;
    const eolLen = complete ? (line.length >= 2 && line[line.length - 2] === 0x0d ? 2 : 1) : 0;
    const content = line.subarray(0, line.length - eolLen);
    if (atStart && content.length >= 2 && content[0] === 0x2d && content[1] === 0x2d && this.delimiter(line, content, complete)) return;
    const part = this.top().info;
    if (this.pendingEol.length) this.handler.body(this.pendingEol, part);
    if (content.length) this.handler.body(Buffer.from(content), part);
    this.pendingEol = eolLen ? Buffer.from(line.subarray(line.length - eolLen)) : EMPTY;
  }

  /** Handles `line` when it is a delimiter of an open multipart; false when it is body text. */
  private delimiter(line: Buffer, content: Buffer, complete: boolean): boolean {
    const text = content.toString('latin1');
    let prefixOf = -1;
    for (let i = this.stack.length - 1; i >= 0; i--) {
      const b = (this.stack[i] as OpenPart).info.boundary;
      if (b === null || !text.startsWith(`--${b}`)) continue;
      let rest = text.slice(b.length + 2);
      const close = rest.startsWith('--');
      if (close) rest = rest.slice(2);
      if (/^[ \t]*$/.test(rest) && complete) {
        this.openDelimiter(i, line, close);
        return true;
      }
      if (prefixOf < 0) prefixOf = i;
    }
    if (prefixOf >= 0 && this.strict)
      this.fail('ambiguous-delimiter', `a line starts with the delimiter of part ${(this.stack[prefixOf] as OpenPart).info.index} but carries more text`);
    return false;
  }

  private openDelimiter(i: number, line: Buffer, close: boolean): void {
    const owner = this.stack[i] as OpenPart;
    // Parts deeper than the owner end here; a multipart among them that never closed is a shape parsers disagree on.
    while (this.stack.length > i + 1) {
      const p = this.stack.pop() as OpenPart;
      if (this.strict && p.info.boundary !== null && !p.closed)
        this.fail('unterminated-multipart', `multipart part ${p.info.index} ends without its closing delimiter`);
    }
    if (this.strict && owner.closed) this.fail('delimiter-after-close', `part ${owner.info.index} has a delimiter after its closing one`);
    this.handler.delimiter(this.pendingEol.length ? Buffer.concat([this.pendingEol, line]) : Buffer.from(line), close);
    this.pendingEol = EMPTY;
    if (close) {
      owner.closed = true;
      this.mode = 'body';
    } else this.mode = 'headers';
  }

  private finishHeaders(): void {
    const raw = Buffer.concat(this.headerChunks);
    this.headerChunks = [];
    this.headerBytes = 0;
    const parent = this.stack[this.stack.length - 1];
    if (++this.parts > this.limits.maxParts) this.fail('too-many-parts', `more than ${this.limits.maxParts} MIME parts`);
    const depth = parent ? parent.info.depth + 1 : 0;
    if (depth > this.limits.maxDepth) this.fail('too-deep', `MIME nesting deeper than ${this.limits.maxDepth}`);
    const info = this.describe(raw, parent?.info ?? null, depth);
    this.stack.push({ info, closed: false });
    this.handler.headers(raw, info);
    this.pendingEol = EMPTY;
    this.midLine = false;
    // A message/rfc822 body in an identity encoding is a message: its own header block comes next.
    this.mode = info.contentType === 'message/rfc822' && IDENTITY.has(info.transferEncoding) ? 'headers' : 'body';
  }

  private describe(raw: Buffer, parent: PartInfo | null, depth: number): PartInfo {
    const fields = parseHeaderBlock(raw, this.strict);
    const one = (name: string): string | null => {
      const all = fields.filter((f) => f.name === name);
      if (all.length > 1 && this.strict) this.fail('duplicate-header', `a part has ${all.length} ${name} fields`);
      return all[0]?.value ?? null;
    };
    const ctRaw = one('content-type');
    const ct = ctRaw !== null ? parseParameterized(ctRaw) : null;
    let contentType = ct && /^[\w.+-]+\/[\w.+-]+$/.test(ct.value) ? ct.value : parent?.contentType === 'multipart/digest' ? 'message/rfc822' : 'text/plain';
    if (ct && contentType !== ct.value && this.strict && ctRaw?.trim())
      this.fail('broken-content-type', `unreadable Content-Type ${JSON.stringify(ctRaw.slice(0, 60))}`);
    let boundary: string | null = null;
    if (contentType.startsWith('multipart/')) {
      boundary = ct?.params.get('boundary') ?? null;
      if (boundary === null || boundary.length === 0 || boundary.length > 200) {
        if (this.strict) this.fail('missing-boundary', `part ${this.parts - 1} is ${contentType} without a usable boundary`);
        // Lenient parsers read such a part as opaque data; so do we.
        contentType = 'application/octet-stream';
        boundary = null;
      } else if (this.strict) {
        for (const p of this.stack) {
          const b = p.info.boundary;
          if (b !== null && (b.startsWith(boundary) || boundary.startsWith(b)))
            this.fail('ambiguous-boundary', 'a nested boundary is a prefix of an enclosing one');
        }
      }
    }
    const cd = one('content-disposition');
    const disp = cd !== null ? parseParameterized(cd) : null;
    const name = disp?.params.get('filename') ?? ct?.params.get('name') ?? null;
    return {
      index: this.parts - 1,
      depth,
      contentType,
      boundary,
      disposition: disp?.value || null,
      filename: name === null ? null : latin1ToText(decodeEncodedWords(name)),
      transferEncoding: (one('content-transfer-encoding') ?? '7bit').trim().toLowerCase() || '7bit',
      hasContentId: one('content-id') !== null,
      parentType: parent?.contentType ?? null,
      messageRoot: parent === null || parent.contentType === 'message/rfc822',
    };
  }
}
