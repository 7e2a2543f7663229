// Reply parsing: multi-line replies, enhanced codes, one-liners, and the strict incremental reader (bad codes, long lines, split chunks).
import { describe, expect, it } from 'vitest';
import { parseReply, ReplyReader, ReplySyntaxError } from '../../src/smtp/reply.js';

describe('parseReply', () => {
  it('single line with an enhanced code', () => {
    const r = parseReply(['250 2.1.5 Ok']);
    expect(r).toMatchObject({ code: 250, enhanced: '2.1.5', lines: ['2.1.5 Ok'], text: 'Ok' });
    expect(r.toString()).toBe('250 2.1.5 Ok');
  });

  it('multi-line: continuation texts joined without their repeated enhanced codes', () => {
    const r = parseReply(['550-5.7.1 Blocked by policy', '550-5.7.1 see https://x.example/p', '550 5.7.1 ref 42']);
    expect(r.code).toBe(550);
    expect(r.enhanced).toBe('5.7.1');
    expect(r.lines).toEqual(['5.7.1 Blocked by policy', '5.7.1 see https://x.example/p', '5.7.1 ref 42']);
    expect(r.text).toBe('Blocked by policy see https://x.example/p ref 42');
    expect(r.toString()).toBe('550 5.7.1 Blocked by policy see https://x.example/p ref 42');
  });

  it('EHLO style reply keeps every line', () => {
    const r = parseReply(['250-mx.example Hello', '250-PIPELINING', '250-SIZE 1000', '250 8BITMIME']);
    expect(r.enhanced).toBeNull();
    expect(r.lines).toEqual(['mx.example Hello', 'PIPELINING', 'SIZE 1000', '8BITMIME']);
  });

  it('an enhanced code whose class does not match the reply is plain text', () => {
    const r = parseReply(['250 5.1.1 odd']);
    expect(r.enhanced).toBeNull();
    expect(r.text).toBe('5.1.1 odd');
    expect(r.toString()).toBe('250 5.1.1 odd');
  });

  it('a bare code is a valid reply', () => {
    const r = parseReply(['250']);
    expect(r).toMatchObject({ code: 250, enhanced: null, lines: [''], text: '' });
    expect(r.toString()).toBe('250');
    expect(parseReply(['421 4.3.2']).toString()).toBe('421 4.3.2');
  });

  it.each([
    { name: 'no lines', lines: [] },
    { name: 'not a code', lines: ['hello'] },
    { name: 'first digit outside 2-5', lines: ['150 interim'] },
    { name: 'first digit 6', lines: ['650 x'] },
    { name: 'two-digit code', lines: ['25 x'] },
    { name: 'code without separator', lines: ['250x'] },
    { name: 'code changes inside a reply', lines: ['250-a', '251 b'] },
    { name: 'last line is a continuation', lines: ['250-a', '250-b'] },
    { name: 'final-style line before the end', lines: ['250 a', '250 b'] },
  ])('rejects $name', ({ lines }) => {
    expect(() => parseReply(lines)).toThrow(ReplySyntaxError);
  });
});

describe('ReplyReader', () => {
  it('assembles replies from arbitrary chunks and keeps the remainder', () => {
    const reader = new ReplyReader();
    const bytes = Buffer.from('250-a\r\n250 b\r\n354 go on\r\n221 by');
    const got: string[] = [];
    for (let i = 0; i < bytes.length; i += 3) got.push(...reader.push(bytes.subarray(i, i + 3)).map((r) => r.toString()));
    expect(got).toEqual(['250 a b', '354 go on']);
    expect(reader.buffered).toBe(6);
    expect(reader.push(Buffer.from('e\r\n')).map(String)).toEqual(['221 bye']);
    expect(reader.buffered).toBe(0);
  });

  it('counts an unfinished multi-line reply as buffered', () => {
    const reader = new ReplyReader();
    expect(reader.push(Buffer.from('250-a\r\n'))).toEqual([]);
    expect(reader.buffered).toBeGreaterThan(0);
  });

  it('tolerates a bare LF line end', () => {
    expect(new ReplyReader().push(Buffer.from('250 ok\n')).map(String)).toEqual(['250 ok']);
  });

  it('fails a malformed line at once, without waiting for a last line', () => {
    const reader = new ReplyReader();
    expect(() => reader.push(Buffer.from('250-ok\r\nxyz\r\n'))).toThrow(ReplySyntaxError);
  });

  it('fails a line over 512 octets, whether or not its end has arrived', () => {
    expect(() => new ReplyReader().push(Buffer.from('250 ' + 'a'.repeat(510) + '\r\n'))).toThrow(/512/);
    expect(() => new ReplyReader().push(Buffer.from('250 ' + 'a'.repeat(600)))).toThrow(/512/);
    // Exactly 512 octets including CRLF is allowed.
    expect(new ReplyReader().push(Buffer.from('250 ' + 'a'.repeat(506) + '\r\n'))).toHaveLength(1);
  });

  it('fails a reply that never ends', () => {
    const reader = new ReplyReader();
    expect(() => reader.push(Buffer.from('250-x\r\n'.repeat(1001)))).toThrow(/lines/);
  });
});
