// DotStuffer and dotStuffWhole: byte-exact apart from line-start dots and the end marker, for fixed cases and for random data cut into random chunks.
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { DotStuffer, dotStuffWhole } from '../../src/smtp/dot-stuff.js';
import { rng } from '../helpers/rng.js';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/** Runs chunks through a DotStuffer and returns what it pushed, in order. */
async function stuff(chunks: Buffer[]): Promise<Buffer> {
  const s = Readable.from(chunks).pipe(new DotStuffer());
  const out: Buffer[] = [];
  s.on('data', (c: Buffer) => out.push(c));
  await new Promise((resolve, reject) => s.on('end', resolve).on('error', reject));
  return Buffer.concat(out);
}
const latin = (s: string): Buffer => Buffer.from(s, 'latin1');

/**
 * A reference unstuffer written from the rule, independent of DotStuffer: a line starts at the start
 * of data, after LF, or after CR; the data ends at the first CRLF.CRLF (or a "." + CRLF opening the
 * data); one dot is removed at every other line start. Returns null when no terminator is found or
 * bytes follow it.
 */
function unstuff(wire: Buffer): Buffer | null {
  const out: number[] = [];
  for (let i = 0; i < wire.length; i++) {
    const b = wire[i]!;
    const lineStart = i === 0 || wire[i - 1] === LF || wire[i - 1] === CR;
    if (lineStart && b === DOT) {
      const afterCrlf = i === 0 || (wire[i - 1] === LF && wire[i - 2] === CR);
      if (afterCrlf && wire[i + 1] === CR && wire[i + 2] === LF) {
        // The CRLF before the dot belongs to the data (RFC 5321 §4.1.1.4); nothing may follow the marker.
        return i + 3 === wire.length ? Buffer.from(out) : null;
      }
      continue; // the stuffed dot
    }
    out.push(b);
  }
  return null;
}

/** What the receiver must get: the data itself, completed by a CRLF when it did not end with one. */
function expected(input: Buffer): Buffer {
  if (input.length === 0) return input;
  const endsCrlf = input.length >= 2 && input[input.length - 2] === CR && input[input.length - 1] === LF;
  return endsCrlf ? input : Buffer.concat([input, latin('\r\n')]);
}

describe('DotStuffer', () => {
  it.each([
    { name: 'dots at line starts, split across chunks', chunks: ['a\r\n', '.b\r\n.', '.\r\n'], wire: 'a\r\n..b\r\n...\r\n.\r\n' },
    { name: 'a dot opening the message', chunks: ['.x\r\n'], wire: '..x\r\n.\r\n' },
    { name: 'bare LF kept, its dot stuffed, CRLF added before the marker', chunks: ['x\n.y'], wire: 'x\n..y\r\n.\r\n' },
    { name: 'CR and LF in different chunks', chunks: ['x\r', '\n', '.'], wire: 'x\r\n..\r\n.\r\n' },
    { name: 'bare CR then dot in the same chunk', chunks: ['x\r.y\r\n'], wire: 'x\r..y\r\n.\r\n' },
    { name: 'bare CR at a chunk end, dot opening the next', chunks: ['x\r', '.y\r\n'], wire: 'x\r..y\r\n.\r\n' },
    { name: 'smuggling attempt <LF>.<CR><LF> is defused', chunks: ['a\n.\r\nMAIL FROM:<x>\r\n'], wire: 'a\n..\r\nMAIL FROM:<x>\r\n.\r\n' },
    { name: 'data ending in a bare CR gets a full CRLF.CRLF', chunks: ['a\r'], wire: 'a\r\r\n.\r\n' },
    { name: 'data ending in a bare LF gets a full CRLF.CRLF', chunks: ['a\n'], wire: 'a\n\r\n.\r\n' },
    { name: 'no dots at all', chunks: ['Subject: a\r\n\r\nbody\r\n'], wire: 'Subject: a\r\n\r\nbody\r\n.\r\n' },
    { name: 'dots not at a line start are untouched', chunks: ['a.b ..c\r\n'], wire: 'a.b ..c\r\n.\r\n' },
  ])('$name', async ({ chunks, wire }) => {
    expect((await stuff(chunks.map(latin))).toString('latin1')).toBe(wire);
    // The one-buffer form (small messages) must put the very same bytes on the wire.
    expect(dotStuffWhole(latin(chunks.join(''))).toString('latin1')).toBe(wire);
  });

  it('an empty message is just the marker, and empty chunks change nothing', async () => {
    expect((await stuff([])).toString('latin1')).toBe('.\r\n');
    expect((await stuff([latin(''), latin('.'), latin('')])).toString('latin1')).toBe('..\r\n.\r\n');
  });

  it('dotStuffWhole: an empty message is just the marker; one byte is enough to decide the ending', () => {
    expect(dotStuffWhole(latin('')).toString('latin1')).toBe('.\r\n');
    expect(dotStuffWhole(latin('.')).toString('latin1')).toBe('..\r\n.\r\n');
    expect(dotStuffWhole(latin('\n')).toString('latin1')).toBe('\n\r\n.\r\n');
  });

  it('random data in random chunks: a single terminator, no unstuffed line-start dot, exact round trip', async () => {
    // Line ends and dots are over-represented so the interesting neighbourhoods occur constantly.
    const alphabet = [CR, LF, DOT, DOT, CR, LF, 0x41, 0x20, 0x00, 0xff];
    for (let seed = 1; seed <= 300; seed++) {
      const rand = rng(seed);
      const len = Math.floor(rand() * 200);
      const input = Buffer.alloc(len);
      for (let i = 0; i < len; i++) input[i] = alphabet[Math.floor(rand() * alphabet.length)]!;
      const chunks: Buffer[] = [];
      for (let at = 0; at < len;) {
        const n = 1 + Math.floor(rand() * 7);
        chunks.push(input.subarray(at, at + n));
        at += n;
      }
      const wire = await stuff(chunks);
      expect(dotStuffWhole(input).equals(wire), `seed ${seed}: whole-buffer form differs from the stream`).toBe(true);
      const label = `seed ${seed}: ${JSON.stringify(input.toString('latin1'))}`;
      const wireText = wire.toString('latin1');
      // The terminator occurs once, at the very end (the wire is exactly ".\r\n" for empty data).
      if (len === 0) expect(wireText, label).toBe('.\r\n');
      else expect(wireText.indexOf('\r\n.\r\n'), label).toBe(wire.length - 5);
      // Before the marker, every line-start dot is a doubled one: "<CR|LF>." is always followed by another dot.
      const body = wireText.slice(0, wireText.length - 3);
      expect(body, label).not.toMatch(/[\r\n]\.(?!\.)/);
      if (body.startsWith('.')) expect(body.startsWith('..'), label).toBe(true);
      expect(unstuff(wire)?.toString('latin1'), label).toBe(expected(input).toString('latin1'));
    }
  });
});
