// Differential test of the card detector's short-run shortcut: on random digit-heavy text, whole or cut into chunks, it counts what the unshortened evaluation counts.
import { describe, expect, it } from 'vitest';
import { cardBrand, cardDetector, ChunkCounter, countMatches, luhnValid, type Detector } from '../../src/engine/detectors.js';
import { rng } from '../helpers/rng.js';

/** The card evaluation as it was before the shortcut: every run is split and every combination of groups tried. */
function referenceCardsInRun(run: string, next: string): number {
  const groups = run.split(/[ -]/);
  if (next !== '' && /[\p{N}_\p{Script=Latin}\p{Script=Greek}\p{Script=Cyrillic}]/u.test(next)) groups.pop();
  let count = 0;
  let i = 0;
  while (i < groups.length) {
    let best = -1;
    let digits = '';
    for (let j = i; j < groups.length; j++) {
      digits += groups[j]!;
      if (digits.length > 19) break;
      if (digits.length >= 13 && cardBrand(digits) !== null && luhnValid(digits)) best = j;
    }
    if (best >= 0) {
      count++;
      i = best + 1;
    } else {
      i++;
    }
  }
  return count;
}

const reference: Detector = { ...cardDetector, evaluate: referenceCardsInRun };

const PIECES = [
  '4111',
  '1111',
  '111',
  '4',
  '5500',
  '0000',
  '0004',
  '378282246310005',
  '4111111111111111',
  '6011000990139424',
  ' ',
  '-',
  '  ',
  'x',
  'é',
  '\n',
  '12',
  '2026',
];

function randomText(r: () => number): string {
  let s = '';
  const n = 1 + Math.floor(r() * 30);
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(r() * PIECES.length)]!;
  return s;
}

function chunkedCount(d: Detector, text: string, r: () => number): number {
  const c = new ChunkCounter(d);
  for (let i = 0; i < text.length;) {
    const n = 1 + Math.floor(r() * 9);
    c.push(text.slice(i, i + n));
    i += n;
  }
  return c.end();
}

describe('card detector shortcut', () => {
  it('counts like the unshortened evaluation, whole and in chunks', () => {
    const r = rng(1128);
    let found = 0;
    for (let i = 0; i < 5000; i++) {
      const text = randomText(r);
      const expected = countMatches(reference, text);
      found += expected;
      expect(countMatches(cardDetector, text), JSON.stringify(text)).toBe(expected);
      const seed = Math.floor(r() * 1e9);
      expect(chunkedCount(cardDetector, text, rng(seed)), JSON.stringify(text)).toBe(chunkedCount(reference, text, rng(seed)));
    }
    // The inputs must exercise real matches, not only the shortcut.
    expect(found).toBeGreaterThan(500);
  });
});
