// The MIME structure scanner and the shared walker: exact byte accounting, limits, strictness, abort and deadline.
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { MimeScanner, MimeStructureError, type PartInfo } from '../../src/mime/scanner.js';
import { walkMessage } from '../../src/mime/walker.js';

interface Ev {
  kind: 'headers' | 'body' | 'delimiter';
  bytes: Buffer;
  part?: PartInfo;
}

function scan(input: Buffer, chunk = input.length, opts: ConstructorParameters<typeof MimeScanner>[1] = {}): Ev[] {
  const ev: Ev[] = [];
  const s = new MimeScanner(
    {
      headers: (raw, part) => ev.push({ kind: 'headers', bytes: Buffer.from(raw), part }),
      body: (data, part) => ev.push({ kind: 'body', bytes: Buffer.from(data), part }),
      delimiter: (raw) => ev.push({ kind: 'delimiter', bytes: Buffer.from(raw) }),
    },
    opts,
  );
  for (let i = 0; i < input.length; i += Math.max(1, chunk)) s.write(input.subarray(i, i + Math.max(1, chunk)));
  s.end();
  return ev;
}

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof MimeStructureError) return err.reason;
    throw err;
  }
  return 'ok';
}

const MIXED = [
  'From: a@example.com',
  'Subject: =?utf-8?q?caf=C3=A9?=',
  'Content-Type: multipart/mixed; boundary="outer"',
  '',
  'preamble',
  '--outer',
  'Content-Type: multipart/alternative; boundary=inner',
  '',
  '--inner',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'hello',
  '-- ',
  'signature line starting with dashes',
  '--inner',
  'Content-Type: text/html',
  '',
  '<p>hello</p>',
  '--inner--',
  '--outer',
  'Content-Type: application/pdf; name="r.pdf"',
  "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf",
  'Content-Transfer-Encoding: base64',
  '',
  'JVBERi0xLjQK',
  '--outer',
  'Content-Type: message/rfc822',
  '',
  'Subject: fwd',
  'Content-Type: text/plain',
  '',
  'inner body',
  '--outer--',
  'epilogue',
  '',
].join('\r\n');

describe('MimeScanner', () => {
  it('gives back every byte, in order, whatever the chunking and line endings', () => {
    for (const text of [MIXED, MIXED.replace(/\r\n/g, '\n')]) {
      const input = Buffer.from(text, 'latin1');
      for (const chunk of [1, 2, 3, 7, 64, input.length]) {
        const ev = scan(input, chunk);
        expect(Buffer.concat(ev.map((e) => e.bytes)).equals(input)).toBe(true);
      }
    }
  });

  it('describes each part and keeps the line break before a delimiter with the delimiter', () => {
    const ev = scan(Buffer.from(MIXED, 'latin1'), 5);
    const parts = ev.filter((e) => e.kind === 'headers').map((e) => e.part as PartInfo);
    expect(parts.map((p) => [p.index, p.depth, p.contentType])).toEqual([
      [0, 0, 'multipart/mixed'],
      [1, 1, 'multipart/alternative'],
      [2, 2, 'text/plain'],
      [3, 2, 'text/html'],
      [4, 1, 'application/pdf'],
      [5, 1, 'message/rfc822'],
      [6, 2, 'text/plain'],
    ]);
    expect(parts[4]).toMatchObject({ disposition: 'attachment', filename: 'résumé.pdf', transferEncoding: 'base64', parentType: 'multipart/mixed' });
    expect(parts[6]).toMatchObject({ messageRoot: true, parentType: 'message/rfc822' });
    const delims = ev.filter((e) => e.kind === 'delimiter').map((e) => e.bytes.toString('latin1'));
    expect(delims).toContain('\r\n--inner--\r\n');
    expect(delims[0]).toBe('\r\n--outer\r\n');
    // "-- " (a signature separator) is body, not a delimiter.
    const plainBody = Buffer.concat(ev.filter((e) => e.kind === 'body' && e.part?.index === 2).map((e) => e.bytes)).toString();
    expect(plainBody).toBe('hello\r\n-- \r\nsignature line starting with dashes');
  });

  it('reads RFC 2047 file names', () => {
    const eml = 'Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/zip; name="=?UTF-8?B?w6TDtsO8LnppcA==?="\n\nx\n--b--\n';
    const part = scan(Buffer.from(eml)).filter((e) => e.kind === 'headers')[1]?.part;
    expect(part?.filename).toBe('äöü.zip');
  });

  it('refuses hostile shapes in strict mode and tolerates the non-limit ones in lenient mode', () => {
    const deep = (n: number) => {
      let s = '';
      for (let i = 0; i < n; i++) s += `Content-Type: multipart/mixed; boundary="d${i}x"\n\n--d${i}x\n`;
      return s + 'Content-Type: text/plain\n\nx\n';
    };
    const many = (n: number) => {
      let s = 'Content-Type: multipart/mixed; boundary=m\n\n';
      for (let i = 0; i < n; i++) s += '--m\nContent-Type: text/plain\n\nx\n';
      return `${s}--m--\n`;
    };
    const cases: Array<[string, string, string]> = [
      ['200-deep nesting', deep(200), 'too-deep'],
      ['20,000 parts', many(20_000), 'too-many-parts'],
      ['unterminated multipart', 'Content-Type: multipart/mixed; boundary=u\n\n--u\nContent-Type: text/plain\n\nx\n', 'unterminated-multipart'],
      ['boundary never seen', 'Content-Type: multipart/mixed; boundary=u\n\nno parts at all\n', 'unterminated-multipart'],
      ['broken header line', 'Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\nthis is not a header\n\nx\n--b--\n', 'broken-header'],
      ['header block too large', `Subject: ${'a'.repeat(300_000)}\n\nx\n`, 'header-too-large'],
      ['multipart without boundary', 'Content-Type: multipart/mixed\n\nx\n', 'missing-boundary'],
      ['delimiter with trailing text', 'Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b junk\n--b--\n', 'ambiguous-delimiter'],
      [
        'nested boundary prefixing the outer one',
        'Content-Type: multipart/mixed; boundary=ab\n\n--ab\nContent-Type: multipart/mixed; boundary=abc\n\n--abc--\n--ab--\n',
        'ambiguous-boundary',
      ],
      [
        'duplicate Content-Type',
        'Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\nContent-Type: application/zip\n\nx\n--b--\n',
        'duplicate-header',
      ],
      ['delimiter after the close', 'Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n--b\n\ny\n', 'delimiter-after-close'],
    ];
    for (const [name, eml, want] of cases) {
      expect(
        reason(() => scan(Buffer.from(eml), 4096)),
        name,
      ).toBe(want);
    }
    expect(reason(() => scan(Buffer.from(deep(200)), 4096, { strict: false }))).toBe('too-deep');
    expect(reason(() => scan(Buffer.from(many(20_000)), 4096, { strict: false }))).toBe('too-many-parts');
    expect(reason(() => scan(Buffer.from(cases[2]?.[1] ?? ''), 4096, { strict: false }))).toBe('ok');
    expect(reason(() => scan(Buffer.from(cases[4]?.[1] ?? ''), 4096, { strict: false }))).toBe('ok');
  });
});

describe('walkMessage', () => {
  it('walks texts and attachments of a real shape', async () => {
    const seen: string[] = [];
    const r = await walkMessage(Readable.from([Buffer.from(MIXED)]), {
      text: (t) => seen.push(`text:${String(t.text).trim().split('\n')[0]}`),
      attachment: async (a) => {
        let n = 0;
        for await (const c of a.content as Readable) n += (c as Buffer).length;
        seen.push(`att:${a.contentType}:${a.filename ?? ''}:${n}`);
      },
    });
    expect(r.error).toBeNull();
    expect(seen).toContain('att:application/pdf:résumé.pdf:9');
    expect(seen.some((s) => s.startsWith('text:hello'))).toBe(true);
  });

  it('settles with the limit as the reason on hostile shapes (no hang)', async () => {
    let eml = 'Content-Type: multipart/mixed; boundary=m\n\n';
    for (let i = 0; i < 20_000; i++) eml += `--m\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=f${i}\n\nx\n`;
    eml += '--m--\n';
    const r = await walkMessage(Readable.from([Buffer.from(eml)]), {});
    expect(r.error?.message).toMatch(/MIME parts/);
    const huge = await walkMessage(Readable.from([Buffer.from(`Subject: h\nX-F: ${'a'.repeat(1_200_000)}\n\nx\n`)]), {});
    expect(huge.error?.message).toMatch(/header block/);
  }, 20_000);

  it('walks a 200-deep nesting to its end (only the rewrite refuses that depth)', async () => {
    let eml = '';
    for (let i = 0; i < 200; i++) eml += `Content-Type: multipart/mixed; boundary="d${i}x"\n\n--d${i}x\n`;
    eml += 'Content-Type: text/plain\n\ndeep secret\n';
    for (let i = 199; i >= 0; i--) eml += `--d${i}x--\n`;
    const texts: string[] = [];
    const r = await walkMessage(Readable.from([Buffer.from(eml)]), { text: (t) => texts.push(String(t.text)) });
    expect(r.error).toBeNull();
    expect(texts.join(' ')).toContain('deep secret');
  }, 20_000);

  it('stops on abort and at its deadline, even when the input never ends', async () => {
    const open = () => {
      const input = new Readable({ read() {} });
      input.push(
        'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=z.zip\r\n\r\nUEsDBA==\r\n',
      );
      return input;
    };
    const ac = new AbortController();
    const p = walkMessage(
      open(),
      {
        attachment: async (a) => {
          await Readable.prototype.toArray.call(a.content as Readable);
        },
      },
      { signal: ac.signal },
    );
    setTimeout(() => ac.abort(), 20);
    expect((await p).error?.name).toBe('WalkAbortedError');
    const d = await walkMessage(open(), {}, { deadlineMs: 50 });
    expect(d.error?.message).toMatch(/deadline/);
  }, 10_000);

  it('reports an input failure as such', async () => {
    const input = new Readable({
      read() {
        this.destroy(new Error('disk gone'));
      },
    });
    const r = await walkMessage(input, {});
    expect(r.inputFailed).toBe(true);
    expect(r.error?.message).toBe('disk gone');
  });
});
