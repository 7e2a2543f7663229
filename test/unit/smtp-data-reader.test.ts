// DATA decoder: end-of-data only at CRLF.CRLF, exact inverse of dot-stuffing under any chunking, smuggling sequences stay data, limits.
import { describe, expect, it } from 'vitest';
import { DataDecoder, dotStuff, type DataDecoderOptions } from '../../src/smtp/data-reader.js';

/** Feeds `wire` in the given chunk sizes; returns the message, the bytes after the terminator and the decoder. */
function decode(wire: Buffer, sizes: number[] = [wire.length], opts: Partial<DataDecoderOptions> = {}) {
  const d = new DataDecoder({ maxMessageBytes: 0, ...opts });
  const parts: Buffer[] = [];
  let rest: Buffer | null = null;
  let off = 0;
  let k = 0;
  while (off < wire.length && !d.ended) {
    const n = Math.max(1, sizes[k++ % sizes.length]!);
    const r = d.write(wire.subarray(off, off + n));
    parts.push(...r.data);
    rest = r.rest;
    off += n;
  }
  const after = Buffer.concat([rest ?? Buffer.alloc(0), wire.subarray(off)]);
  return { message: Buffer.concat(parts), after, d };
}

/** The wire form of a message: stuffed, then the terminator (a CRLF is added when the message lacks one). */
function wireOf(msg: Buffer): Buffer {
  const s = dotStuff(msg);
  const endsCrlf = s.length >= 2 && s[s.length - 2] === 13 && s[s.length - 1] === 10;
  return Buffer.concat([s, Buffer.from(endsCrlf ? '.\r\n' : '\r\n.\r\n')]);
}
function expectedOf(msg: Buffer): Buffer {
  const endsCrlf = msg.length >= 2 && msg[msg.length - 2] === 13 && msg[msg.length - 1] === 10;
  return endsCrlf ? msg : Buffer.concat([msg, Buffer.from('\r\n')]);
}

/** Small deterministic PRNG so a failure can be reproduced from the printed seed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('DataDecoder', () => {
  it('ends at CRLF.CRLF and hands back the bytes after it', () => {
    const { message, after, d } = decode(Buffer.from('Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n'));
    expect(d.ended).toBe(true);
    expect(message.toString()).toBe('Subject: x\r\n\r\nbody\r\n');
    expect(after.toString()).toBe('QUIT\r\n');
  });

  it('ends at ".CRLF" as the very first line (empty message)', () => {
    const { message, after, d } = decode(Buffer.from('.\r\nNOOP\r\n'));
    expect(d.ended).toBe(true);
    expect(message.length).toBe(0);
    expect(after.toString()).toBe('NOOP\r\n');
  });

  it('removes one leading dot at every line start', () => {
    const { message } = decode(Buffer.from('..a\r\n...b\r\n.c\r\nd.\r\n.\r\n'));
    expect(message.toString()).toBe('.a\r\n..b\r\nc\r\nd.\r\n');
  });

  it.each([
    ['LF.CRLF', '\n.\r\n'],
    ['CR.CRLF', '\r.\r\n'],
    ['LF.LF', '\n.\n'],
    ['CRLF.LF', '\r\n.\n'],
    ['CRLF.CR then data', '\r\n.\rmore'],
  ])('smuggling sequence %s is data, byte-exact after stuffing', (_name, seq) => {
    const msg = Buffer.from(`a${seq}MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nspoofed\r\n`);
    const wire = wireOf(msg);
    for (const sizes of [[wire.length], [1], [2, 3], [5]]) {
      const { message, after, d } = decode(wire, sizes);
      expect(d.ended).toBe(true);
      expect(message.equals(expectedOf(msg))).toBe(true);
      expect(after.length).toBe(0);
    }
  });

  it('does not end data at a raw (unstuffed) smuggling sequence', () => {
    for (const seq of ['\n.\r\n', '\r.\r\n', '\n.\n', '\r\n.\n', '\r\n.\rX']) {
      const { message, d } = decode(Buffer.from(`a${seq}tail\r\n.\r\n`), [1]);
      expect(d.ended).toBe(true);
      // Only the line-start dot is removed: everything after the sequence is still part of the message.
      expect(message.toString()).toBe(`a${seq.replace('.', '')}tail\r\n`);
    }
  });

  it('unstuff(stuff(x)) === x for random bytes under random chunking', () => {
    const alphabet = [13, 10, 46, 46, 65, 0, 255, 32];
    for (let seed = 1; seed <= 400; seed++) {
      const r = rng(seed);
      const len = Math.floor(r() * 300);
      const msg = Buffer.alloc(len);
      for (let i = 0; i < len; i++) msg[i] = r() < 0.8 ? alphabet[Math.floor(r() * alphabet.length)]! : Math.floor(r() * 256);
      const wire = Buffer.concat([wireOf(msg), Buffer.from('NEXT')]);
      const sizes = Array.from({ length: 7 }, () => 1 + Math.floor(r() * 12));
      const { message, after, d } = decode(wire, sizes);
      expect(d.ended, `seed ${seed}`).toBe(true);
      expect(message.equals(expectedOf(msg)), `seed ${seed}`).toBe(true);
      expect(after.toString(), `seed ${seed}`).toBe('NEXT');
    }
  });

  it('counts long lines in one step exactly as byte by byte: same bytes, limit, violation and rest under any chunking', () => {
    // One byte per write never takes the run fast path past its first byte, so it is the byte-by-byte reference.
    const alphabet = [13, 10, 46, 65, 66, 32];
    for (let seed = 1; seed <= 600; seed++) {
      const r = rng(seed);
      const len = Math.floor(r() * 400);
      const raw = Buffer.alloc(len);
      // Mostly long ordinary runs, with line endings, dots and bare CR/LF sprinkled in.
      for (let i = 0; i < len; i++) raw[i] = r() < 0.1 ? alphabet[Math.floor(r() * alphabet.length)]! : 97 + Math.floor(r() * 26);
      const wire = Buffer.concat([raw, Buffer.from(r() < 0.7 ? '\r\n.\r\nQUIT\r\n' : '')]);
      const opts: Partial<DataDecoderOptions> = {
        maxMessageBytes: r() < 0.5 ? 0 : Math.floor(r() * 300),
        maxLineBytes: r() < 0.5 ? 0 : 1 + Math.floor(r() * 60),
        rejectBareLineEndings: r() < 0.3,
      };
      const ref = decode(wire, [1], opts);
      const sizes = Array.from({ length: 5 }, () => 1 + Math.floor(r() * 200));
      const got = decode(wire, sizes, opts);
      const at = `seed ${seed}`;
      expect(got.message.equals(ref.message), at).toBe(true);
      expect(got.after.equals(ref.after), at).toBe(true);
      expect([got.d.violation, got.d.bytes, got.d.ended], at).toEqual([ref.d.violation, ref.d.bytes, ref.d.ended]);
    }
  });

  it('stops emitting past maxMessageBytes but still finds the end', () => {
    const body = Buffer.from('x'.repeat(100) + '\r\n');
    const { message, after, d } = decode(Buffer.concat([body, Buffer.from('.\r\nRSET\r\n')]), [7], { maxMessageBytes: 50 });
    expect(d.violation).toBe('size');
    expect(d.ended).toBe(true);
    expect(message.length).toBe(50);
    expect(d.bytes).toBe(102);
    expect(after.toString()).toBe('RSET\r\n');
  });

  it('flags lines over maxLineBytes, not counting the transparency dot', () => {
    expect(decode(Buffer.from('..' + 'a'.repeat(9) + '\r\n.\r\n'), [3], { maxLineBytes: 10 }).d.violation).toBeNull();
    expect(decode(Buffer.from('a'.repeat(11) + '\r\n.\r\n'), [3], { maxLineBytes: 10 }).d.violation).toBe('line');
  });

  it('flags bare CR and bare LF only when rejecting', () => {
    for (const s of ['a\nb\r\n.\r\n', 'a\rb\r\n.\r\n', 'a\r\r\n.\r\n', '\r.x\r\n.\r\n']) {
      expect(decode(Buffer.from(s), [1], { rejectBareLineEndings: true }).d.violation, JSON.stringify(s)).toBe('bare');
      const ok = decode(Buffer.from(s), [1]);
      expect(ok.d.violation).toBeNull();
      expect(ok.d.ended).toBe(true);
    }
    expect(decode(Buffer.from('a\r\nb\r\n.\r\n'), [1], { rejectBareLineEndings: true }).d.violation).toBeNull();
  });
});
