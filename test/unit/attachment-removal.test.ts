// actionCode 4's rewrite: real shapes parsed back by mailparser, every kept part byte-identical, hostile shapes refused, a 50 MB attachment streamed in flat memory.
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { simpleParser } from 'mailparser';
import { describe, expect, it } from 'vitest';
import { MimeStructureError } from '../../src/mime/scanner.js';
import { planRemoval, removeAttachments, type RemovalOptions } from '../../src/mime/strip.js';
import { boundaries, compose, PDF, segments, shapes } from '../helpers/mime-shapes.js';

const QID = 'ab4d1b3e-5a6c-4c7e-9d3f-0123456789ab';
const NOTE = /^\r?\nContent-Type: text\/plain; charset=utf-8\r?\nContent-Transfer-Encoding: (7bit|base64)\r?\nContent-Disposition: inline\r?\n\r?\n/;

async function rewrite(eml: Buffer, opts: Partial<RemovalOptions> = {}, chunk = 997): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for (let i = 0; i < eml.length; i += chunk) chunks.push(eml.subarray(i, i + chunk));
  const out: Buffer[] = [];
  for await (const c of removeAttachments(Readable.from(chunks), { queryId: QID, ...opts })) out.push(c as Buffer);
  return Buffer.concat(out);
}

function noteText(seg: string): string {
  const m = NOTE.exec(seg);
  if (!m) return '';
  const body = seg.slice(m[0].length);
  return m[1] === 'base64' ? Buffer.from(body, 'base64').toString('utf8') : body;
}

describe('attachment removal on real shapes', () => {
  it.each([
    ['mixed with a PDF and a ZIP', ['report.pdf', 'data.zip'], []],
    ['alternative + related with an inline image', ['price list.pdf'], ['logo.png']],
    ['forwarded message with its own attachment', ['inner.zip'], []],
    ['quoted-printable attachment and 8-bit headers', ['Übersicht.csv'], []],
  ])('%s', async (name, gone, kept) => {
    const eml = (await shapes())[name] as Buffer;
    const out = await rewrite(eml);
    const plan = await planRemoval(Readable.from([eml]), { queryId: QID });
    expect(plan.removed.map((r) => r.filename)).toEqual(gone);
    expect(plan.outputBytes).toBe(out.length);

    // An independent parser sees no removed file, the kept ones, and the notes as text.
    const parsed = await simpleParser(out);
    const files = parsed.attachments.map((a) => a.filename);
    for (const g of gone) expect(files).not.toContain(g);
    for (const k of kept) expect(files).toContain(k);
    const before = await simpleParser(eml);
    expect(parsed.subject).toBe(before.subject);
    expect(parsed.from?.text).toBe(before.from?.text);

    // Byte for byte: every segment between delimiters is unchanged, except each removed part, which is now a note.
    const b = boundaries(eml);
    const a = segments(eml, b);
    const o = segments(out, b);
    expect(o.length).toBe(a.length);
    const notes: string[] = [];
    o.forEach((seg, i) => {
      if (seg === a[i]) return;
      const t = noteText(seg);
      expect(t, `segment ${i} changed but is not a note`).toMatch(
        /^The attachment ".*" \(.*, \d+ bytes\) was removed by the data-loss-prevention policy \(ref ab4d1b3e/,
      );
      notes.push(t);
    });
    expect(notes.map((t) => /"(.*)"/.exec(t)?.[1])).toEqual(gone);
    // The delimiters themselves are all still there, in order.
    const delims = (buf: Buffer) =>
      buf
        .toString('latin1')
        .match(/\r\n--[^\r\n]*/g)
        ?.filter((l) => b.some((x) => l.startsWith(`\r\n--${x}`)));
    expect(delims(out)).toEqual(delims(eml));
  });

  it('reports the decoded size and keeps inline images only when told to', async () => {
    const eml = (await shapes())['alternative + related with an inline image'] as Buffer;
    const plan = await planRemoval(Readable.from([eml]), { queryId: QID, removeInlineImages: true });
    expect(plan.removed.map((r) => [r.filename, r.size])).toEqual([
      ['logo.png', 508],
      ['price list.pdf', PDF.length],
    ]);
    const parsed = await simpleParser(await rewrite(eml, { removeInlineImages: true }));
    expect(parsed.attachments.map((a) => a.filename)).toEqual([]);
  });

  it('leaves a message without attachments byte-identical', async () => {
    const eml = await compose({ subject: 'plain', text: 'no files', html: '<b>no files</b>' });
    expect((await rewrite(eml, {}, 13)).equals(eml)).toBe(true);
  });

  it('removes an unnamed non-text part too (leaving the name out does not get a file through)', async () => {
    const eml = Buffer.from(
      'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--b--\r\n',
    );
    const out = (await rewrite(eml)).toString();
    expect(out).not.toContain('AAECAw==');
    expect(out).toContain('The attachment "(unnamed)" (application/octet-stream, 4 bytes)');
  });
});

describe('attachment removal on hostile shapes', () => {
  const deep = (n: number) => {
    let s = '';
    for (let i = 0; i < n; i++) s += `Content-Type: multipart/mixed; boundary="d${i}x"\r\n\r\n--d${i}x\r\n`;
    return `${s}Content-Type: application/zip\r\nContent-Disposition: attachment; filename=z.zip\r\n\r\nUEsDBA==\r\n`;
  };
  let many = 'Content-Type: multipart/mixed; boundary=m\r\n\r\n';
  for (let i = 0; i < 20_000; i++) many += `--m\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=f${i}.zip\r\n\r\nUEsDBA==\r\n`;
  many += '--m--\r\n';
  it.each([
    [
      'unterminated boundary',
      'Content-Type: multipart/mixed; boundary=u\r\n\r\n--u\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=z.zip\r\n\r\nUEsDBA==\r\n',
      'unterminated-multipart',
    ],
    ['200-deep nesting', deep(200), 'too-deep'],
    ['20,000 parts', many, 'too-many-parts'],
    [
      'broken headers',
      'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/zip\r\nnot a header line\r\n\r\nUEsDBA==\r\n--b--\r\n',
      'broken-header',
    ],
    ['a message that is itself a file', 'Content-Type: application/pdf; name=x.pdf\r\n\r\n%PDF\r\n', 'top-level-attachment'],
    [
      'a delimiter with trailing text',
      'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b trailing\r\nContent-Type: application/zip\r\n\r\nUEsDBA==\r\n--b--\r\n',
      'ambiguous-delimiter',
    ],
  ])('%s → MimeStructureError %s, never a rewritten copy', async (_n, eml, reason) => {
    const err = await planRemoval(Readable.from([Buffer.from(eml)]), { queryId: QID }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MimeStructureError);
    expect((err as MimeStructureError).reason).toBe(reason);
  });
});

describe('a 50 MB attachment', () => {
  it('is removed streaming, with memory far below the attachment size', async () => {
    const SIZE = 50 * 1024 * 1024;
    const line = Buffer.from(`${Buffer.alloc(57, 0x5a).toString('base64')}\r\n`);
    const lines = Math.ceil(SIZE / 57);
    const head = Buffer.from(
      'From: a@example.test\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\nbig file\r\n--big\r\nContent-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=big.bin\r\n\r\n',
    );
    const tail = Buffer.from('--big--\r\n');
    function* source(): Generator<Buffer> {
      yield head;
      const block = Buffer.concat(Array.from({ length: 1000 }, () => line));
      for (let i = 0; i < lines; i += 1000) yield block;
      yield tail;
    }
    const base = process.memoryUsage().rss;
    let peak = base;
    let outBytes = 0;
    const remover = removeAttachments(Readable.from(source()), { queryId: QID });
    await pipeline(
      remover,
      new Writable({
        write(c: Buffer, _e, cb) {
          outBytes += c.length;
          peak = Math.max(peak, process.memoryUsage().rss);
          cb();
        },
        final(cb) {
          peak = Math.max(peak, process.memoryUsage().rss);
          cb();
        },
      }),
    );
    expect(outBytes).toBeLessThan(2000);
    expect(remover.removed.map((r) => [r.filename, r.size >= SIZE])).toEqual([['big.bin', true]]);
    // Holding the attachment would add at least its 68 MB of base64; the stream keeps one chunk at a time.
    expect(peak - base).toBeLessThan(48 * 1024 * 1024);
  }, 60_000);
});
