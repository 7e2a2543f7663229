// Pure pieces of the quarantine operations: the safe preview (streaming MailParser), HTML stripping, the release header and its byte-exact prepending.
import { describe, it, expect } from 'vitest';
import { Readable } from 'node:stream';
import { buildPreview, prependHeader, releaseHeader, sanitizeText, stripHtml } from '../../src/quarantine/operations.js';

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Feeds the bytes in tiny pieces: parsers and the header prepender must not care where chunks end. */
function trickle(buf: Buffer, size = 3): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

describe('stripHtml', () => {
  it('drops tags, scripts, styles and comments; keeps text and block breaks; decodes entities last', () => {
    const html =
      '<html><head><title>t</title><style>x{}</style></head><body><!-- hidden --><p>One &amp; two</p><div>three<br>four</div>' +
      '<script type="x">alert("<p>no</p>")</script><p>&lt;b&gt;not a tag&lt;/b&gt; &#x263A; &#9731; &bogus;</p></body></html>';
    expect(stripHtml(html)).toBe('One & two\n\nthree\nfour\n\n<b>not a tag</b> ☺ ☃ &bogus;');
  });

  it('drops the rest after an unterminated tag or script, and stays linear on hostile input', () => {
    expect(stripHtml('ok <b unterminated')).toBe('ok');
    expect(stripHtml('ok <script>never closed')).toBe('ok');
    const hostile = '<script>'.repeat(20_000) + '<a'.repeat(20_000);
    expect(stripHtml(hostile)).toBe('');
  });
});

describe('sanitizeText', () => {
  it('neutralises terminal escapes and bidi overrides, keeps tabs and newlines', () => {
    expect(sanitizeText('a\u001b[31mred\u0007\tb\r\nc\u202Ed')).toBe('a\uFFFD[31mred\uFFFD\tb\nc\uFFFDd');
  });
});

describe('buildPreview', () => {
  it('keeps the HTML part only when asked, bounded, for the console frame', async () => {
    const msg = 'Subject: h\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello <b>there</b></p><script>x()</script>\r\n';
    const plain = await buildPreview(Readable.from([Buffer.from(msg)]));
    expect(plain.html).toBeUndefined();
    expect(plain.text).toBe('Hello there');
    const kept = await buildPreview(Readable.from([Buffer.from(msg)]), { maxHtmlChars: 1000 });
    expect(kept.html).toEqual({ source: expect.stringContaining('<p>Hello <b>there</b></p><script>x()</script>'), truncated: false });
    const cut = await buildPreview(Readable.from([Buffer.from(msg)]), { maxHtmlChars: 10 });
    expect(cut.html).toEqual({ source: '<p>Hello <', truncated: true });
  });

  const multipart = Buffer.from(
    [
      'From: Alice <alice@example.com>',
      'Subject: =?UTF-8?B?w5xiZXJzaWNodA==?=',
      'X-Long: ' + 'v'.repeat(3000),
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="outer"',
      '',
      '--outer',
      'Content-Type: multipart/alternative; boundary="alt"',
      '',
      '--alt',
      'Content-Type: text/plain; charset=utf-8',
      '',
      'Plain body \u001b[2J with escape',
      '--alt',
      'Content-Type: text/html; charset=utf-8',
      '',
      '<p>HTML body</p>',
      '--alt--',
      '--outer',
      'Content-Type: application/pdf; name="a.pdf"',
      'Content-Disposition: attachment; filename="a.pdf"',
      'Content-Transfer-Encoding: base64',
      '',
      Buffer.alloc(3000, 7)
        .toString('base64')
        .match(/.{1,76}/g)!
        .join('\r\n'),
      '--outer',
      'Content-Type: image/png',
      'Content-Disposition: inline',
      'Content-Transfer-Encoding: base64',
      '',
      Buffer.alloc(10, 1).toString('base64'),
      '--outer--',
      '',
    ].join('\r\n'),
  );

  it('gives headers, the text part, and attachment names and sizes without keeping their content', async () => {
    const p = await buildPreview(trickle(multipart, 97), { maxHeaderChars: 100 });
    expect(p.error).toBeUndefined();
    expect(p.headers[0]).toEqual({ name: 'From', value: 'Alice <alice@example.com>' });
    expect(p.headers.find((h) => h.name === 'X-Long')!.value).toHaveLength(101);
    expect(p.textSource).toBe('text');
    expect(p.text.trim()).toBe('Plain body \uFFFD[2J with escape');
    expect(p.attachments).toEqual([
      { filename: 'a.pdf', contentType: 'application/pdf', disposition: 'attachment', size: 3000 },
      { filename: null, contentType: 'image/png', disposition: 'inline', size: 10 },
    ]);
  });

  it('truncates long text and limits attachments', async () => {
    const parts = Array.from({ length: 5 }, (_, i) =>
      ['--b', `Content-Type: application/octet-stream; name="f${i}.bin"`, 'Content-Disposition: attachment', '', 'data', ''].join('\r\n'),
    );
    const msg = Buffer.from(
      [
        'Subject: many',
        'MIME-Version: 1.0',
        'Content-Type: multipart/mixed; boundary="b"',
        '',
        '--b',
        'Content-Type: text/plain',
        '',
        'x'.repeat(500),
        ...parts,
        '--b--',
        '',
      ].join('\r\n'),
    );
    const p = await buildPreview(Readable.from([msg]), { maxTextChars: 100, maxAttachments: 2 });
    expect(p.text).toHaveLength(100);
    expect(p.textTruncated).toBe(true);
    expect(p.attachments.map((a) => a.filename)).toEqual(['f0.bin', 'f1.bin']);
    expect(p.attachmentsTruncated).toBe(true);
  });

  it('reports an unreadable source as an incomplete preview instead of failing', async () => {
    const failing = new Readable({
      read() {
        this.destroy(new Error('bytes missing'));
      },
    });
    const p = await buildPreview(failing);
    expect(p.error).toBe('bytes missing');
  });
});

describe('release header', () => {
  it('says when, who and which reference, and cannot be used to inject header lines', () => {
    const h = releaseHeader(new Date('2025-01-02T03:04:05.678Z'), { name: 'cli:root\r\nBcc: x@y', source: '10.1.2.3' }, 'ref\nX: 1');
    // The source (an internal address) never leaves with the mail; it is in the audit trail.
    expect(h).toBe('X-DLP-Released: 2025-01-02T03:04:05.678Z by cli:root??Bcc: x@y (ref ref?X: 1)');
    expect(h).not.toMatch(/[\r\n]/);
  });

  it('is prepended with the message own line ending, leaving every original byte in place', async () => {
    const crlf = Buffer.from('Subject: a\r\nX: b\r\n\r\nbody\r\n');
    const lf = Buffer.from('Subject: a\nX: b\n\nbody\n');
    for (const [msg, eol] of [
      [crlf, '\r\n'],
      [lf, '\n'],
    ] as const) {
      for (const size of [1, 2, 5, 1000]) {
        const out = await readAll(prependHeader(trickle(msg, size), 'X-DLP-Released: t'));
        expect(out.toString()).toBe(`X-DLP-Released: t${eol}${msg.toString()}`);
      }
    }
    expect((await readAll(prependHeader(Readable.from([]), 'H: v'))).toString()).toBe('H: v\r\n');
  });
});
