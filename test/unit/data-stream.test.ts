// TransparentDataStream (egress DATA): byte-exact apart from dot-stuffing (across chunk boundaries) and the end marker.
import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { TransparentDataStream } from '../../src/egress/connection.js';

/** Output chunks as pushed ('data' events, not read() which would merge buffered ones). */
async function run(chunks: string[]): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const s = Readable.from(chunks.map((c) => Buffer.from(c, 'latin1'))).pipe(new TransparentDataStream());
  s.on('data', (c: Buffer) => out.push(c));
  await new Promise((resolve, reject) => s.on('end', resolve).on('error', reject));
  return out;
}
const joined = (bufs: Buffer[]) => Buffer.concat(bufs).toString('latin1');

describe('TransparentDataStream', () => {
  it.each([
    { name: 'dots at line starts, split across chunks', chunks: ['a\r\n', '.b\r\n.', '.\r\n'], wire: 'a\r\n..b\r\n...\r\n.\r\n' },
    { name: 'a dot opening the message', chunks: ['.x\r\n'], wire: '..x\r\n.\r\n' },
    { name: 'bare LF kept, its dot stuffed, CRLF added before the marker', chunks: ['x\n.y'], wire: 'x\n..y\r\n.\r\n' },
    { name: 'CR and LF in different chunks', chunks: ['x\r', '\n', '.'], wire: 'x\r\n..\r\n.\r\n' },
    { name: 'no dots at all', chunks: ['Subject: a\r\n\r\nbody\r\n'], wire: 'Subject: a\r\n\r\nbody\r\n.\r\n' },
  ])('$name', async ({ chunks, wire }) => {
    expect(joined(await run(chunks))).toBe(wire);
  });

  it('an empty message is just the marker', async () => {
    expect(joined(await run([]))).toBe('.\r\n');
  });
});
