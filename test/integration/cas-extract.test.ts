// What a blocked message contributes to the CAS push: sender, attachment SHA-1/SHA-256 (streamed) and URLs, from a generated multipart EML.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import { extractPushItems, findUrls, type ExtractOptions } from '../../src/cas/extract.js';

const sha1 = (b: Buffer | string) => createHash('sha1').update(b).digest('hex');
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

let dir: string;
let eml: string;
const big = randomBytes(3 * 1024 * 1024 + 17);
const notes = 'Quarterly numbers: revenue = 12 345 €, ünïcödé, long line '.repeat(20);
const logo = randomBytes(512);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cas-extract-'));
  eml = join(dir, 'msg.eml');
  const raw = await new MailComposer({
    from: 'Mallory <mallory@evil.example>',
    to: 'bob@corp.example',
    subject: 'Invoice',
    text: 'Pay at https://evil.example/pay?a=1&b=2. Or http://second.example/path, then https://evil.example/pay?a=1&b=2 again (really).',
    html:
      '<p>Pay <a href="https://html-only.example/x?y=1&amp;z=2">here</a>, see https://evil.example/pay?a=1&amp;b=2 ' +
      '<img src="cid:logo@corp.example"> and <a href="mailto:x@y.example">mail</a> ftp://no.example/</p>',
    attachments: [
      { filename: 'secret.bin', content: big, contentType: 'application/octet-stream' },
      { filename: 'notes.txt', content: notes, contentTransferEncoding: 'quoted-printable' },
      { filename: 'copy.bin', content: big },
      { filename: 'logo.png', content: logo, cid: 'logo@corp.example', contentType: 'image/png' },
      { filename: 'empty.txt', content: '' },
    ],
  })
    .compile()
    .build();
  writeFileSync(eml, raw);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const base: ExtractOptions = {
  sender: 'Mallory@Evil.example',
  pushSender: true,
  pushAttachmentHashes: false,
  pushUrls: false,
  exemptDomains: ['corp.example'],
  exemptSenders: [],
};

describe('extractPushItems', () => {
  it('pushes only the sender by default, without parsing', async () => {
    const r = await extractPushItems(join(dir, 'does-not-exist.eml'), base);
    expect(r.items).toEqual([{ list: 'senders', value: 'mallory@evil.example', action: 'create', reason: 'dlp block' }]);
  });

  it('hashes every real attachment with SHA-1 and SHA-256 of the decoded bytes, once per distinct content', async () => {
    const r = await extractPushItems(eml, { ...base, pushAttachmentHashes: true, reason: 'verdict q1' });
    expect(r.attachments).toBe(5);
    const byList = (l: string) => r.items.filter((i) => i.list === l).map((i) => i.value);
    expect(byList('filehashes').sort()).toEqual([sha1(big), sha1(notes)].sort());
    expect(byList('file256hashes').sort()).toEqual([sha256(big), sha256(notes)].sort());
    // The inline logo (part of the HTML) and the empty file would block far too much.
    expect(byList('filehashes')).not.toContain(sha1(logo));
    expect(byList('filehashes')).not.toContain(sha1(''));
    expect(r.items.every((i) => i.action === 'create' && i.reason === 'verdict q1')).toBe(true);
    expect(byList('urls')).toEqual([]);
  });

  it('collects http(s) URLs from text and HTML, de-duplicated', async () => {
    const r = await extractPushItems(eml, { ...base, pushSender: false, pushUrls: true });
    expect(r.items.map((i) => i.value).sort()).toEqual([
      'http://second.example/path',
      'https://evil.example/pay?a=1&b=2',
      'https://html-only.example/x?y=1&z=2',
    ]);
    expect(r.items.every((i) => i.list === 'urls')).toBe(true);
    expect(r.urlsTruncated).toBe(false);
  });

  it('caps the number of URLs', async () => {
    const r = await extractPushItems(eml, { ...base, pushSender: false, pushUrls: true, maxUrls: 2 });
    expect(r.items).toHaveLength(2);
    expect(r.urlsTruncated).toBe(true);
  });

  it('never pushes an internal or exempt sender, nor a bounce', async () => {
    for (const sender of ['alice@corp.example', 'bob@eu.corp.example', 'partner@vendor.example', '', '<>']) {
      const r = await extractPushItems(eml, { ...base, sender, exemptSenders: ['Partner@Vendor.example'] });
      expect(r.items).toEqual([]);
    }
  });

  it('still hashes attachments of an exempt sender when asked to', async () => {
    const r = await extractPushItems(eml, { ...base, sender: 'alice@corp.example', pushAttachmentHashes: true });
    expect(r.items.some((i) => i.list === 'senders')).toBe(false);
    expect(r.items.filter((i) => i.list === 'file256hashes')).toHaveLength(2);
  });

  it('rejects a missing file when it has to parse', async () => {
    await expect(extractPushItems(join(dir, 'nope.eml'), { ...base, pushUrls: true })).rejects.toThrow(/ENOENT/);
  });
});

describe('findUrls', () => {
  it('trims punctuation and markup around links', () => {
    const set = new Set<string>();
    findUrls('(see https://a.example/x). "https://b.example/y" <https://c.example/z>, https://d.example/&gt;', set, 10);
    expect([...set]).toEqual(['https://a.example/x', 'https://b.example/y', 'https://c.example/z', 'https://d.example/']);
  });
});
