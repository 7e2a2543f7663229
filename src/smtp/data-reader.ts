// DATA phase decoder: finds the one true end of data (CRLF.CRLF), removes transparency dots and enforces the size, line-length and bare line-ending limits while streaming.
const CR = 13;
const LF = 10;
const DOT = 46;
/** Marks "no previous byte": the start of the data counts as the start of a line. */
const START = -1;
const CR_BYTE = Buffer.from([CR]);

export type DataViolation = 'size' | 'line' | 'bare';

export interface DataDecoderOptions {
  /** Unstuffed bytes allowed; past it nothing more is emitted and the violation is 'size'. 0 = no limit. */
  maxMessageBytes: number;
  /** Longest line (excluding its line ending) allowed; 0 = no limit. */
  maxLineBytes?: number;
  /** True: any CR not followed by LF or LF not preceded by CR is a violation ('bare'). */
  rejectBareLineEndings?: boolean;
}

export interface DecodeResult {
  /** Unstuffed message bytes from this chunk (views into it where possible), in order. */
  data: Buffer[];
  /** True once the end-of-data terminator has been read. */
  ended: boolean;
  /** Bytes after the terminator (pipelined commands), when it ended inside this chunk. */
  rest: Buffer | null;
}

/**
 * Unstuffing rule: a '.' whose preceding raw byte is CR, LF or the start of data is removed. That is the
 * exact inverse of stuffing that doubles every '.' at those positions, so unstuff(stuff(x)) === x for any
 * bytes. The end of data is only '.' CR LF preceded by CR LF (or at the very start): `\n.\r\n`, `\r.\r\n`
 * and friends are data (SMTP smuggling, CVE-2023-51764). Stuffing never produces that sequence because it
 * doubles the dot, so no message can end early.
 */
export class DataDecoder {
  /** Unstuffed bytes seen so far (counted past the limit too, for the log). */
  bytes = 0;
  /** First limit broken; once set, no more data is emitted but the end is still looked for. */
  violation: DataViolation | null = null;
  ended = false;

  private p1 = START;
  private p2 = START;
  /** 1: a line-start dot after CRLF (or at the start) was dropped; 2: and a CR after it is held back. */
  private dotState: 0 | 1 | 2 = 0;
  private lineLen = 0;
  private readonly maxBytes: number;
  private readonly maxLine: number;
  private readonly rejectBare: boolean;

  constructor(opts: DataDecoderOptions) {
    this.maxBytes = opts.maxMessageBytes;
    this.maxLine = opts.maxLineBytes ?? 0;
    this.rejectBare = opts.rejectBareLineEndings ?? false;
  }

  write(chunk: Buffer): DecodeResult {
    const out: Buffer[] = [];
    if (this.ended) return { data: out, ended: true, rest: chunk.length > 0 ? chunk : null };
    // Output is the input minus dropped dots, so it is emitted as views between them: no copying.
    let seg = 0;
    const flush = (end: number): void => {
      if (this.violation === null && end > seg) out.push(chunk.subarray(seg, end));
    };
    const violate = (kind: DataViolation, at: number): void => {
      if (this.violation !== null) return;
      flush(at);
      this.violation = kind;
    };

    // Where the next CR and LF are: ordinary runs between them are counted in one step (see skipRun).
    let nextCR = -1;
    let nextLF = -1;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.dotState === 0 && b !== CR && b !== LF && this.p1 !== START && this.p1 !== CR && this.p1 !== LF) {
        // Mid-line: nothing but the size and line limits can happen before the next CR or LF, so the whole
        // run up to it is accounted at once instead of byte by byte (most of a message's bytes).
        if (nextCR < i) nextCR = indexOrEnd(chunk, CR, i);
        if (nextLF < i) nextLF = indexOrEnd(chunk, LF, i);
        const end = nextCR < nextLF ? nextCR : nextLF;
        this.countRun(i, end, violate);
        this.p2 = end - i >= 2 ? chunk[end - 2]! : this.p1;
        this.p1 = chunk[end - 1]!;
        i = end - 1;
        continue;
      }
      if (this.rejectBare && ((this.p1 === CR && b !== LF) || (b === LF && this.p1 !== CR))) violate('bare', i);

      if (this.dotState === 2) {
        if (b === LF) {
          this.ended = true;
          return { data: out, ended: true, rest: i + 1 < chunk.length ? chunk.subarray(i + 1) : null };
        }
        // Not the end: the held CR is data after all, and comes before this chunk's pending bytes.
        this.dotState = 0;
        this.count(CR, i, violate);
        if (this.violation === null) out.push(CR_BYTE);
      } else if (this.dotState === 1) {
        if (b === CR) {
          flush(i);
          seg = i + 1;
          this.dotState = 2;
          this.p2 = this.p1;
          this.p1 = CR;
          continue;
        }
        this.dotState = 0;
      }

      if (b === DOT && (this.p1 === START || this.p1 === CR || this.p1 === LF)) {
        flush(i);
        seg = i + 1;
        if (this.p1 === START || (this.p1 === LF && this.p2 === CR)) this.dotState = 1;
        this.p2 = this.p1;
        this.p1 = DOT;
        continue;
      }

      this.count(b, i, violate);
      this.p2 = this.p1;
      this.p1 = b;
    }
    if (this.dotState !== 2) flush(chunk.length);
    return { data: out, ended: false, rest: null };
  }

  /** Accounts the ordinary bytes [from, to) of a line (no CR or LF among them), exactly as count() would one by one. */
  private countRun(from: number, to: number, violate: (kind: DataViolation, at: number) => void): void {
    const n = to - from;
    // The first byte that breaks each limit; the earlier one wins (size on a tie, as in count()).
    const sizeAt = this.maxBytes > 0 && this.bytes + n > this.maxBytes ? from + Math.max(0, this.maxBytes - this.bytes) : to;
    const lineAt = this.maxLine > 0 && this.lineLen + n > this.maxLine ? from + Math.max(0, this.maxLine - this.lineLen) : to;
    if (sizeAt < to && sizeAt <= lineAt) violate('size', sizeAt);
    else if (lineAt < to) violate('line', lineAt);
    this.bytes += n;
    this.lineLen += n;
  }

  /** Accounts one emitted byte against the size and line limits. */
  private count(b: number, at: number, violate: (kind: DataViolation, at: number) => void): void {
    this.bytes++;
    if (this.maxBytes > 0 && this.bytes > this.maxBytes) violate('size', at);
    if (b === CR || b === LF) {
      this.lineLen = 0;
    } else if (this.maxLine > 0 && ++this.lineLen > this.maxLine) {
      violate('line', at);
    }
  }
}

/** Position of the next `byte` at or after `from`, or the chunk's length when there is none. */
function indexOrEnd(chunk: Buffer, byte: number, from: number): number {
  const at = chunk.indexOf(byte, from);
  return at < 0 ? chunk.length : at;
}

/** Client-side transparency matching DataDecoder exactly: doubles every '.' after CR, LF or at the start. */
export function dotStuff(data: Buffer): Buffer {
  let extra = 0;
  let prev = START;
  for (const b of data) {
    if (b === DOT && (prev === START || prev === CR || prev === LF)) extra++;
    prev = b;
  }
  if (extra === 0) return data;
  const out = Buffer.allocUnsafe(data.length + extra);
  let j = 0;
  prev = START;
  for (const b of data) {
    if (b === DOT && (prev === START || prev === CR || prev === LF)) out[j++] = DOT;
    out[j++] = b;
    prev = b;
  }
  return out;
}
