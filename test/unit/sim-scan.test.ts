// The streaming message scanner (MIME, transfer encodings, charsets, attachments, limits) and policy loading/validation.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { ACTION_PRECEDENCE, decide, loadPolicies, parsePolicies, strictestAction, type Policy } from '../../src/engine/policies.js';
import { compilePolicies, htmlToPlain, scanMessage, type ScanLimits } from '../../src/engine/scan.js';

const POLICIES: Policy[] = parsePolicies([
  { name: 'card', detector: 'card', actionCode: 2, severity: 1, actionSettingName: 'Block' },
  { name: 'cn', detector: 'cn_id', actionCode: 2, severity: 1, actionSettingName: 'Block' },
  { name: 'iban', detector: 'iban', actionCode: 6, severity: 2, actionSettingName: 'Quarantine' },
  { name: 'ssn', detector: 'us_ssn', actionCode: 2, severity: 1, actionSettingName: 'Block' },
  { name: 'kw', detector: 'keywords', keywords: ['TOP SECRET', 'DLPTEST-ACTION-5'], actionCode: 5, severity: 3, actionSettingName: 'Encrypt' },
]);
const COMPILED = compilePolicies(POLICIES);

/** Counts by policy name, after feeding the message in small chunks so every stage sees split input. */
async function scan(eml: string | Buffer, limits: Partial<ScanLimits> = {}, chunkSize = 7) {
  const buf = typeof eml === 'string' ? Buffer.from(eml.replace(/\r?\n/g, '\r\n'), 'utf8') : eml;
  const chunks: Buffer[] = [];
  for (let i = 0; i < buf.length; i += chunkSize) chunks.push(buf.subarray(i, i + chunkSize));
  const report = await scanMessage(Readable.from(chunks), COMPILED, { limits });
  const byName = Object.fromEntries(POLICIES.map((p, i) => [p.name, report.counts[i]]));
  return { ...report, byName };
}

const b64 = (s: string | Buffer): string => (typeof s === 'string' ? Buffer.from(s, 'utf8') : s).toString('base64').replace(/.{76}/g, '$&\n');

const clean = { card: 0, cn: 0, iban: 0, ssn: 0, kw: 0 };

describe('scanMessage', () => {
  it('finds a card number in a base64 text attachment of a multipart message', async () => {
    const eml = `From: a@example.com
To: b@example.com
Subject: report
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XYZ"

--XYZ
Content-Type: text/plain; charset=utf-8

Please find the report attached.
--XYZ
Content-Type: text/plain; name="cards.txt"
Content-Disposition: attachment; filename="cards.txt"
Content-Transfer-Encoding: base64

${b64('customer list\ncard: 4111 1111 1111 1111\nthanks\n')}
--XYZ--
`;
    const r = await scan(eml);
    expect(r.byName).toEqual({ ...clean, card: 1 });
    expect(r.attachments).toBe(1);
    expect(r.scannedAttachments).toBe(1);
    expect(r.truncated).toBe(false);
  });

  it('decodes a quoted-printable body, soft line break inside the number', async () => {
    const eml = `Subject: qp
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Card number 4111=20=
1111 11=
11 1111 please =E2=80=94 and TOP=20SECRET.
`;
    const r = await scan(eml);
    expect(r.byName).toEqual({ ...clean, card: 1, kw: 1 });
  });

  it('finds a Chinese resident ID in a UTF-8 (base64) body', async () => {
    const eml = `Subject: =?UTF-8?B?${Buffer.from('身份信息', 'utf8').toString('base64')}?=
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: base64

${b64('您好，\n身份证号码：11010519491231002X，请保密。\n')}
`;
    const r = await scan(eml);
    expect(r.byName).toEqual({ ...clean, cn: 1 });
  });

  it('finds a Chinese resident ID in a GBK body', async () => {
    // "身份证号码：11010519491231002X，请保密。" encoded as GBK (iconv-lite), then base64.
    const gbk = 'ye233dakusXC66O6MTEwMTA1MTk0OTEyMzEwMDJYo6zH67Gjw9yhow==';
    const eml = `Subject: gbk
Content-Type: text/plain; charset=gbk
Content-Transfer-Encoding: base64

${gbk}
`;
    const r = await scan(eml);
    expect(r.byName).toEqual({ ...clean, cn: 1 });
  });

  it('scans an HTML-only body with tags and entities removed', async () => {
    const eml = `Subject: html
Content-Type: text/html; charset=utf-8

<html><body><p>IBAN: <b>DE89 3704 0044 0532 0130 00</b></p><p>TOP&nbsp;SECRET &amp; more</p></body></html>
`;
    const r = await scan(eml);
    expect(r.byName).toEqual({ ...clean, iban: 1, kw: 1 });
  });

  it('counts a match once when text and HTML are alternatives of each other', async () => {
    const eml = `Subject: alt
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/plain

card 4111111111111111
--ALT
Content-Type: text/html

<p>card <i>4111111111111111</i></p>
--ALT--
`;
    const r = await scan(eml);
    expect(r.byName.card).toBe(1);
  });

  it('counts different text and HTML parts side by side', async () => {
    const eml = `Subject: mixed
Content-Type: multipart/mixed; boundary="MIX"

--MIX
Content-Type: text/plain

first 4111111111111111
--MIX
Content-Type: text/html

<p>second 5555555555554444</p>
--MIX--
`;
    const r = await scan(eml);
    expect(r.byName.card).toBe(2);
  });

  it('reads but does not scan binary attachments, and still scans what comes after them', async () => {
    const eml = `Subject: bin
Content-Type: multipart/mixed; boundary="B"

--B
Content-Type: text/plain

hello
--B
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="data.bin"
Content-Transfer-Encoding: base64

${b64('binary-looking 4111111111111111 '.repeat(5000))}
--B
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="notes.csv"
Content-Transfer-Encoding: base64

${b64('name,ssn\nbob,123-45-6789\n')}
--B
Content-Type: application/json
Content-Disposition: attachment; filename="x"

{"iban":"GB82WEST12345698765432"}
--B--
`;
    const r = await scan(eml, {}, 4096);
    expect(r.byName).toEqual({ ...clean, ssn: 1, iban: 1 });
    expect(r.attachments).toBe(3);
    expect(r.scannedAttachments).toBe(2);
  });

  it('scans the Subject header', async () => {
    const r = await scan('Subject: please DLPTEST-ACTION-5\n\nbody\n');
    expect(r.byName).toEqual({ ...clean, kw: 1 });
  });

  it('parses an attached message/rfc822 and its base64 parts', async () => {
    const inner = `Subject: inner
Content-Type: multipart/mixed; boundary="IN"

--IN
Content-Type: text/plain
Content-Transfer-Encoding: base64

${b64('forwarded: 378282246310005')}
--IN--
`;
    const eml = `Subject: fwd
Content-Type: multipart/mixed; boundary="OUT"

--OUT
Content-Type: text/plain

see attached
--OUT
Content-Type: message/rfc822
Content-Disposition: attachment; filename="fwd.eml"

${inner}
--OUT--
`;
    const r = await scan(eml);
    expect(r.byName).toEqual({ ...clean, card: 1 });
  });

  it('finds every card in a large streamed attachment, including ones across chunk boundaries', async () => {
    const line = 'lorem ipsum dolor sit amet 4111 1111 1111 1111 consectetur\n';
    const body = line.repeat(20_000); // ~1.2 MB decoded
    const eml = `Subject: big
Content-Type: multipart/mixed; boundary="BIG"

--BIG
Content-Type: text/plain
Content-Disposition: attachment; filename="big.log"
Content-Transfer-Encoding: base64

${b64(body)}
--BIG--
`;
    const r = await scan(eml, {}, 65_536);
    expect(r.byName.card).toBe(20_000);
  });

  it('stops scanning a part at maxBytesPerPart and says so', async () => {
    const eml = `Subject: cap
Content-Type: multipart/mixed; boundary="C"

--C
Content-Type: text/plain
Content-Disposition: attachment; filename="a.txt"

${'x'.repeat(100)} 4111111111111111
--C--
`;
    const r = await scan(eml, { maxBytesPerPart: 50 });
    expect(r.byName.card).toBe(0);
    expect(r.truncated).toBe(true);
  });

  it('caps the number of MIME parts', async () => {
    let parts = '';
    for (let i = 0; i < 10; i++) parts += `--P\nContent-Type: text/plain\nContent-Disposition: attachment; filename="p${i}.txt"\n\n4111111111111111\n`;
    const eml = `Subject: many\nContent-Type: multipart/mixed; boundary="P"\n\n${parts}--P--\n`;
    const r = await scan(eml, { maxParts: 3 });
    expect(r.truncated).toBe(true);
    expect(r.byName.card).toBeLessThan(10);
    const full = await scan(eml);
    expect(full.byName.card).toBe(10);
    expect(full.truncated).toBe(false);
  });

  it('settles (truncated) on a MIME header over the parser limit instead of hanging', async () => {
    const eml = `Subject: huge\nX-Filler: ${'a'.repeat(1_200_000)}\nContent-Type: text/plain\n\n4111111111111111\n`;
    const r = await scan(eml, {}, 65_536);
    expect(r.truncated).toBe(true);
    expect(r.errors.join(' ')).toMatch(/header/i);
  });

  it('survives input that is not a message at all', async () => {
    const r = await scan(Buffer.from([0, 1, 2, 255, 254, 13, 10, 13, 10, 0x41]));
    expect(r.byName).toEqual(clean);
  });

  it('stops when aborted and still settles', async () => {
    const ac = new AbortController();
    const input = new Readable({ read() {} });
    input.push('Subject: slow\r\nContent-Type: text/plain\r\n\r\nbody ');
    const p = scanMessage(input, COMPILED, { signal: ac.signal });
    ac.abort();
    const r = await p;
    expect(r.truncated).toBe(true);
  });
});

describe('htmlToPlain', () => {
  it('removes tags and comments and decodes references', () => {
    expect(htmlToPlain('<p>a<b>b</b></p><!-- x --><br/>&lt;c&gt; &#x4E2D;&#25991; &nbsp;&unknown;')).toBe('\nab\n \n<c> 中文  &unknown;');
  });
});

describe('policies', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ucwi-policies-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('loads the shipped config/detectors.yaml', () => {
    const p = loadPolicies('config/detectors.yaml');
    const byName = new Map(p.map((x) => [x.name, x]));
    expect(byName.get('PCI card numbers')).toMatchObject({ detector: 'card', actionCode: 2, severity: 1, minMatches: 1 });
    expect(byName.get('China resident ID')?.actionCode).toBe(2);
    expect(byName.get('IBAN')?.actionCode).toBe(6);
    expect(byName.get('US SSN')?.actionCode).toBe(2);
    expect(byName.get('Confidential markings')).toMatchObject({ detector: 'keywords', actionCode: 6 });
    // The shipped file must not carry test triggers: real mail containing one would be acted on.
    expect(p.some((x) => x.keywords?.some((k) => k.startsWith('DLPTEST-')))).toBe(false);
  });

  it('the test policy file adds one trigger keyword per action code', () => {
    const p = loadPolicies('fixtures/detectors-test.yaml');
    for (let n = 2; n <= 9; n++) {
      expect(p.find((x) => x.keywords?.includes(`DLPTEST-ACTION-${n}`))?.actionCode).toBe(n);
    }
  });

  it('lists every validation problem with its path', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(
      file,
      `policies:
  - name: a
    detector: card
    actionCode: 12
    severity: 1
    actionSettingName: Block
  - name: a
    detector: keywords
    actionCode: 2
    severity: 0
    actionSettingName: Block
    colour: red
`,
    );
    let message = '';
    try {
      loadPolicies(file);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain(file);
    expect(message).toContain('policies[0].actionCode');
    expect(message).toContain('policies[1].severity');
    expect(message).toContain('policies[1].keywords');
    expect(message).toMatch(/colour/);
    expect(message).toContain('policies[1].name');
  });

  it('reports YAML syntax errors', () => {
    const file = join(dir, 'syntax.yaml');
    writeFileSync(file, 'policies: [\n  - name: x\n');
    expect(() => loadPolicies(file)).toThrow(/invalid YAML/);
  });

  it('fills minMatches and decides with the strictest action', () => {
    const p = parsePolicies([
      { name: 'q', detector: 'iban', actionCode: 6, severity: 2, actionSettingName: 'Q' },
      { name: 'b', detector: 'card', actionCode: 2, severity: 1, actionSettingName: 'B', minMatches: 2 },
    ]);
    expect(p[0]!.minMatches).toBe(1);
    expect(decide(p, [1, 1])).toEqual({ actionCode: 6, matchedPolicies: [{ name: 'q', severity: 2, actionSettingName: 'Q', numberOfMatches: 1 }] });
    expect(decide(p, [1, 2]).actionCode).toBe(2);
    expect(decide(p, [0, 0])).toEqual({ actionCode: 1, matchedPolicies: [] });
  });

  it('orders actions block > quarantine > confirm > delete attachment > encryption > allow', () => {
    expect(ACTION_PRECEDENCE).toEqual([2, 6, 3, 4, 5, 8, 7, 9, 1]);
    expect(strictestAction([1, 9, 7, 8, 5, 4, 3, 6, 2])).toBe(2);
    expect(strictestAction([3, 6])).toBe(6);
    expect(strictestAction([9, 7])).toBe(7);
    expect(strictestAction([])).toBe(1);
  });
});
