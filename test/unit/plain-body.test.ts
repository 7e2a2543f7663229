// Differential test of the plain-body shortcut (src/mime/plain-body.ts): for varied messages cut into varied chunks, the walk and the scan see exactly what MailParser's own decoding gives.
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { walkMessage } from '../../src/mime/walker.js';
import { compilePolicies, scanMessage } from '../../src/engine/scan.js';
import { parsePolicies } from '../../src/engine/policies.js';
import { rng } from '../helpers/rng.js';

const COMPILED = compilePolicies(
  parsePolicies([
    { name: 'card', detector: 'card', actionCode: 2, severity: 1, actionSettingName: 'Block' },
    { name: 'cn', detector: 'cn_id', actionCode: 2, severity: 1, actionSettingName: 'Block' },
    { name: 'iban', detector: 'iban', actionCode: 6, severity: 2, actionSettingName: 'Quarantine' },
    { name: 'ssn', detector: 'us_ssn', actionCode: 2, severity: 1, actionSettingName: 'Block' },
    { name: 'kw', detector: 'keywords', keywords: ['TOP SECRET', 'CONFIDENTIAL-DO-NOT-SHARE'], actionCode: 6, severity: 2, actionSettingName: 'Q' },
  ]),
);

const HEADER_VARIANTS = [
  'From: <a@example.com>\r\nTo: <b@example.com>\r\nDate: Sat, 28 Nov 2026 23:52:16 +0000\r\nMessage-Id: <1@vm>\r\n',
  'Subject: Card 4111 1111 1111 1111\r\n',
  'Subject: =?utf-8?B?VE9QIFNFQ1JFVA==?=\r\n',
  'Subject: first\r\nSubject: second 123-45-6789\r\n',
  'Subject: folded\r\n  TOP\r\n\tSECRET\r\n',
  'X-Note: caf\xc3\xa9 4111111111111111\r\n',
  'Content-Type: text/plain; charset=iso-8859-1\r\n',
  'Content-Type: text/html\r\n',
  'content-transfer-encoding: base64\r\n',
  'Content-Transfer-Encoding: quoted-printable\r\n',
  'CONTENT-DISPOSITION: attachment; filename=a.txt\r\n',
  'X-Content-Note: content-ish\r\n',
  'Content-Type: text/plain; format=flowed; delsp=yes\r\n',
  'From \r\n',
  'Received: from vm\n\tby host; Sat, 28 Nov 2026\n',
  'Broken header line without colon\r\n',
  'Subject:\r\n',
  'SUBJECT:   TOP SECRET   \r\n',
  'subject: 4111111111111111\n',
  'Subject: a =? b\r\n',
  'Subject: tab\there TOP SECRET\r\n',
  'Subject : spaced name 123-45-6789\r\n',
  'Subject: caf\xc3\xa9 TOP SECRET\r\n',
  'Subject: __JOIN__ 4111 1111 1111 1111\r\n',
  'X-Empty:\r\n',
  'Subject: ends with cr only\r',
  'From: "A, B" <a@b.c>, =?utf-8?Q?x?= <d@e.f>\r\n',
  'Date: not a date\r\n',
];

const BODY_PIECES = [
  '1XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\r\n',
  'Card 4111 1111 1111 1111 and 5500-0000-0000-0004.\r\n',
  'ID 11010519491231002X, SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00\r\n',
  'TOP\r\nSECRET\r\n',
  'bare lf line\n',
  'lone cr\rinside\r\n',
  '\r\n',
  '\n',
  '--boundary-looking line\r\n',
  'caf\xc3\xa9 na\xefve \xff\xfe broken utf-8 \xe2\x82\r\n',
  '=?utf-8?B?VE9QIFNFQ1JFVA==?= =41=42\r\n',
  '<p>TOP SECRET &amp; 4111111111111111</p>\r\n',
  'no line end at all',
  'VE9QIFNFQ1JFVA==\r\n',
];

function randomMessage(r: () => number): Buffer {
  let head = '';
  const nHead = Math.floor(r() * 4);
  for (let i = 0; i < nHead; i++) head += HEADER_VARIANTS[Math.floor(r() * HEADER_VARIANTS.length)]!;
  let body = '';
  const nBody = Math.floor(r() * 12);
  for (let i = 0; i < nBody; i++) body += BODY_PIECES[Math.floor(r() * BODY_PIECES.length)]!;
  const sep = r() < 0.1 ? '' : r() < 0.2 ? '\n' : '\r\n';
  return Buffer.from(head + sep + body, 'latin1');
}

function chunked(buf: Buffer, r: () => number): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < buf.length;) {
    const n = r() < 0.3 ? 1 : 1 + Math.floor(r() * 40);
    chunks.push(buf.subarray(i, i + n));
    i += n;
  }
  return Readable.from(chunks);
}

/** What a walk hands its caller: the headers MailParser decoded, the text item's text and html, whether it failed. */
async function walkView(buf: Buffer, seed: number, plainTextBody: boolean) {
  // Only the Subject is promised for a header block MailParser is spared (see WalkOptions.plainTextBody).
  const view: { subject: unknown; texts: unknown[]; error: boolean } = { subject: undefined, texts: [], error: false };
  const result = await walkMessage(
    chunked(buf, rng(seed)),
    {
      headers: (h) => {
        view.subject = h.get('subject');
      },
      text: (t) => view.texts.push({ text: t.text, html: t.html }),
    },
    { plainTextBody, parser: { skipHtmlToText: true, skipImageLinks: true, skipTextLinks: true } },
  );
  view.error = result.error !== null;
  return view;
}

describe('plain-body shortcut', () => {
  it('gives the same walk and the same scan as MailParser for random messages and chunkings', async () => {
    const r = rng(20261128);
    for (let i = 0; i < 600; i++) {
      const eml = randomMessage(r);
      const seed = Math.floor(r() * 1e9);
      const label = JSON.stringify(eml.toString('latin1'));
      expect(await walkView(eml, seed, true), label).toEqual(await walkView(eml, seed + 1, false));
      const fast = await scanMessage(chunked(eml, rng(seed)), COMPILED, { plainTextBody: true });
      const slow = await scanMessage(chunked(eml, rng(seed + 2)), COMPILED, { plainTextBody: false });
      expect(fast, label).toEqual(slow);
    }
  }, 120_000);

  it('takes the shortcut for a header with no Content-* field and finds what is in the body', async () => {
    const eml = Buffer.from('From: <a@example.com>\r\nSubject: test\r\n\r\nCard 4111 1111 1111\r\n 1111 ok\r\nTOP\r\nSECRET\r\n');
    for (let size = 1; size <= eml.length; size += 5) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < eml.length; i += size) chunks.push(eml.subarray(i, i + size));
      const report = await scanMessage(Readable.from(chunks), COMPILED);
      expect(report.counts).toEqual([0, 0, 0, 0, 1]);
    }
    const view = await walkView(eml, 1, true);
    expect(view.texts).toEqual([{ text: 'Card 4111 1111 1111\n 1111 ok\nTOP\nSECRET\n', html: undefined }]);
  });

  it('keeps MailParser for the header block when the caller wants the raw header lines', async () => {
    const eml = Buffer.from('From: <a@example.com>\r\nSubject: hi\r\n\r\nbody\r\n');
    const keys: string[] = [];
    let lines = 0;
    await walkMessage(Readable.from([eml]), { headers: (h) => keys.push(...h.keys()), headerLines: (l) => (lines = l.length) }, { plainTextBody: true });
    expect(keys).toEqual(['from', 'subject']);
    expect(lines).toBe(2);
  });

  it('still reports a failed walk (abort) with no text', async () => {
    const ac = new AbortController();
    const input = new Readable({ read() {} });
    input.push('Subject: x\r\n\r\n4111 1111 1111 1111\r\n');
    const texts: unknown[] = [];
    const walk = walkMessage(input, { text: (t) => texts.push(t) }, { signal: ac.signal, plainTextBody: true });
    setTimeout(() => {
      ac.abort();
      input.push(null);
    }, 20);
    const result = await walk;
    expect(result.error?.message).toMatch(/aborted/);
    expect(texts).toEqual([]);
  });
});
