// Spool files on disk: their private creation, the pool that recycles small ones (creating a file is the dearest call), and the start-up sweep of crash leftovers.
import { randomUUID } from 'node:crypto';
import { closeSync, open, unlinkSync } from 'node:fs';
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
 * kernel time on the ext4 volume the benchmark ran on. A file goes back to the pool as it is, not
 * truncated: the next message overwrites it from offset 0, and every reader of a spooled message
 * (SpooledMessage.open/readSmall/readHeaderBlock, the CAS extraction through open()) stops at that
 * message's own size, so bytes left past it are never read. Truncating, and allocating the blocks again
 * on the next write, cost about 12 µs of kernel time per message, 3 % of the relay's CPU. Files of big messages (past spool.ts SYNC_LIMIT) are
 * closed and unlinked, so at most max × SYNC_LIMIT bytes of earlier messages wait on disk until
 * overwritten; close() and prepareSpoolDir (at start, after a crash) remove every spool file.
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

  /** Takes a used file back; false when it was not kept (pool closed or full) and the caller must discard it. */
  giveBack(slot: SpoolSlot): boolean {
    if (this.closed || this.free.length >= this.max) return false;
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

  /** Paths of the idle files: every other spool file belongs to a message in flight (read by the tests). */
  get idlePaths(): string[] {
    return this.free.map((s) => s.path);
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
