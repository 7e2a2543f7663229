// Spools one message's DATA into a private temp file while hashing it (MD5 for UCWI, SHA-256 for audit) and indexing its header block; never holds the message in memory.
import { createHash, randomUUID } from 'node:crypto';
import { open, unlink, mkdir, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';

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
  path: string;
  /** Bytes received (also counted past the limit, where nothing more is written). */
  size: number;
  sizeExceeded: boolean;
  md5: string;
  sha256: string;
  headers: HeaderField[];
  /** Offset of the first body byte (just after the empty line), or size when there is no body. */
  headerEnd: number;
  /** Raw bytes of the header block, read back from the file (bounded by MAX_HEADER_BLOCK). */
  readHeaderBlock(): Promise<Buffer>;
  /** Streams the message with `prepend` in front and the byte ranges in `skip` left out. */
  open(opts?: { prepend?: Buffer; skip?: Array<{ start: number; end: number }> }): Readable;
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
  readonly sha256 = createHash('sha256');
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
    this.sha256.update(chunk);
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
}

/** Creates the spool directory and removes files left by a crash: they were never acknowledged. */
export async function prepareSpoolDir(dir: string): Promise<number> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let removed = 0;
  for (const name of await readdir(dir)) {
    if (name.endsWith('.eml.spool')) {
      await unlink(join(dir, name)).catch(() => {});
      removed++;
    }
  }
  return removed;
}

/**
 * Writes into an open FileHandle, batching what is buffered into one writev. The spool keeps that one
 * descriptor for its whole life (written here, read back by position for UCWI and the next hop), so a
 * message costs one open and one close instead of one per reader.
 */
class HandleSink extends Writable {
  constructor(private readonly fh: FileHandle) {
    super({ highWaterMark: 64 * 1024 });
  }
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.fh.writev(chunks.map((c) => c.chunk)).then(() => cb(), cb);
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.fh.write(chunk).then(() => cb(), cb);
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
  const path = join(opts.dir, `${randomUUID()}.eml.spool`);
  const tap = new SpoolTap(opts.maxBytes);
  // 'wx+' + 0600: private, readable back through the same handle, and never clobber another transaction's file. No fsync: a spool file only
  // lives while the client waits for our answer; a crash loses nothing the client was told we have.
  const fh = await open(path, 'wx+', 0o600);
  try {
    await pump(source, tap, new HandleSink(fh));
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(path).catch(() => {});
    throw err;
  }
  const size = tap.size;
  const headerEnd = tap.headerEnd >= 0 ? tap.headerEnd : Math.min(size, MAX_HEADER_BLOCK);
  let removed = false;
  return {
    path,
    size,
    sizeExceeded: tap.sizeExceeded,
    md5: tap.md5.digest('hex'),
    sha256: tap.sha256.digest('hex'),
    headers: tap.headers,
    headerEnd,
    async readHeaderBlock() {
      const len = Math.min(headerEnd, MAX_HEADER_BLOCK);
      const buf = Buffer.alloc(len);
      const { bytesRead } = await fh.read(buf, 0, len, 0);
      return buf.subarray(0, bytesRead);
    },
    open(o = {}) {
      return Readable.from(streamRanges(fh, Math.min(size, opts.maxBytes), o.prepend, o.skip ?? []));
    },
    async remove() {
      if (removed) return;
      removed = true;
      await fh.close().catch(() => {});
      await unlink(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    },
  };
}

const READ_CHUNK = 64 * 1024;

/** Yields prepend, then the file with the skipped ranges left out, reading 64 KiB at a time by position. */
async function* streamRanges(
  fh: FileHandle,
  size: number,
  prepend: Buffer | undefined,
  skip: Array<{ start: number; end: number }>,
): AsyncGenerator<Buffer> {
  if (prepend && prepend.length > 0) yield prepend;
  const ranges: Array<[number, number]> = [];
  let cur = 0;
  for (const s of [...skip].sort((a, b) => a.start - b.start)) {
    if (s.start > cur) ranges.push([cur, s.start]);
    cur = Math.max(cur, s.end);
  }
  if (cur < size) ranges.push([cur, size]);
  for (const [start, end] of ranges) {
    let pos = start;
    while (pos < end) {
      // A fresh buffer per chunk: the consumer may still hold the previous one.
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, end - pos));
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) throw new Error('spool file shorter than expected');
      pos += bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
  }
}
