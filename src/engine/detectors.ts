// Content detectors of the embedded DLP engine: pure validators, match counters, and a chunk counter that finds matches split across streamed chunks.

/** The detector kinds a policy can name in config/detectors.yaml. */
export const DETECTOR_KINDS = ['card', 'cn_id', 'iban', 'us_ssn', 'keywords'] as const;
export type DetectorKind = (typeof DETECTOR_KINDS)[number];

/**
 * A detector is a candidate finder plus a validator. The finder is a global regex whose matches are
 * maximal "runs" (scanning left to right never starts inside a run a previous match consumed); the
 * validator turns one run into a number of real matches (a run of digit groups can hold several cards).
 * Keeping the two apart is what lets `ChunkCounter` handle streamed text: it only has to decide when a
 * run is complete, never how to validate it.
 */
export interface Detector {
  readonly kind: DetectorKind;
  /** Candidate runs; must carry the `g` and `u` flags. Lookbehind may be used, lookahead only of fixed length. */
  readonly pattern: RegExp;
  /** Longest partial candidate that may not match the pattern yet; the chunk counter keeps this many trailing characters. */
  readonly window: number;
  /** Number of real matches in one candidate run; `next` is the character following it ('' at the end of the text). */
  evaluate(candidate: string, next: string): number;
}

/**
 * What "whole word" boundaries are made of: digits, underscore, and letters of scripts that separate words
 * with spaces. Han, kana, Hangul and Thai are left out on purpose: Chinese text writes
 * "身份证号11010519491231002X" with no space, and a boundary there would hide the number.
 */
const WORD_CLASS = '[\\p{N}_\\p{Script=Latin}\\p{Script=Greek}\\p{Script=Cyrillic}]';
const WORD_CHAR = new RegExp(WORD_CLASS, 'u');
/** Regex source: not preceded / not followed by a word character. */
const NOT_AFTER_WORD = `(?<!${WORD_CLASS})`;
const NOT_BEFORE_WORD = `(?!${WORD_CLASS})`;
function isWordChar(ch: string): boolean {
  return ch !== '' && WORD_CHAR.test(ch);
}

// ---------------------------------------------------------------------------------------------
// Payment cards
// ---------------------------------------------------------------------------------------------

/** Luhn (mod 10) over a string of ASCII digits. */
export function luhnValid(digits: string): boolean {
  if (!/^\d+$/.test(digits)) return false;
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

export type CardBrand = 'visa' | 'mastercard' | 'amex' | 'discover' | 'jcb' | 'unionpay';

/**
 * Issuer (IIN) prefix and length check. Without it every Luhn-valid 16-digit number (one in ten) would
 * count as a card; with it, order numbers and phone numbers rarely do.
 */
export function cardBrand(digits: string): CardBrand | null {
  const n = digits.length;
  const p2 = Number(digits.slice(0, 2));
  const p3 = Number(digits.slice(0, 3));
  const p4 = Number(digits.slice(0, 4));
  if (digits.startsWith('4') && (n === 13 || n === 16 || n === 19)) return 'visa';
  if (((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) && n === 16) return 'mastercard';
  if ((p2 === 34 || p2 === 37) && n === 15) return 'amex';
  if ((p4 === 6011 || p2 === 65 || (p3 >= 644 && p3 <= 649)) && n >= 16 && n <= 19) return 'discover';
  if (p4 >= 3528 && p4 <= 3589 && n >= 16 && n <= 19) return 'jcb';
  if (p2 === 62 && n >= 16 && n <= 19) return 'unionpay';
  return null;
}

/** One card number, separators (single spaces or dashes between digit groups) allowed. */
export function isCardNumber(s: string): boolean {
  if (!/^\d+(?:[ -]\d+)*$/.test(s)) return false;
  const digits = s.replace(/[ -]/g, '');
  return digits.length >= 13 && digits.length <= 19 && cardBrand(digits) !== null && luhnValid(digits);
}

/**
 * Counts the matches in a run split into groups, left to right and never overlapping: `lastOfMatchAt(i)` is
 * the index of the last group of the match that starts at group i, or -1 when none starts there.
 */
function countFromLeft(groups: number, lastOfMatchAt: (i: number) => number): number {
  let count = 0;
  let i = 0;
  while (i < groups) {
    const end = lastOfMatchAt(i);
    if (end >= 0) {
      count++;
      i = end + 1;
    } else {
      i++;
    }
  }
  return count;
}

/**
 * Cards in one run of digit groups. A run such as "4111111111111111 5500000000000004" holds two cards,
 * so groups are combined greedily: from each group, the longest combination of following groups that is
 * a valid card wins, and the search resumes after it.
 */
function cardsInRun(run: string, next: string): number {
  // A card needs 13 digits and a run has no more digits than characters: most runs (a line number, a
  // date) are settled here without splitting them.
  if (run.length < 13) return 0;
  const groups = run.split(/[ -]/);
  // A last group glued to a letter ("…1111abc") is part of a word, not a number.
  if (isWordChar(next)) groups.pop();
  return countFromLeft(groups.length, (i) => {
    let best = -1;
    let digits = '';
    for (let j = i; j < groups.length; j++) {
      digits += groups[j]!;
      if (digits.length > 19) break;
      if (digits.length >= 13 && cardBrand(digits) !== null && luhnValid(digits)) best = j;
    }
    return best;
  });
}

export const cardDetector: Detector = {
  kind: 'card',
  // No trailing lookahead: the run must stay maximal (a lookahead would make the engine backtrack into a shorter run).
  pattern: new RegExp(`${NOT_AFTER_WORD}\\d+(?:[ -]\\d+)*`, 'gu'),
  window: 64,
  evaluate: cardsInRun,
};

export function countCards(text: string): number {
  return countMatches(cardDetector, text);
}

// ---------------------------------------------------------------------------------------------
// Chinese resident identity card (GB 11643-1999)
// ---------------------------------------------------------------------------------------------

/** Province-level prefixes of the 6-digit administrative division code (GB/T 2260), plus 71/81/82/83/91 for Taiwan, HK, Macau residents and abroad. */
const CN_PROVINCES = new Set([
  11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91,
]);
const CN_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CN_CHECK = '10X98765432';

/** ISO 7064 MOD 11-2 check character for the first 17 digits. */
export function cnIdCheckChar(first17: string): string {
  let sum = 0;
  for (let i = 0; i < 17; i++) sum += (first17.charCodeAt(i) - 48) * CN_WEIGHTS[i]!;
  return CN_CHECK[sum % 11]!;
}

/** A real calendar date from 1800 up to today: a birth date in the future cannot be on an ID card. */
function validBirthDate(yyyymmdd: string, nowMs: number): boolean {
  const y = Number(yyyymmdd.slice(0, 4));
  const m = Number(yyyymmdd.slice(4, 6));
  const d = Number(yyyymmdd.slice(6, 8));
  if (y < 1800 || m < 1 || m > 12 || d < 1) return false;
  const t = Date.UTC(y, m - 1, d);
  const dt = new Date(t);
  return dt.getUTCFullYear() === y && dt.getUTCMonth() === m - 1 && dt.getUTCDate() === d && t <= nowMs;
}

/** 18 characters: region (known province prefix), birth date, 3-digit sequence, MOD 11-2 check (0-9 or X). */
export function isCnResidentId(s: string, nowMs = Date.now()): boolean {
  if (!/^\d{17}[\dXx]$/.test(s)) return false;
  if (!CN_PROVINCES.has(Number(s.slice(0, 2)))) return false;
  if (!validBirthDate(s.slice(6, 14), nowMs)) return false;
  return cnIdCheckChar(s.slice(0, 17)) === s[17]!.toUpperCase();
}

export const cnIdDetector: Detector = {
  kind: 'cn_id',
  // Fixed length, so the lookahead cannot make the engine settle for a shorter run.
  pattern: new RegExp(`${NOT_AFTER_WORD}\\d{17}[\\dXx]${NOT_BEFORE_WORD}`, 'gu'),
  window: 32,
  evaluate: (candidate) => (isCnResidentId(candidate) ? 1 : 0),
};

export function countCnIds(text: string): number {
  return countMatches(cnIdDetector, text);
}

// ---------------------------------------------------------------------------------------------
// IBAN (ISO 13616)
// ---------------------------------------------------------------------------------------------

/** Total IBAN length per country: the EU/EEA, GB, CH and a few common others (SWIFT IBAN registry). */
export const IBAN_LENGTHS: Readonly<Record<string, number>> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BR: 29, CH: 21, CR: 22, CY: 28, CZ: 24, DE: 22, DK: 18,
  DO: 28, EE: 20, EG: 29, ES: 24, FI: 18, FO: 18, FR: 27, GB: 22, GE: 22, GI: 23, GL: 18, GR: 27, HR: 21, HU: 28, IE: 22, IL: 23,
  IS: 26, IT: 27, JO: 30, KW: 30, KZ: 20, LB: 28, LI: 21, LT: 20, LU: 20, LV: 21, MC: 27, MD: 24, ME: 22, MK: 19, MT: 31, MU: 30,
  NL: 18, NO: 15, PK: 24, PL: 28, PS: 29, PT: 25, QA: 29, RO: 24, RS: 22, SA: 24, SE: 24, SI: 19, SK: 24, SM: 27, TN: 24, TR: 26,
  UA: 29, VA: 22, VG: 24, XK: 20,
}; // prettier-ignore

/** ISO 7064 MOD 97-10 over the rearranged IBAN (letters A=10 … Z=35), done piecewise to stay within doubles. */
export function ibanMod97(compact: string): number {
  const rearranged = compact.slice(4) + compact.slice(0, 4);
  let rem = 0;
  for (const ch of rearranged) {
    const code = ch.charCodeAt(0);
    const v = code >= 65 ? code - 55 : code - 48;
    rem = v >= 10 ? (rem * 100 + v) % 97 : (rem * 10 + v) % 97;
  }
  return rem;
}

/** Either compact ("DE89370400440532013000") or printed in groups of four ("DE89 3704 0044 0532 0130 00"). */
export function isIban(s: string): boolean {
  const groups = s.split(' ');
  if (groups.length > 1) {
    // Printed form: every group but the last has exactly four characters, the last one to four.
    for (let i = 0; i < groups.length; i++) {
      const len = groups[i]!.length;
      if (i < groups.length - 1 ? len !== 4 : len < 1 || len > 4) return false;
    }
  }
  const compact = groups.join('');
  if (!/^[A-Z]{2}\d{2}[A-Z0-9]+$/.test(compact)) return false;
  const expected = IBAN_LENGTHS[compact.slice(0, 2)];
  return expected === compact.length && ibanMod97(compact) === 1;
}

/**
 * IBANs in one run of upper-case alphanumeric groups. The run may carry words after the IBAN
 * ("DE89 … 00 BIC COBADEFF") or a second IBAN, so each group that looks like the start of an IBAN is
 * tried with the country's length: either as one compact token or as four-character groups.
 */
function ibansInRun(run: string, next: string): number {
  const tokens = run.split(' ');
  const glued = isWordChar(next);
  return countFromLeft(tokens.length, (i) => {
    const tok = tokens[i]!;
    const len = /^[A-Z]{2}\d{2}/.test(tok) ? IBAN_LENGTHS[tok.slice(0, 2)] : undefined;
    let end = -1; // index of the last token of a valid IBAN starting at i
    if (len !== undefined) {
      if (tok.length === len) {
        if (isIban(tok)) end = i;
      } else if (tok.length === 4) {
        let acc = 4;
        let j = i;
        while (acc < len && j + 1 < tokens.length && tokens[j]!.length === 4) {
          j++;
          acc += tokens[j]!.length;
        }
        if (acc === len && isIban(tokens.slice(i, j + 1).join(' '))) end = j;
      }
    }
    // An IBAN whose last group runs into a word ("…3000abc") is not a standalone IBAN.
    return glued && end === tokens.length - 1 ? -1 : end;
  });
}

export const ibanDetector: Detector = {
  kind: 'iban',
  pattern: new RegExp(`${NOT_AFTER_WORD}[A-Z]{2}\\d{2}[A-Z0-9]*(?: [A-Z0-9]+)*`, 'gu'),
  window: 64,
  evaluate: ibansInRun,
};

export function countIbans(text: string): number {
  return countMatches(ibanDetector, text);
}

// ---------------------------------------------------------------------------------------------
// US social security number
// ---------------------------------------------------------------------------------------------

/** AAA-GG-SSSS with the same separator (dash or space) twice; areas 000, 666 and 900-999, group 00 and serial 0000 are never issued. */
export function isUsSsn(s: string): boolean {
  const m = /^(\d{3})([- ])(\d{2})\2(\d{4})$/.exec(s);
  if (!m) return false;
  const area = Number(m[1]);
  if (area === 0 || area === 666 || area >= 900) return false;
  return m[3] !== '00' && m[4] !== '0000';
}

export const usSsnDetector: Detector = {
  kind: 'us_ssn',
  // Not part of a longer dash-joined number ("123-45-6789-0001" is a reference, not an SSN).
  pattern: new RegExp(`${NOT_AFTER_WORD}(?<!\\d-)\\d{3}([- ])\\d{2}\\1\\d{4}${NOT_BEFORE_WORD}(?!-\\d)`, 'gu'),
  window: 32,
  evaluate: (candidate) => (isUsSsn(candidate) ? 1 : 0),
};

export function countUsSsns(text: string): number {
  return countMatches(usSsnDetector, text);
}

// ---------------------------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------------------------

/** Whitespace inside a keyword matches up to this many whitespace characters (line wraps, double spaces). */
const MAX_GAP = 16;

function keywordAlternative(keyword: string): string {
  const words = keyword
    .trim()
    .split(/\s+/)
    .map((w) => w.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'));
  const first = keyword.trim()[0] ?? '';
  const last = keyword.trim().slice(-1);
  // A keyword edge that is not a word character ("机密", "#tag") needs no boundary on that side.
  const before = isWordChar(first) ? NOT_AFTER_WORD : '';
  const after = isWordChar(last) ? NOT_BEFORE_WORD : '';
  return `${before}${words.join(`\\s{1,${MAX_GAP}}`)}${after}`;
}

/**
 * Case-insensitive whole-word keyword list. Longer keywords are tried first so "TOP SECRET" wins over
 * "TOP"; each occurrence counts once.
 */
export function keywordDetector(keywords: readonly string[]): Detector {
  const list = [...new Set(keywords.map((k) => k.trim()).filter((k) => k.length > 0))].sort((a, b) => b.length - a.length);
  if (list.length === 0) throw new Error('keyword detector needs at least one non-empty keyword');
  const longest = Math.max(...list.map((k) => k.length + (k.split(/\s+/).length - 1) * MAX_GAP));
  return {
    kind: 'keywords',
    pattern: new RegExp(`(?:${list.map(keywordAlternative).join('|')})`, 'giu'),
    window: Math.max(64, longest + 8),
    evaluate: () => 1,
  };
}

export function countKeywords(text: string, keywords: readonly string[]): number {
  return countMatches(keywordDetector(keywords), text);
}

// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

export function createDetector(kind: DetectorKind, keywords?: readonly string[]): Detector {
  switch (kind) {
    case 'card':
      return cardDetector;
    case 'cn_id':
      return cnIdDetector;
    case 'iban':
      return ibanDetector;
    case 'us_ssn':
      return usSsnDetector;
    case 'keywords':
      return keywordDetector(keywords ?? []);
  }
}

/** Matches of one detector in a complete text. */
export function countMatches(detector: Detector, text: string): number {
  let count = 0;
  for (const m of text.matchAll(detector.pattern)) {
    count += detector.evaluate(m[0], text[m.index + m[0].length] ?? '');
  }
  return count;
}

/** Characters before the kept tail that only serve as lookbehind context; candidates starting there were already judged. */
const CONTEXT = 8;
/** A candidate ending this close to the end of the data seen so far may still grow ("4111 " + "1111"). */
const HOLD = 4;
/** Longest candidate carried over to the next chunk; a longer one is judged as it stands, which bounds memory. */
const MAX_CARRY = 8192;

/**
 * Counts matches over text that arrives in chunks, so that a number split across two chunks is found
 * exactly once. Candidates that touch the end of the data seen so far are deferred and re-found in the
 * next chunk together with the trailing `window` characters; `judgedUpTo` (an absolute offset) keeps a
 * candidate that was already judged from being counted again when the kept tail is scanned a second time.
 */
export class ChunkCounter {
  readonly detector: Detector;
  private buf = '';
  /** Absolute offset of buf[0] in the whole text. */
  private base = 0;
  /** Leading characters of buf that are lookbehind context only. */
  private ctx = 0;
  private judgedUpTo = 0;
  private total = 0;
  private ended = false;

  constructor(detector: Detector) {
    this.detector = detector;
  }

  get count(): number {
    return this.total;
  }

  push(chunk: string): void {
    if (this.ended) throw new Error('ChunkCounter: push after end');
    if (chunk.length === 0) return;
    this.process(this.buf + chunk, false);
  }

  /** Judges the deferred tail and returns the final count. */
  end(): number {
    if (!this.ended) {
      this.process(this.buf, true);
      this.ended = true;
      this.buf = '';
    }
    return this.total;
  }

  private process(text: string, final: boolean): void {
    let deferFrom = -1;
    for (const m of text.matchAll(this.detector.pattern)) {
      const start = m.index;
      const end = start + m[0].length;
      if (start < this.ctx || this.base + start < this.judgedUpTo) continue;
      if (!final && end > text.length - HOLD && text.length - start <= MAX_CARRY) {
        deferFrom = start;
        break;
      }
      this.total += this.detector.evaluate(m[0], text[end] ?? '');
      this.judgedUpTo = this.base + end;
    }
    if (final) return;
    let keepFrom = Math.max(0, text.length - this.detector.window);
    if (deferFrom >= 0) keepFrom = Math.min(keepFrom, deferFrom);
    const ctxFrom = Math.max(0, keepFrom - CONTEXT);
    this.buf = text.slice(ctxFrom);
    this.ctx = keepFrom - ctxFrom;
    this.base += ctxFrom;
  }
}
