// Local "delivery" when no next hop is configured: one durable .eml per message plus a .json sidecar holding its envelope.
import { stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Readable } from 'node:stream';
import { writeDurably } from '../util/durable-file.js';
import type { Envelope } from '../smtp/envelope.js';

/** What the .json sidecar holds. */
export interface OutboxSidecar {
  queryId: string;
  storedAt: string;
  /** File name of the message this sidecar belongs to (same directory). */
  message: string;
  envelope: Envelope;
}

export class LocalOutbox {
  /** Names being written right now, so two same-millisecond writes for one queryId cannot collide. */
  private readonly reserved = new Set<string>();

  constructor(private readonly dir: string) {}

  /**
   * `signal`: the end-of-DATA deadline. If it fires while we write, the client has already been told
   * 451 and will retry, so a copy finished after that is removed again instead of becoming a duplicate.
   */
  async deliver(env: Envelope, openMessage: () => Readable | Buffer, queryId: string, signal?: AbortSignal): Promise<{ path: string }> {
    const storedAt = new Date();
    const base = await this.reserve(`${storedAt.toISOString().replace(/:/g, '')}-${safeName(queryId)}`);
    const emlPath = join(this.dir, `${base}.eml`);
    const jsonPath = join(this.dir, `${base}.json`);
    try {
      const sidecar: OutboxSidecar = { queryId, storedAt: storedAt.toISOString(), message: basename(emlPath), envelope: env };
      // Sidecar first, message last: whoever sees a finished .eml can rely on its .json being there.
      await writeDurably(jsonPath, JSON.stringify(sidecar, null, 2) + '\n');
      try {
        await writeDurably(emlPath, openMessage());
        if (signal?.aborted) {
          await unlink(emlPath).catch(() => {});
          throw signal.reason ?? new Error('deadline passed');
        }
      } catch (err) {
        // No message, no sidecar: an orphan .json would describe mail we never stored.
        await unlink(jsonPath).catch(() => {});
        throw err;
      }
      return { path: emlPath };
    } finally {
      this.reserved.delete(base);
    }
  }

  /** First free variant of `base` (suffix -1, -2, … only when the name is taken). */
  private async reserve(base: string): Promise<string> {
    for (let n = 0; ; n++) {
      const name = n === 0 ? base : `${base}-${n}`;
      if (this.reserved.has(name)) continue;
      this.reserved.add(name);
      if (!(await exists(join(this.dir, `${name}.eml`))) && !(await exists(join(this.dir, `${name}.json`)))) return name;
      this.reserved.delete(name);
    }
  }
}

/** queryIds come from us, but a file name must never be able to leave the directory. */
function safeName(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_') || 'message';
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
