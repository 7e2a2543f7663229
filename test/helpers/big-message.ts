// Streams a valid MIME message of an exact size (headers + base64 attachment of pseudo-random bytes) to disk, for size-limit and streaming tests.
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface BigMessageOptions {
  /** Same seed and size give byte-identical files (and the same sha256). */
  seed?: string;
  from?: string;
  to?: string;
}

const LINE_CHARS = 76; // RFC 2045 6.8: base64 lines of at most 76 characters
const LINE_BYTES = LINE_CHARS + 2; // with CRLF
const RAW_PER_LINE = (LINE_CHARS / 4) * 3; // 57 raw bytes fill one line without '=' padding
const LINES_PER_CHUNK = 1024; // ~78 KiB per write: bounded memory whatever the total size

/**
 * Writes a message of exactly `bytes` bytes (CRLF line endings) to `path` without building it in
 * memory, and returns the sha256 of what was written. Throws RangeError below the fixed overhead
 * (about 800 bytes). The attachment is AES-CTR keystream: incompressible and free of accidental
 * card/ID patterns only by overwhelming probability, which is why it is base64 and not text.
 */
export async function writeBigMessage(path: string, bytes: number, opts: BigMessageOptions = {}): Promise<{ sha256: string; size: number }> {
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`bad size ${bytes}`);
  const seed = opts.seed ?? 'dlp-relay-big-message';
  const boundary = `=_big_${createHash('sha256').update(seed).digest('hex').slice(0, 16)}`;

  const head = (filler: string): string =>
    [
      `From: ${opts.from ?? 'Big Sender <big@example.test>'}`,
      `To: ${opts.to ?? 'Big Recipient <rcpt@example.test>'}`,
      `Subject: Generated message of ${bytes} bytes`,
      'Date: Mon, 03 Mar 2025 10:00:00 +0000',
      `Message-ID: <big-${bytes}-${boundary.slice(6)}@example.test>`,
      'MIME-Version: 1.0',
      `Content-Type: multipart/mixed; boundary="${boundary}"`,
      '',
      `--${boundary}`,
      'Content-Type: text/plain; charset=us-ascii',
      'Content-Transfer-Encoding: 7bit',
      '',
      'This message carries a generated binary attachment.',
      // Filler makes the total exact: base64 can only grow in 4-character steps.
      `Padding: ${filler}`,
      '',
      `--${boundary}`,
      'Content-Type: application/octet-stream; name="random.bin"',
      'Content-Disposition: attachment; filename="random.bin"',
      'Content-Transfer-Encoding: base64',
      '',
      '',
    ].join('\r\n');
  const tail = `--${boundary}--\r\n`;

  const overhead = Buffer.byteLength(head('')) + tail.length;
  const room = bytes - overhead;
  if (room < 0) throw new RangeError(`a generated message needs at least ${overhead} bytes, asked for ${bytes}`);
  const fullLines = Math.floor(room / LINE_BYTES);
  const rest = room - fullLines * LINE_BYTES;
  // A last short line needs CRLF plus a multiple of 4 characters; what cannot be expressed that way is filler.
  const lastChars = rest >= 6 ? rest - 2 - ((rest - 2) % 4) : 0;
  const fillerLen = rest - (lastChars > 0 ? lastChars + 2 : 0);
  const prefix = Buffer.from(head('x'.repeat(fillerLen)));

  const key = createHash('sha256').update(`key:${seed}`).digest().subarray(0, 16);
  const iv = createHash('sha256').update(`iv:${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, iv);
  const hash = createHash('sha256');
  let size = 0;

  function emit(b: Buffer): Buffer {
    hash.update(b);
    size += b.length;
    return b;
  }
  function encodeLines(raw: Buffer): Buffer {
    const b64 = raw.toString('base64');
    const parts: string[] = [];
    for (let i = 0; i < b64.length; i += LINE_CHARS) parts.push(b64.slice(i, i + LINE_CHARS));
    return Buffer.from(parts.join('\r\n') + '\r\n', 'latin1');
  }

  function* chunks(): Generator<Buffer> {
    yield emit(prefix);
    for (let done = 0; done < fullLines;) {
      const n = Math.min(LINES_PER_CHUNK, fullLines - done);
      yield emit(encodeLines(cipher.update(Buffer.alloc(n * RAW_PER_LINE))));
      done += n;
    }
    if (lastChars > 0) yield emit(encodeLines(cipher.update(Buffer.alloc((lastChars / 4) * 3))));
    yield emit(Buffer.from(tail));
  }

  await pipeline(Readable.from(chunks()), createWriteStream(path));
  return { sha256: hash.digest('hex'), size };
}
