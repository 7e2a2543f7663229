// The filesystem quarantine's audit trail: audit.jsonl in the store's directory, one JSON object per line, appended and fsync'd per entry, read back newest first.
import { open } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { fsyncDir } from '../util/durable-file.js';
import { auditRecord, clampLimit, decodeCursor, encodeCursor, errCode, QuarantineInputError } from './common.js';
import type { AuditEntry, AuditFilter, AuditPage, AuditRecord } from './types.js';

const AUDIT_FILE = 'audit.jsonl';

/**
 * FsQuarantineStore's audit() and listAudit(). list() scans the whole file (memory stays at one page, time grows
 * with the file; rotate it if it gets large). Relays sharing the directory append to the one file.
 */
export class FsAuditLog {
  private dirSynced = false;

  constructor(
    private readonly dir: string,
    private readonly instance: string,
  ) {}

  private get path(): string {
    return join(this.dir, AUDIT_FILE);
  }

  async append(entry: AuditEntry): Promise<AuditRecord> {
    const rec = auditRecord(entry, randomUUID(), new Date().toISOString(), this.instance);
    // One write() per line on an O_APPEND descriptor: concurrent appenders never interleave within a line.
    const fh = await open(this.path, 'a', 0o600);
    try {
      await fh.write(JSON.stringify(rec) + '\n');
      await fh.sync();
    } finally {
      await fh.close().catch(() => {});
    }
    if (!this.dirSynced) {
      await fsyncDir(this.dir);
      this.dirSynced = true;
    }
    return rec;
  }

  async list(filter: AuditFilter = {}): Promise<AuditPage> {
    const limit = clampLimit(filter.limit);
    // Order is the file's own (append order), not the timestamp: entries written within one millisecond
    // keep their sequence. The cursor is the line number, stable because the file is only ever appended to.
    let before = Infinity;
    if (filter.cursor) {
      const c = decodeCursor(filter.cursor);
      if (!/^\d{1,15}$/.test(c.id)) throw new QuarantineInputError('invalid cursor');
      before = Number(c.id);
    }
    const matching: Array<{ line: number; rec: AuditRecord }> = [];
    let input;
    try {
      const fh = await open(this.path, 'r');
      input = fh.createReadStream();
    } catch (err) {
      if (errCode(err) === 'ENOENT') return { items: [], nextCursor: null };
      throw err;
    }
    let lineNo = -1;
    for await (const line of createInterface({ input, crlfDelay: Infinity })) {
      lineNo++;
      if (lineNo >= before) break;
      if (!line) continue;
      let r: AuditRecord;
      try {
        r = JSON.parse(line) as AuditRecord;
      } catch {
        continue; // a torn last line after a crash
      }
      const t = Date.parse(r.at);
      if (filter.from && t < filter.from.getTime()) continue;
      if (filter.to && t >= filter.to.getTime()) continue;
      if (filter.actor !== undefined && r.actor !== filter.actor) continue;
      if (filter.action !== undefined && r.action !== filter.action) continue;
      if (filter.target !== undefined && r.target !== filter.target) continue;
      matching.push({ line: lineNo, rec: r });
      // Only the newest limit+1 are needed: memory stays bounded whatever the file size.
      if (matching.length > limit + 1) matching.shift();
    }
    input.destroy();
    matching.reverse();
    const page = matching.slice(0, limit);
    const last = page[page.length - 1];
    return {
      items: page.map((m) => m.rec),
      nextCursor: matching.length > limit && last ? encodeCursor({ t: last.rec.at, id: String(last.line) }) : null,
    };
  }
}
