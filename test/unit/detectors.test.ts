// Detector tables (valid and invalid examples per detector) and the chunk counter's split-anywhere guarantee.
import { describe, expect, it } from 'vitest';
import {
  cardBrand,
  cardDetector,
  ChunkCounter,
  cnIdCheckChar,
  cnIdDetector,
  countCards,
  countCnIds,
  countIbans,
  countKeywords,
  countMatches,
  countUsSsns,
  ibanDetector,
  isCardNumber,
  isCnResidentId,
  isIban,
  isUsSsn,
  keywordDetector,
  luhnValid,
  usSsnDetector,
  type Detector,
} from '../../src/engine/detectors.js';

describe('payment cards', () => {
  it.each([
    ['4111111111111111', 'visa'],
    ['4111 1111 1111 1111', 'visa'],
    ['4111-1111-1111-1111', 'visa'],
    ['4222222222222', 'visa'], // 13 digits
    ['5555555555554444', 'mastercard'],
    ['5105 1051 0510 5100', 'mastercard'],
    ['2223003122003222', 'mastercard'], // 2-series
    ['378282246310005', 'amex'],
    ['3782 822463 10005', 'amex'], // Amex 4-6-5 grouping
    ['371449635398431', 'amex'],
    ['6011111111111117', 'discover'],
    ['6011000990139424', 'discover'],
    ['3530111333300000', 'jcb'],
    ['3566002020360505', 'jcb'],
    ['6200000000000005', 'unionpay'],
  ])('accepts %s (%s)', (s, brand) => {
    expect(isCardNumber(s)).toBe(true);
    expect(cardBrand(s.replace(/[ -]/g, ''))).toBe(brand);
    expect(countCards(`pay with ${s} today`)).toBe(1);
  });

  it.each([
    ['4111111111111112', 'Luhn fails'],
    ['1234567812345670', 'Luhn ok, no issuer starts with 1'],
    ['30569309025904', 'Diners: not in the issuer list'],
    ['411111111111', '12 digits'],
    ['5555555555554', 'Mastercard prefix with 13 digits'],
    ['4111  1111 1111 1111', 'double space is not a group separator'],
    ['4111.1111.1111.1111', 'dots are not separators'],
    ['', 'empty'],
  ])('rejects %s (%s)', (s) => {
    expect(isCardNumber(s)).toBe(false);
    expect(countCards(`pay with ${s} today`)).toBe(0);
  });

  it('Luhn basics', () => {
    expect(luhnValid('79927398713')).toBe(true);
    expect(luhnValid('79927398710')).toBe(false);
    expect(luhnValid('12a4')).toBe(false);
  });

  it('counts several cards in one text, including a space-separated list', () => {
    expect(countCards('a 4111111111111111 5500000000000004 b, c 378282246310005.')).toBe(3);
    expect(countCards('order 12 4111 1111 1111 1111 shipped')).toBe(1);
  });

  it('ignores numbers glued to letters, but not to Chinese text', () => {
    expect(countCards('ref4111111111111111')).toBe(0);
    expect(countCards('4111111111111111abc')).toBe(0);
    expect(countCards('卡号4111111111111111元')).toBe(1);
  });
});

describe('Chinese resident ID', () => {
  it('computes the MOD 11-2 check character', () => {
    expect(cnIdCheckChar('11010519491231002')).toBe('X');
    expect(cnIdCheckChar('31010119900307123')).toBe('0');
  });

  it.each(['11010519491231002X', '11010519491231002x', '440524188001010014', '310101199003071230'])('accepts %s', (s) => {
    expect(isCnResidentId(s)).toBe(true);
    expect(countCnIds(`证件号码：${s}。`)).toBe(1);
  });

  const withCheck = (first17: string): string => first17 + cnIdCheckChar(first17);
  it.each([
    ['110105194912310021', 'wrong check character'],
    [withCheck('11010519490230123'), 'February 30th'],
    [withCheck('11010519491331123'), 'month 13'],
    [withCheck('11010521991231123'), 'born in the future'],
    [withCheck('99010519491231123'), 'no province 99'],
    ['11010519491231002', '17 characters'],
    ['1101051949123100211', '19 characters'],
    ['1101051949123100A1', 'letter inside'],
  ])('rejects %s (%s)', (s) => {
    expect(isCnResidentId(s)).toBe(false);
    expect(countCnIds(`id ${s} end`)).toBe(0);
  });

  it('finds an ID written right after Chinese characters', () => {
    expect(countCnIds('身份证号11010519491231002X，请保密')).toBe(1);
  });
});

describe('IBAN', () => {
  it.each([
    'DE89370400440532013000',
    'DE89 3704 0044 0532 0130 00',
    'GB82 WEST 1234 5698 7654 32',
    'GB82WEST12345698765432',
    'FR14 2004 1010 0505 0001 3M02 606',
    'NL91ABNA0417164300',
    'BE68539007547034',
    'CH93 0076 2011 6238 5295 7',
    'AT611904300234573201',
    'IT60X0542811101000000123456',
    'ES9121000418450200051332',
    'NO9386011117947',
  ])('accepts %s', (s) => {
    expect(isIban(s)).toBe(true);
    expect(countIbans(`IBAN: ${s}, thanks`)).toBe(1);
  });

  it.each([
    ['DE89370400440532013001', 'mod-97 fails'],
    ['DE8937040044053201300', 'one character short for DE'],
    ['XX89370400440532013000', 'unknown country'],
    ['DE89 37040044 0532 0130 00', 'groups not of four'],
    ['de89370400440532013000', 'lower case'],
  ])('rejects %s (%s)', (s) => {
    expect(isIban(s)).toBe(false);
    expect(countIbans(`IBAN: ${s}, thanks`)).toBe(0);
  });

  it('finds IBANs followed by other capitals and several in one run', () => {
    expect(countIbans('DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX')).toBe(1);
    expect(countIbans('DE89370400440532013000 GB82 WEST 1234 5698 7654 32')).toBe(2);
    expect(countIbans('DE89370400440532013000abc')).toBe(0);
  });
});

describe('US SSN', () => {
  it.each(['123-45-6789', '123 45 6789', '078-05-1120', '665-01-0001'])('accepts %s', (s) => {
    expect(isUsSsn(s)).toBe(true);
    expect(countUsSsns(`SSN ${s}.`)).toBe(1);
  });

  it.each([
    ['000-12-3456', 'area 000'],
    ['666-12-3456', 'area 666'],
    ['900-12-3456', 'area 900'],
    ['999-12-3456', 'area 999'],
    ['123-00-4567', 'group 00'],
    ['123-45-0000', 'serial 0000'],
    ['123-45 6789', 'mixed separators'],
    ['123456789', 'no separators'],
    ['123-45-67890', 'serial too long'],
  ])('rejects %s (%s)', (s) => {
    expect(isUsSsn(s)).toBe(false);
    expect(countUsSsns(`SSN ${s}.`)).toBe(0);
  });

  it('does not take part of a longer dash-joined number', () => {
    expect(countUsSsns('ref 123-45-6789-0001')).toBe(0);
    expect(countUsSsns('ref 1-123-45-6789')).toBe(0);
  });
});

describe('keywords', () => {
  const kw = ['CONFIDENTIAL-DO-NOT-SHARE', 'TOP SECRET', '机密'];
  it.each([
    ['This is TOP SECRET.', 1],
    ['top secret, Top Secret and TOP\n  SECRET', 3],
    ['confidential-do-not-share', 1],
    ['TOPSECRET', 0],
    ['TOP SECRETS', 0],
    ['xTOP SECRET', 0],
    ['CONFIDENTIAL-DO-NOT-SHARE-LATER', 1], // '-' is not a word character
    ['这是机密文件', 1], // no word boundaries inside Chinese text
    ['nothing here', 0],
  ])('%j → %i', (text, n) => {
    expect(countKeywords(text, kw)).toBe(n);
  });

  it('treats regex characters literally and prefers the longer keyword', () => {
    expect(countKeywords('cost is $5.00 (net)', ['$5.00 (net)'])).toBe(1);
    expect(countKeywords('cost is $5x00 (net)', ['$5.00 (net)'])).toBe(0);
    expect(countKeywords('TOP SECRET', ['TOP', 'TOP SECRET'])).toBe(1);
  });

  it('does not let DLPTEST-ACTION-5 match DLPTEST-ACTION-50', () => {
    expect(countKeywords('DLPTEST-ACTION-50', ['DLPTEST-ACTION-5'])).toBe(0);
    expect(countKeywords('x DLPTEST-ACTION-5.', ['DLPTEST-ACTION-5'])).toBe(1);
  });

  it('refuses an empty keyword list', () => {
    expect(() => keywordDetector([' '])).toThrow(/at least one/);
  });
});

describe('ChunkCounter', () => {
  const text =
    'Dear team, card 4111 1111 1111 1111 and 5555-5555-5555-4444; IBAN DE89 3704 0044 0532 0130 00 BIC X; ' +
    'id 11010519491231002X; ssn 123-45-6789; this is TOP SECRET; list 4111111111111111 378282246310005 end';
  const detectors: Detector[] = [cardDetector, ibanDetector, cnIdDetector, usSsnDetector, keywordDetector(['TOP SECRET'])];

  function chunked(d: Detector, chunks: string[]): number {
    const c = new ChunkCounter(d);
    for (const ch of chunks) c.push(ch);
    return c.end();
  }

  it.each(detectors.map((d) => [d.kind, d] as const))('%s: a match split across two chunks is found exactly once, at every split point', (_k, d) => {
    const whole = countMatches(d, text);
    expect(whole).toBeGreaterThan(0);
    for (let cut = 0; cut <= text.length; cut++) {
      expect(chunked(d, [text.slice(0, cut), text.slice(cut)]), `cut at ${cut}`).toBe(whole);
    }
  });

  it.each(detectors.map((d) => [d.kind, d] as const))('%s: every chunk size gives the same count as the whole text', (_k, d) => {
    const whole = countMatches(d, text);
    for (let size = 1; size <= 64; size++) {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
      expect(chunked(d, chunks), `chunk size ${size}`).toBe(whole);
    }
  });

  it('finds the split card number once, with the exact counts expected', () => {
    expect(chunked(cardDetector, ['card 4111 1111 11', '11 1111 end'])).toBe(1);
    expect(chunked(cardDetector, ['card 4111111111111111', ''])).toBe(1);
    expect(chunked(cnIdDetector, ['11010519491231002', 'X'])).toBe(1);
    // The X arriving later must not turn a 17-digit number into a second ID, nor must the digits count twice.
    expect(chunked(cnIdDetector, ['11010519491231002X 1101051949123100', '2X'])).toBe(2);
  });

  it('stays bounded on an endless digit run and still counts what follows', () => {
    const c = new ChunkCounter(cardDetector);
    for (let i = 0; i < 300; i++) c.push('1234567890'.repeat(10));
    c.push(' then 4111111111111111 done');
    expect(c.end()).toBe(1);
  });

  it('refuses input after end()', () => {
    const c = new ChunkCounter(cardDetector);
    c.end();
    expect(() => c.push('x')).toThrow();
  });
});
