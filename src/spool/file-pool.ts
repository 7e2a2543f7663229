// Spool files on disk: their private creation, the pool that recycles small ones (creating a file is the dearest call), and the start-up sweep of crash leftovers.
import { randomUUID } from 'node:crypto';
import { closeSync, ftruncateSync, open, unlinkSync } from 'node:fs';
import { unlink, mkdir, readdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';

const openAsync = promisify(open);

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

/** A spool file on disk: its descriptor and name. */
export interface SpoolSlot {
  fd: number;
  path: string;
}

/**
 * Recycled spool files. Creating a file is by far the dearest call in the spool: about 300 µs of
 * kernel time on the ext4 volume the benchmark ran on, against about 16 µs to truncate one and use it
 * again. A file goes back to the pool truncated to zero bytes, so it never carries the previous
 * message into the next; files of big messages (past spool.ts SYNC_LIMIT) are closed and unlinked as before.
 * prepareSpoolDir removes every spool file at start, so a crash leaves nothing behind either way.
 */
export class SpoolFilePool {
  private readonly free: SpoolSlot[] = [];
  private closed = false;

  constructor(
    readonly dir: string,
    private readonly max = 64,
  ) {}

  async take(): Promise<SpoolSlot> {
    return this.free.pop() ?? createSpoolFile(this.dir);
  }

  /** Takes a used file back; false when it was not kept (pool closed or full, truncate failed) and the caller must discard it. */
  giveBack(slot: SpoolSlot): boolean {
    if (this.closed || this.free.length >= this.max) return false;
    try {
      ftruncateSync(slot.fd, 0);
    } catch {
      return false;
    }
    this.free.push(slot);
    return true;
  }

  /** Closes and unlinks the idle files; files still in use are discarded when they come back. */
  close(): void {
    this.closed = true;
    for (const slot of this.free.splice(0)) discardSync(slot);
  }

  /** Idle files kept for reuse (read by the tests). */
  get idle(): number {
    return this.free.length;
  }
}

/**
 * A new spool file: 'wx+' and 0600, so private, readable back through the same descriptor, and never
 * clobbering another file. Async: creating the inode is slow (journal); in the threadpool it overlaps other work.
 */
export async function createSpoolFile(dir: string): Promise<SpoolSlot> {
  const path = join(dir, `${randomUUID()}.eml.spool`);
  return { fd: await openAsync(path, 'wx+', 0o600), path };
}

export function discardSync(slot: SpoolSlot): void {
  try {
    closeSync(slot.fd);
  } catch {
    /* gone either way */
  }
  try {
    unlinkSync(slot.path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
