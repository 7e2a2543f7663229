// Size, SHA-256 and MD5 of the bytes a store actually writes, measured as they pass: the record must describe what is stored, in one pass.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

export interface StoredDigest {
  size: number;
  sha256: string;
  md5: string;
}

/** Running digests over a byte stream; read the result once every byte has been seen. */
export class ByteDigest {
  private readonly sha256 = createHash('sha256');
  private readonly md5 = createHash('md5');
  private size = 0;

  update(chunk: Buffer): void {
    this.sha256.update(chunk);
    this.md5.update(chunk);
    this.size += chunk.length;
  }

  result(): StoredDigest {
    return { size: this.size, sha256: this.sha256.digest('hex'), md5: this.md5.digest('hex') };
  }
}

/**
 * Passes `source` through unchanged, feeding each chunk to `digest` on its way to the writer, so hashing costs
 * no second read of the file. Errors of the source reach the consumer; a consumer that stops early destroys the source.
 */
export function throughDigest(source: Readable, digest: ByteDigest): Readable {
  async function* pass(): AsyncGenerator<Buffer> {
    try {
      for await (const c of source) {
        const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c as string);
        digest.update(chunk);
        yield chunk;
      }
    } finally {
      source.destroy();
    }
  }
  return Readable.from(pass(), { objectMode: false });
}
