// Durable file writes: temp file in the same directory, fsync, rename, fsync the directory. Used by every store that answers 250 on disk.
import { open, rename, unlink, mkdir, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { dirname, join, basename } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';

/** Temp names start with a dot so directory scans and sweeps can tell them from finished files. */
export const TEMP_PREFIX = '.tmp-';

/**
 * Writes `source` to `finalPath` so that, once the promise resolves, the file is complete and on
 * stable storage, and a crash at any point leaves either nothing or a `.tmp-*` file (never a partial
 * final file). Mode 0600: quarantined mail is sensitive by definition.
 */
export async function writeDurably(finalPath: string, source: Readable | string | Buffer, mode = 0o600): Promise<number> {
  const dir = dirname(finalPath);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `${TEMP_PREFIX}${basename(finalPath)}-${randomUUID()}`);
  let bytes = 0;
  try {
    if (typeof source === 'string' || Buffer.isBuffer(source)) {
      const buf = typeof source === 'string' ? Buffer.from(source) : source;
      await writeFile(tmp, buf, { flag: 'wx', mode });
      bytes = buf.length;
    } else {
      source.on('data', (c: Buffer) => (bytes += c.length));
      await pipeline(source, createWriteStream(tmp, { flags: 'wx', mode }));
    }
    // fsync through a fresh descriptor: it flushes the file's data whichever descriptor wrote it.
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  try {
    await rename(tmp, finalPath);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncDir(dir);
  return bytes;
}

/** A rename is durable only once the directory entry is; not every filesystem allows this, so failures are ignored. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    /* some filesystems refuse fsync on a directory; the data file itself is already synced */
  } finally {
    await fh?.close().catch(() => {});
  }
}
