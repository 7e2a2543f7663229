// Spools one message's DATA into a private temp file while hashing it (MD5, sent to UCWI; the quarantine measures its own SHA-256 of what it stores) and indexing its header block; never holds the message in memory.
import { createHash } from 'node:crypto';
import { closeSync, read, readSync, writev, writevSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { createSpoolFile, discardSync, type SpoolFilePool } from './file-pool.js';

// Callers import these from here, where they were first defined.
export { prepareSpoolDir, SpoolFilePool } from './file-pool.js';

/** One header field as found in the spooled bytes: where it starts and ends (end exclusive, line break included). */
export interface HeaderField {
  /** Lower-cased field name. */
  name: string;
  start: number;
  end: number;
  /** Unfolded value, at most VALUE_CAP characters; enough for Subject/Message-ID/loop checks. */
  value: string;
}

export interface SpooledMessage {
  /** The file on disk; valid until remove() (a recycled file then belongs to another message). */
  path: string;
  /** Bytes received (also counted past the limit, where nothing more is written). */
  size: number;
  sizeExceeded: boolean;
  md5: string;
  headers: HeaderField[];
  /** Offset of the first body byte (just after the empty line), or size when there is no body. */
  headerEnd: number;
  /** Raw bytes of the header block, read back from the file (bounded by MAX_HEADER_BLOCK). */
  readHeaderBlock(): Promise<Buffer>;
  /** Streams the message with `prepend` in front and the byte ranges in `skip` left out. */
  open(opts?: { prepend?: Buffer; skip?: Array<{ start: number; end: number }> }): Readable;
  /**
   * The same bytes as open(opts) in one buffer, when the file's part fits in one read chunk (64 KiB,
   * what the stream would hand out at once anyway); null for bigger messages, which must be streamed.
   */
  readSmall(opts?: { prepend?: Buffer; skip?: Array<{ start: number; end: number }> }): Buffer | null;
  remove(): Promise<void>;
}

const VALUE_CAP = 998;
const MAX_HEADERS = 10_000;
/** Header blocks bigger than this are still spooled intact; we only stop indexing them. */
export const MAX_HEADER_BLOCK = 4 * 1024 * 1024;

/**
 * Counts, hashes and caps the stream, and indexes header fields by byte offset so later stages can
 * prepend or strip headers without parsing the message again. Past `maxBytes` chunks are dropped
 * but still consumed: SMTP lets us answer only after the final dot (smtp-server#125).
 */
class SpoolTap extends Transform {
  size = 0;
  sizeExceeded = false;
  readonly md5 = createHash('md5');
  readonly headers: HeaderField[] = [];
  headerEnd = -1;
  private inHeaders = true;
  private lineStart = 0;
  private lineBytes = 0;
  private lineHead: Buffer[] = [];
  private lineHeadLen = 0;

  constructor(private readonly maxBytes: number) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.size += chunk.length;
    if (this.inHeaders) this.scanHeaders(chunk);
    if (this.sizeExceeded) return cb();
    if (this.size > this.maxBytes) {
      // Stop writing and hashing: the message will be refused with 552 whatever it contains.
      this.sizeExceeded = true;
      return cb();
    }
    this.md5.update(chunk);
    cb(null, chunk);
  }

  private scanHeaders(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length && this.inHeaders) {
      const nl = chunk.indexOf(0x0a, pos);
      const end = nl === -1 ? chunk.length : nl + 1;
      if (this.lineHeadLen < VALUE_CAP + 200) {
        const piece = chunk.subarray(pos, Math.min(end, pos + VALUE_CAP + 200 - this.lineHeadLen));
        this.lineHead.push(piece);
        this.lineHeadLen += piece.length;
      }
      this.lineBytes += end - pos;
      pos = end;
      if (nl === -1) break;
      this.endLine();
    }
    if (this.inHeaders && this.lineStart + this.lineBytes > MAX_HEADER_BLOCK) this.inHeaders = false;
  }

  private endLine(): void {
    const start = this.lineStart;
    const end = start + this.lineBytes;
    const text = Buffer.concat(this.lineHead).toString('latin1').replace(/\r?\n$/, '');
    this.lineStart = end;
    this.lineBytes = 0;
    this.lineHead = [];
    this.lineHeadLen = 0;
    if (text === '' || text === '\r') {
      this.inHeaders = false;
      this.headerEnd = end;
      return;
    }
    const last = this.headers[this.headers.length - 1];
    if ((text[0] === ' ' || text[0] === '\t') && last) {
      // Folded continuation: the field grows to cover this line too.
      last.end = end;
      if (last.value.length < VALUE_CAP) last.value = (last.value + ' ' + text.trim()).slice(0, VALUE_CAP);
      return;
    }
    const colon = text.indexOf(':');
    if (colon <= 0 || this.headers.length >= MAX_HEADERS) {
      // Not a header line: this is a message without a proper header block; stop indexing.
      if (colon <= 0) this.inHeaders = false;
      return;
    }
    this.headers.push({
      name: text.slice(0, colon).trim().toLowerCase(),
      start,
      end,
      value: Buffer.from(text.slice(colon + 1).trim(), 'latin1').toString('utf8').slice(0, VALUE_CAP),
    });
  }
}

export interface SpoolOptions {
  dir: string;
  maxBytes: number;
  /** Recycles small spool files (see SpoolFilePool); without it every message creates and unlinks its own file. */
  pool?: SpoolFilePool | undefined;
}

/**
 * Why small messages use synchronous file calls: a spool file lives in the page cache for the few
 * milliseconds its message is in flight, and an async call costs a threadpool round trip (two
 * cross-thread wake-ups) that is dearer than copying 10 KB. The relay's CPU profile at 20 sessions
 * had file-call dispatch at about a fifth of its time. (Creating the file stays async; see SpoolFilePool.) Past SYNC_LIMIT bytes the calls go
 * through the threadpool again, so a big message never stalls other sessions on disk writeback.
 */
export const SYNC_LIMIT = 256 * 1024;

/** The spool's one descriptor, shared by the writer and every reader; `closed` guards against fd reuse. */
interface SpoolFile {
  fd: number;
  closed: boolean;
}

function remainder(bufs: Buffer[], written: number): Buffer[] {
  const left: Buffer[] = [];
  let n = written;
  for (const b of bufs) {
    if (n >= b.length) n -= b.length;
    else {
      left.push(n > 0 ? b.subarray(n) : b);
      n = 0;
    }
  }
  return left;
}

/** Writes every byte at `pos` (positional: a recycled file's offset is wherever the last message left it). */
function writeAllSync(fd: number, bufs: Buffer[], pos: number): void {
  let rest = bufs;
  let at = pos;
  while (rest.length > 0) {
    // Regular files take everything at once in practice; a short write is finished, not dropped.
    const n = writevSync(fd, rest, at);
    if (n === 0) throw new Error('spool write made no progress');
    at += n;
    rest = remainder(rest, n);
  }
}

function writeAllAsync(fd: number, bufs: Buffer[], pos: number, cb: (err?: Error | null) => void): void {
  writev(fd, bufs, pos, (err, n) => {
    if (err) return cb(err);
    if (n === 0) return cb(new Error('spool write made no progress'));
    const left = remainder(bufs, n);
    if (left.length === 0) cb();
    else writeAllAsync(fd, left, pos + n, cb);
  });
}

/** Writes into the spool descriptor, batching what is buffered into one writev. */
class SpoolSink extends Writable {
  private written = 0;
  constructor(private readonly file: SpoolFile) {
    super({ highWaterMark: 64 * 1024 });
  }
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.put(
      chunks.map((c) => c.chunk),
      cb,
    );
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.put([chunk], cb);
  }
  private put(bufs: Buffer[], cb: (err?: Error | null) => void): void {
    const pos = this.written;
    this.written += bufs.reduce((n, b) => n + b.length, 0);
    if (this.written > SYNC_LIMIT) return writeAllAsync(this.file.fd, bufs, pos, cb);
    try {
      writeAllSync(this.file.fd, bufs, pos);
    } catch (err) {
      return cb(err as Error);
    }
    cb();
  }
}

/** source → tap → sink with plain pipes: stream.pipeline costs an AbortController and a DOMException per message. */
function pump(source: Readable, tap: Transform, sink: Writable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      source.unpipe(tap);
      tap.unpipe(sink);
      tap.destroy();
      sink.destroy();
      reject(err);
    };
    // The source may have failed before we got here (the SMTP engine breaks DATA off at once on a limit):
    // its 'error' and 'close' are already gone, so look at its state instead of waiting for them.
    if (source.destroyed) {
      settled = true;
      tap.destroy();
      sink.destroy();
      return reject(source.errored ?? new Error('message stream closed before its end'));
    }
    source.once('error', fail);
    tap.once('error', fail);
    sink.once('error', fail);
    // A source that ends without 'end' (destroyed mid-transfer) must not leave us waiting forever.
    source.once('close', () => {
      if (!source.readableEnded) fail(new Error('message stream closed before its end'));
    });
    sink.once('finish', () => {
      if (settled) return;
      settled = true;
      resolve();
    });
    source.pipe(tap).pipe(sink);
  });
}

export async function spoolMessage(source: Readable, opts: SpoolOptions): Promise<SpooledMessage> {
  const tap = new SpoolTap(opts.maxBytes);
  // No fsync: a spool file only lives while the client waits for our answer; a crash loses nothing the
  // client was told we have.
  const slot = await (opts.pool ? opts.pool.take() : createSpoolFile(opts.dir));
  // Per message: a recycled descriptor gets a fresh SpoolFile, so readers of the last message see `closed`.
  const file: SpoolFile = { fd: slot.fd, closed: false };
  /** Ends this message's use of the file: back to the pool when small, else closed and unlinked. */
  const release = async (small: boolean): Promise<void> => {
    if (file.closed) return;
    file.closed = true;
    if (small) {
      if (!opts.pool?.giveBack(slot)) discardSync(slot);
      return;
    }
    try {
      closeSync(slot.fd);
    } catch {
      /* the descriptor is gone either way */
    }
    await unlink(slot.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  };
  try {
    await pump(source, tap, new SpoolSink(file));
  } catch (err) {
    await release(false).catch(() => {});
    throw err;
  }
  const size = tap.size;
  const stored = Math.min(size, opts.maxBytes);
  const small = stored <= SYNC_LIMIT;
  const headerEnd = tap.headerEnd >= 0 ? tap.headerEnd : Math.min(size, MAX_HEADER_BLOCK);
  const last: LastSmall = { read: null };
  return {
    path: slot.path,
    size,
    sizeExceeded: tap.sizeExceeded,
    md5: tap.md5.digest('hex'),
    headers: tap.headers,
    headerEnd,
    async readHeaderBlock() {
      const len = Math.min(headerEnd, MAX_HEADER_BLOCK, stored);
      const buf = Buffer.alloc(len);
      const n = await readAt(file, buf, 0, small);
      return buf.subarray(0, n);
    },
    open(o = {}) {
      return new SpoolReader(file, rangesWithout(stored, o.skip ?? []), o.prepend, small);
    },
    readSmall(o = {}) {
      return readSmall(file, stored, last, o);
    },
    remove() {
      return release(small);
    },
  };
}

const READ_CHUNK = 64 * 1024;

function spoolClosed(): Error {
  return new Error('spool file already removed');
}

/** One positional read; refuses once the spool was removed, because its descriptor number may already belong to another file. */
function readAt(file: SpoolFile, buf: Buffer, pos: number, sync: boolean): Promise<number> {
  if (file.closed) return Promise.reject(spoolClosed());
  if (sync) {
    try {
      return Promise.resolve(readSync(file.fd, buf, 0, buf.length, pos));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  return new Promise((resolve, reject) => {
    read(file.fd, buf, 0, buf.length, pos, (err, n) => {
      // Closed while the read was in flight: whatever arrived may not be ours.
      if (file.closed) reject(spoolClosed());
      else if (err) reject(err);
      else resolve(n);
    });
  });
}

/** The file bytes of a message's last readSmall (callers never change what they get: it is sent, not edited). */
interface LastSmall {
  read: { ranges: Array<[number, number]>; bytes: Buffer } | null;
}

/** SpooledMessage.readSmall: prepend and the file's ranges in one buffer, or null past one read chunk. */
function readSmall(file: SpoolFile, stored: number, last: LastSmall, o: { prepend?: Buffer; skip?: Array<{ start: number; end: number }> }): Buffer | null {
  if (file.closed) throw spoolClosed();
  const ranges = rangesWithout(stored, o.skip ?? []);
  const total = ranges.reduce((n, [a, b]) => n + b - a, 0);
  if (total > READ_CHUNK) return null;
  const head = o.prepend?.length ?? 0;
  // The UCWI upload and then the relay read the same ranges: the second read copies the first's bytes
  // (still alive: it was the request body) instead of reading the file again.
  if (last.read && sameRanges(last.read.ranges, ranges)) {
    return head === 0 ? last.read.bytes : Buffer.concat([o.prepend!, last.read.bytes], head + total);
  }
  const buf = Buffer.allocUnsafe(head + total);
  o.prepend?.copy(buf, 0);
  let at = head;
  for (const [a, b] of ranges) {
    for (let pos = a; pos < b; ) {
      const n = readSync(file.fd, buf, at, b - pos, pos);
      if (n === 0) throw new Error('spool file shorter than expected');
      at += n;
      pos += n;
    }
  }
  last.read = { ranges, bytes: buf.subarray(head) };
  return buf;
}

function sameRanges(a: Array<[number, number]>, b: Array<[number, number]>): boolean {
  return a.length === b.length && a.every(([x, y], i) => x === b[i]![0] && y === b[i]![1]);
}

/** The byte ranges of [0, size) with the skipped ranges left out, in order. */
function rangesWithout(size: number, skip: Array<{ start: number; end: number }>): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  let cur = 0;
  for (const s of [...skip].sort((a, b) => a.start - b.start)) {
    if (s.start > cur) ranges.push([cur, Math.min(s.start, size)]);
    cur = Math.max(cur, s.end);
  }
  if (cur < size) ranges.push([cur, size]);
  return ranges.filter(([a, b]) => b > a);
}

/**
 * Yields prepend, then the file's ranges, up to 64 KiB per read by position. A plain Readable rather
 * than Readable.from(async generator): the generator costs several promises per chunk, and a small
 * message is served in one _read call.
 */
class SpoolReader extends Readable {
  private idx = 0;
  private pos: number;
  private reading = false;

  constructor(
    private readonly file: SpoolFile,
    private readonly ranges: Array<[number, number]>,
    private prepend: Buffer | undefined,
    private readonly sync: boolean,
  ) {
    super({ highWaterMark: READ_CHUNK });
    this.pos = ranges[0]?.[0] ?? 0;
  }

  override _read(): void {
    if (this.reading) return;
    // Small messages: the added headers ride in one chunk with the first file bytes, so the consumer
    // (a socket, in the end) makes one write rather than two. Big messages send them on their own.
    let lead = this.prepend;
    this.prepend = undefined;
    if (lead && (!this.sync || this.ranges.length === 0)) {
      if (lead.length > 0 && !this.push(lead)) return;
      lead = undefined;
    }
    for (;;) {
      const range = this.ranges[this.idx];
      if (!range) {
        this.push(null);
        return;
      }
      if (this.pos >= range[1]) {
        this.idx++;
        this.pos = this.ranges[this.idx]?.[0] ?? 0;
        continue;
      }
      if (this.file.closed) return void this.destroy(spoolClosed());
      const head = lead?.length ?? 0;
      // A fresh buffer per chunk: the consumer may still hold the previous one.
      const buf = Buffer.allocUnsafe(head + Math.min(READ_CHUNK, range[1] - this.pos));
      lead?.copy(buf, 0);
      lead = undefined;
      if (this.sync) {
        let n: number;
        try {
          n = readSync(this.file.fd, buf, head, buf.length - head, this.pos);
        } catch (err) {
          return void this.destroy(err as Error);
        }
        if (!this.took(buf, head, n)) return;
        continue;
      }
      this.reading = true;
      readAt(this.file, buf, this.pos, false).then(
        (n) => {
          this.reading = false;
          if (this.took(buf, 0, n)) this._read();
        },
        (err: Error) => {
          this.reading = false;
          this.destroy(err);
        },
      );
      return;
    }
  }

  /** Pushes `head` bytes already in `buf` plus what one read returned; false when the consumer wants no more for now (or the read failed). */
  private took(buf: Buffer, head: number, n: number): boolean {
    if (n === 0) {
      this.destroy(new Error('spool file shorter than expected'));
      return false;
    }
    this.pos += n;
    const end = head + n;
    return this.push(end === buf.length ? buf : buf.subarray(0, end));
  }
}
