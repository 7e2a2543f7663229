// Spool: streams to a private file, hashes, caps without stopping to read, and indexes headers by byte offset across chunk boundaries.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, statSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { spoolMessage, prepareSpoolDir } from '../../src/spool/spool.js';

const dir = () => mkdtempSync(join(tmpdir(), 'spool-'));
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
    expect(s.sha256).toBe(createHash('sha256').update(MSG).digest('hex'));
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
