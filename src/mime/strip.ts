// actionCode 4: a streaming rewrite that replaces every attachment part by a short text/plain note and leaves every other byte of the message as it was.
import { Transform, Writable, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MimeScanner, MimeStructureError, type MimeLimits, type PartInfo } from './scanner.js';

export interface RemovalOptions extends Partial<MimeLimits> {
  /** Named in each note so the recipient can ask for the original (kept in the quarantine under this id). */
  queryId: string;
  /** Images an HTML body shows inline (multipart/related, Content-ID) go too; default: they stay. */
  removeInlineImages?: boolean;
}

export interface RemovedAttachment {
  index: number;
  filename: string | null;
  contentType: string;
  /** Decoded size for base64, else the encoded byte count. */
  size: number;
}

const IDENTITY = new Set(['7bit', '8bit', 'binary']);
/** Leaves that carry no user file: machine-readable reports and detached signatures stay. */
const KEEP_TYPES = new Set([
  'message/delivery-status',
  'message/disposition-notification',
  'message/feedback-report',
  'application/pgp-signature',
  'application/pkcs7-signature',
  'application/x-pkcs7-signature',
]);

/**
 * What counts as an attachment: a leaf with Content-Disposition attachment, or any non-text leaf
 * (named or not: a sender who leaves the name out must not get a file through), except inline images
 * of an HTML body (unless asked) and the types above. Multiparts and messages in an identity encoding
 * are walked into, so a forwarded message keeps its text and loses its own attachments.
 */
export function isRemovable(part: PartInfo, opts: Pick<RemovalOptions, 'removeInlineImages'> = {}): boolean {
  const t = part.contentType;
  if (part.boundary !== null) return false;
  if (t === 'message/rfc822' && IDENTITY.has(part.transferEncoding)) return false;
  if (KEEP_TYPES.has(t)) return false;
  if (part.disposition === 'attachment') return true;
  if (t.startsWith('text/')) return false;
  if (t.startsWith('image/') && (part.parentType === 'multipart/related' || part.hasContentId)) return opts.removeInlineImages === true;
  return true;
}

function noteFor(r: RemovedAttachment, queryId: string, eol: string): Buffer {
  const name = (r.filename ?? '(unnamed)').replace(/[\u0000-\u001f\u007f"]/g, '_').slice(0, 200);
  const text = `The attachment "${name}" (${r.contentType}, ${r.size} bytes) was removed by the data-loss-prevention policy (ref ${queryId}).`;
  // ASCII stays readable as is; a non-ASCII name is sent in base64 so no 8-bit byte depends on the next hop's 8BITMIME.
  const ascii = /^[\x20-\x7e]*$/.test(text);
  const body = ascii
    ? text
    : (
        Buffer.from(text, 'utf8')
          .toString('base64')
          .match(/.{1,76}/g) ?? []
      ).join(eol);
  return Buffer.from(
    [
      'Content-Type: text/plain; charset=utf-8',
      `Content-Transfer-Encoding: ${ascii ? '7bit' : 'base64'}`,
      'Content-Disposition: inline',
      '',
      // No line break after the body: the one before the next delimiter belongs to the delimiter.
      body,
    ].join(eol),
    'latin1',
  );
}

interface Dropping {
  info: PartInfo;
  bytes: number;
  b64: number;
  eol: string;
}

const B64 = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') B64[c.charCodeAt(0)] = 1;

/**
 * The rewrite as a Transform. Structure problems (strict scanner) and a top-level message that is itself
 * a file fail the stream with MimeStructureError: such a message cannot be rewritten safely.
 */
export class AttachmentRemover extends Transform {
  readonly removed: RemovedAttachment[] = [];
  private readonly scanner: MimeScanner;
  private dropping: Dropping | null = null;

  constructor(private readonly opts: RemovalOptions) {
    super();
    this.scanner = new MimeScanner(
      {
        headers: (raw, part) => this.onHeaders(raw, part),
        body: (data) => this.onBody(data),
        delimiter: (raw) => {
          this.finishDrop();
          this.push(raw);
        },
      },
      { ...opts, strict: true },
    );
  }

  private onHeaders(raw: Buffer, part: PartInfo): void {
    if (!isRemovable(part, this.opts)) {
      this.push(raw);
      return;
    }
    if (part.depth === 0) throw new MimeStructureError('top-level-attachment', `the message itself is a ${part.contentType} file`);
    this.dropping = { info: part, bytes: 0, b64: 0, eol: raw.includes('\r\n') ? '\r\n' : '\n' };
  }

  private onBody(data: Buffer): void {
    const d = this.dropping;
    if (!d) {
      this.push(data);
      return;
    }
    d.bytes += data.length;
    if (d.info.transferEncoding === 'base64') for (let i = 0; i < data.length; i++) d.b64 += B64[data[i] as number] as number;
  }

  private finishDrop(): void {
    const d = this.dropping;
    if (!d) return;
    this.dropping = null;
    const r: RemovedAttachment = {
      index: d.info.index,
      filename: d.info.filename,
      contentType: d.info.contentType,
      size: d.info.transferEncoding === 'base64' ? Math.floor((d.b64 * 3) / 4) : d.bytes,
    };
    this.removed.push(r);
    this.push(noteFor(r, this.opts.queryId, d.eol));
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.scanner.write(chunk);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.scanner.end();
      this.finishDrop();
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }
}

/** A rewriting stream over `source`; a source failure fails it too. */
export function removeAttachments(source: Readable, opts: RemovalOptions): AttachmentRemover {
  const remover = new AttachmentRemover(opts);
  source.on('error', (err) => remover.destroy(err));
  // A rewrite that fails or is abandoned (the next hop went away) must not leave the spool file open.
  remover.once('close', () => source.destroy());
  return source.pipe(remover);
}

/**
 * A dry run over the whole message: what would be removed, or the MimeStructureError that makes the
 * rewrite unsafe. Run before anything is sent, so a message that cannot be rewritten never reaches the
 * next hop half-written. The output is counted and dropped, never held.
 */
export async function planRemoval(
  source: Readable,
  opts: RemovalOptions,
  signal?: AbortSignal,
): Promise<{ removed: RemovedAttachment[]; outputBytes: number }> {
  const remover = new AttachmentRemover(opts);
  let outputBytes = 0;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      outputBytes += chunk.length;
      cb();
    },
  });
  await pipeline(source, remover, sink, ...(signal ? [{ signal }] : []));
  return { removed: remover.removed, outputBytes };
}
