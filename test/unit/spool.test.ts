// Spool: streams to a private file, hashes, caps without stopping to read, and indexes headers by byte offset across chunk boundaries.
import { describe, expect, it } from 'vitest';
import { readFileSync, statSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { testTempDir } from '../helpers/tmp.js';
import { spoolMessage, prepareSpoolDir, SYNC_LIMIT, SpoolFilePool } from '../../src/spool/spool.js';

const dir = () => testTempDir('spool-');
/** Feeds the message in chunks of `n` bytes so header lines straddle chunk boundaries. */
const chunked = (s: string | Buffer, n: number) => {
  const b = Buffer.from(s);
  const parts: Buffer[] = [];
  for (let i = 0; i < b.length; i += n) parts.push(b.subarray(i, i + n));
  return Readable.from(parts);
};
const text = async (r: Readable) => {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts).toString('latin1');
};

const MSG = 'Received: from a\r\n by b\r\nSubject: Hello\r\n =?utf-8?q?x?=\r\nX-Loop: yes\r\nMessage-ID: <1@x>\r\n\r\nBody line\r\nX-Loop: not a header\r\n';

describe('spoolMessage', () => {
  it.each([1, 3, 7, 64, 4096])('indexes headers and hashes correctly with %i-byte chunks', async (n) => {
    const d = dir();
    const s = await spoolMessage(chunked(MSG, n), { dir: d, maxBytes: 1 << 20 });
    expect(s.size).toBe(MSG.length);
    expect(s.sizeExceeded).toBe(false);
    expect(s.md5).toBe(createHash('md5').update(MSG).digest('hex'));
    expect(s.headers.map((h) => [h.name, h.value])).toEqual([
      ['received', 'from a by b'],
      ['subject', 'Hello =?utf-8?q?x?='],
      ['x-loop', 'yes'],
      ['message-id', '<1@x>'],
    ]);
    const loop = s.headers[2]!;
    expect(MSG.slice(loop.start, loop.end)).toBe('X-Loop: yes\r\n');
    expect(MSG.slice(s.headerEnd)).toBe('Body line\r\nX-Loop: not a header\r\n');
    expect(readFileSync(s.path, 'latin1')).toBe(MSG);
    expect(statSync(s.path).mode & 0o777).toBe(0o600);
    await s.remove();
    expect(existsSync(s.path)).toBe(false);
  });

  it('streams with a prepended block and skipped ranges', async () => {
    const s = await spoolMessage(chunked(MSG, 5), { dir: dir(), maxBytes: 1 << 20 });
    const loop = s.headers.find((h) => h.name === 'x-loop')!;
    const out = await text(s.open({ prepend: Buffer.from('X-New: 1\r\n'), skip: [{ start: loop.start, end: loop.end }] }));
    expect(out).toBe('X-New: 1\r\n' + MSG.replace('X-Loop: yes\r\n', ''));
    expect(await text(s.open())).toBe(MSG);
    expect((await s.readHeaderBlock()).toString()).toBe(MSG.slice(0, s.headerEnd));
  });

  it('readSmall gives the bytes open() streams, skips included, up to one 64 KiB chunk, and refuses after remove()', async () => {
    const s = await spoolMessage(chunked(MSG, 5), { dir: dir(), maxBytes: 1 << 20 });
    const loop = s.headers.find((h) => h.name === 'x-loop')!;
    const skip = [{ start: loop.start, end: loop.end }];
    expect(s.readSmall({ skip })!.toString('latin1')).toBe(await text(s.open({ skip })));
    // Read again (the relay after the UCWI upload), with and without a prepend, skips or none: always open()'s bytes.
    const pre = Buffer.from('Received: x\r\n');
    expect(s.readSmall({ prepend: pre, skip })!.toString('latin1')).toBe(await text(s.open({ prepend: pre, skip })));
    expect(s.readSmall()!.toString('latin1')).toBe(MSG);
    expect(s.readSmall({ prepend: pre })!.toString('latin1')).toBe(pre.toString('latin1') + MSG);
    expect(s.readSmall({ skip })!.toString('latin1')).toBe(await text(s.open({ skip })));
    const edge = Buffer.alloc(64 * 1024, 0x61);
    const at = await spoolMessage(Readable.from([edge]), { dir: dir(), maxBytes: 1 << 20 });
    expect(at.readSmall()!.equals(edge)).toBe(true);
    const over = await spoolMessage(Readable.from([edge, Buffer.from('b')]), { dir: dir(), maxBytes: 1 << 20 });
    expect(over.readSmall()).toBeNull();
    await s.remove();
    expect(() => s.readSmall()).toThrow(/already removed/);
    await at.remove();
    await over.remove();
  });

  it('a message past SYNC_LIMIT (async reads and writes) round-trips with prepend, skips and 64 KiB reads', async () => {
    // Distinct bytes at every offset, so a chunk read from the wrong position cannot go unnoticed.
    const body = Buffer.alloc(SYNC_LIMIT * 3 + 12_345);
    for (let i = 0; i < body.length; i++) body[i] = 0x61 + ((i * 7) % 26);
    const big = Buffer.concat([Buffer.from(MSG.replace('Body line\r\n', '')), body, Buffer.from('\r\n')]);
    const s = await spoolMessage(chunked(big, 10_000), { dir: dir(), maxBytes: 1 << 22 });
    expect(s.size).toBe(big.length);
    const loop = s.headers.find((h) => h.name === 'x-loop')!;
    const cut = { start: SYNC_LIMIT, end: SYNC_LIMIT * 2 + 3 };
    const out = Buffer.from(await text(s.open({ prepend: Buffer.from('X-New: 1\r\n'), skip: [cut, { start: loop.start, end: loop.end }] })), 'latin1');
    const expected = Buffer.concat([Buffer.from('X-New: 1\r\n'), big.subarray(0, loop.start), big.subarray(loop.end, cut.start), big.subarray(cut.end)]);
    expect(out.equals(expected)).toBe(true);
    expect((await s.readHeaderBlock()).toString('latin1')).toBe(big.subarray(0, s.headerEnd).toString('latin1'));
    await s.remove();
    expect(existsSync(s.path)).toBe(false);
  });

  it.each([10, SYNC_LIMIT * 2])('refuses to read (%i bytes) once removed, since the descriptor number may be reused', async (n) => {
    const s = await spoolMessage(Readable.from([Buffer.from('Subject: a\r\n\r\n' + 'y'.repeat(n))]), { dir: dir(), maxBytes: 1 << 22 });
    const early = s.open();
    const first = await new Promise<Buffer>((resolve) => early.once('data', resolve));
    expect(first.length).toBeGreaterThan(0);
    early.pause();
    const failed = new Promise<Error | null>((resolve) => {
      early.once('error', resolve);
      early.once('end', () => resolve(null));
    });
    await s.remove();
    await expect(text(s.open())).rejects.toThrow('spool file already removed');
    await expect(s.readHeaderBlock()).rejects.toThrow('spool file already removed');
    if (n > 64 * 1024) {
      // A reader that was part-way through a big message stops with the error instead of reading on.
      early.resume();
      expect((await failed)?.message).toBe('spool file already removed');
    }
  });

  it('keeps reading past the size cap but stops writing', async () => {
    const big = 'Subject: big\r\n\r\n' + 'x'.repeat(10_000);
    const s = await spoolMessage(chunked(big, 1000), { dir: dir(), maxBytes: 4096 });
    expect(s.sizeExceeded).toBe(true);
    expect(s.size).toBe(big.length);
    expect(statSync(s.path).size).toBeLessThanOrEqual(4096);
  });

  it('handles bare LF and a message without a body', async () => {
    const s = await spoolMessage(Readable.from([Buffer.from('Subject: a\nX-B: c\n')]), { dir: dir(), maxBytes: 1 << 20 });
    expect(s.headers.map((h) => h.name)).toEqual(['subject', 'x-b']);
    expect(s.headerEnd).toBe(s.size);
  });

  it('removes the file when the source fails', async () => {
    const d = dir();
    const failing = new Readable({
      read() {
        this.destroy(new Error('client went away'));
      },
    });
    await expect(spoolMessage(failing, { dir: d, maxBytes: 1 << 20 })).rejects.toThrow('client went away');
    expect(readdirSync(d)).toEqual([]);
  });

  it('prepareSpoolDir removes leftovers of a crash', async () => {
    const d = dir();
    writeFileSync(join(d, 'abc.eml.spool'), 'x');
    writeFileSync(join(d, 'keep.txt'), 'x');
    expect(await prepareSpoolDir(d)).toBe(1);
    expect(readdirSync(d)).toEqual(['keep.txt']);
  });
});

describe('SpoolFilePool', () => {
  it('reuses a small file as it is: the next message reads back none of the last one, and old readers refuse', async () => {
    const d = dir();
    const pool = new SpoolFilePool(d, 2);
    const a = await spoolMessage(chunked(MSG + 'A'.repeat(5000) + '\r\n', 700), { dir: d, maxBytes: 1 << 20, pool });
    const oldReader = a.open();
    await a.remove();
    expect(pool.idle).toBe(1);
    expect(pool.idlePaths).toEqual([a.path]);
    const b = await spoolMessage(chunked('Subject: b\r\n\r\nshort\r\n', 4), { dir: d, maxBytes: 1 << 20, pool });
    expect(b.path).toBe(a.path);
    expect(pool.idle).toBe(0);
    // b overwrote the file from offset 0 (a's tail is still past it on disk); every reader stops at b's size.
    const B = 'Subject: b\r\n\r\nshort\r\n';
    expect(readFileSync(b.path, 'latin1').startsWith(B)).toBe(true);
    expect(statSync(b.path).size).toBeGreaterThan(B.length);
    expect(await text(b.open())).toBe(B);
    expect(b.readSmall()!.toString('latin1')).toBe(B);
    expect(b.readSmall({ prepend: Buffer.from('X: 1\r\n') })!.toString('latin1')).toBe('X: 1\r\n' + B);
    expect((await b.readHeaderBlock()).toString('latin1')).toBe('Subject: b\r\n\r\n');
    // A reader opened for a never reads b's bytes through the shared descriptor.
    await expect(text(oldReader)).rejects.toThrow('spool file already removed');
    await b.remove();
    pool.close();
    expect(readdirSync(d)).toEqual([]);
  });

  it('keeps at most `max` idle files and never recycles a big one', async () => {
    const d = dir();
    const pool = new SpoolFilePool(d, 2);
    const msgs = await Promise.all([1, 2, 3].map(() => spoolMessage(chunked(MSG, 64), { dir: d, maxBytes: 1 << 20, pool })));
    expect(new Set(msgs.map((m) => m.path)).size).toBe(3);
    for (const m of msgs) await m.remove();
    expect(pool.idle).toBe(2);
    expect(readdirSync(d)).toHaveLength(2);
    const big = await spoolMessage(chunked('Subject: big\r\n\r\n' + 'z'.repeat(SYNC_LIMIT + 10), 50_000), { dir: d, maxBytes: 1 << 22, pool });
    expect(pool.idle).toBe(1);
    await big.remove();
    expect(existsSync(big.path)).toBe(false);
    expect(pool.idle).toBe(1);
    pool.close();
    expect(readdirSync(d)).toEqual([]);
  });

  it('after close, files that come back are discarded', async () => {
    const d = dir();
    const pool = new SpoolFilePool(d);
    const m = await spoolMessage(chunked(MSG, 64), { dir: d, maxBytes: 1 << 20, pool });
    pool.close();
    await m.remove();
    expect(pool.idle).toBe(0);
    expect(readdirSync(d)).toEqual([]);
  });
});
