// The simulators' own request checks (written from the vendor references) against the reference vectors, and the
// client against them: client and simulator must each agree with the document, not merely with each other.
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkSkgAuth } from '../../src/engine/verify-auth.js';
import { ucwiAuthHeaders } from '../../src/dlp/auth.js';
import { MAX_ITEMS_PER_REQUEST_LIST, REMEDIATION_LISTS, mitigationItemProblems, remediationItemProblem } from '../sim/cas/wire-rules.js';
import { CAS_LISTS, MAX_ITEMS_PER_LIST, itemProblem } from '../../src/cas/items.js';
import { validateMitigationItems } from '../../src/cas/validate.js';

// shared/reference/ucwi.md §1 test vector.
const AK = 'AK_EXAMPLE';
const SK = 'SK_EXAMPLE';
const TS = '1700000000';
const VECTOR = 'SKG AK_EXAMPLE:4a80702b685e5f38ac7e5b1868b9fefcc9bf794256ce08f08cfb621f30d17efc';
const NOW = 1_700_000_000_000;

describe('UCWI simulator signature check (ucwi.md §1)', () => {
  it('accepts the reference vector, with header names in any case', () => {
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, { accessKey: AK, secretKey: SK }, NOW)).toEqual({ ok: true });
    expect(checkSkgAuth({ Authorization: VECTOR, 'X-Skg-Timestamp': TS }, { accessKey: AK, secretKey: SK }, NOW)).toEqual({ ok: true });
  });

  it('a MAC remembered for one secret and timestamp never answers for another (the check caches the last one)', () => {
    const keys = { accessKey: AK, secretKey: SK };
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, keys, NOW)).toEqual({ ok: true });
    // Same access key and timestamp, other secret: the remembered MAC must not be reused.
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, { accessKey: AK, secretKey: 'OTHER' }, NOW)).toEqual({
      ok: false,
      reason: 'bad_signature',
    });
    const ts2 = String(Number(TS) + 1);
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': ts2 }, keys, NOW)).toEqual({ ok: false, reason: 'bad_signature' });
    expect(checkSkgAuth(ucwiAuthHeaders(AK, SK, NOW + 1000), keys, NOW)).toEqual({ ok: true });
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, keys, NOW)).toEqual({ ok: true });
  });

  it('the client signs exactly the reference vector', () => {
    expect(ucwiAuthHeaders(AK, SK, NOW)).toEqual({ 'x-skg-timestamp': TS, authorization: VECTOR });
  });

  it('refuses the schemes the vendor prose describes but its code does not use, a flipped digit, skew and a foreign key', () => {
    const keys = { accessKey: AK, secretKey: SK };
    const prose1 = createHmac('sha256', SK)
      .update(SK + SK + TS)
      .digest('hex');
    const prose2 = createHmac('sha256', SK)
      .update(AK + SK + TS)
      .digest('hex');
    for (const mac of [prose1, prose2])
      expect(checkSkgAuth({ authorization: `SKG ${AK}:${mac}`, 'x-skg-timestamp': TS }, keys, NOW)).toEqual({ ok: false, reason: 'bad_signature' });
    const flipped = VECTOR.slice(0, -1) + (VECTOR.endsWith('c') ? 'd' : 'c');
    expect(checkSkgAuth({ authorization: flipped, 'x-skg-timestamp': TS }, keys, NOW)).toEqual({ ok: false, reason: 'bad_signature' });
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, keys, NOW + 301_000)).toEqual({ ok: false, reason: 'clock_skew' });
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, keys, NOW + 299_000)).toEqual({ ok: true });
    expect(checkSkgAuth({ authorization: VECTOR, 'x-skg-timestamp': TS }, { accessKey: 'OTHER', secretKey: SK }, NOW)).toEqual({
      ok: false,
      reason: 'unknown_key',
    });
    expect(checkSkgAuth({ 'x-skg-timestamp': TS }, keys, NOW)).toEqual({ ok: false, reason: 'missing' });
    expect(checkSkgAuth({ authorization: `Bearer ${VECTOR.slice(4)}`, 'x-skg-timestamp': TS }, keys, NOW)).toEqual({ ok: false, reason: 'malformed' });
  });
});

describe('CAS simulator body rules (cas.md §3, §5, §11)', () => {
  it('the client uses the documented list names and per-list limit', () => {
    expect([...CAS_LISTS]).toEqual([...REMEDIATION_LISTS]);
    expect(MAX_ITEMS_PER_LIST).toBe(MAX_ITEMS_PER_REQUEST_LIST);
  });

  it('accepts the reference examples and refuses malformed items', () => {
    const ok: Array<[(typeof REMEDIATION_LISTS)[number], string]> = [
      ['senders', 'user1@example1.com'],
      ['urls', 'https://test.example.com'],
      ['filehashes', 'f3cdddb37f6a933d6a256bd98b4bc703a448c677'],
      ['file256hashes', '2eb49162d4977bd96d6918a7602b5451adfd2c498c44592574b5741b3b585fc6'],
    ];
    for (const [list, v] of ok) expect(remediationItemProblem(list, v), `${list} ${v}`).toBeNull();
    const bad: Array<[(typeof REMEDIATION_LISTS)[number], string]> = [
      ['senders', 'not-an-address'],
      ['senders', 'a@b@c.example'],
      ['urls', 'test.example.com'],
      ['urls', 'ftp://test.example.com'],
      ['filehashes', '2eb49162d4977bd96d6918a7602b5451adfd2c498c44592574b5741b3b585fc6'],
      ['file256hashes', 'f3cdddb37f6a933d6a256bd98b4bc703a448c677'],
    ];
    for (const [list, v] of bad) {
      expect(remediationItemProblem(list, v), `${list} ${v}`).not.toBeNull();
      // What the simulator refuses, the client refuses before sending (it would cost a whole batch a 400).
      expect(itemProblem(list, v), `client ${list} ${v}`).not.toBeNull();
    }
  });

  it('mitigation items: the documented rules, and the client agrees on each case', () => {
    const base = { action_type: 'MAIL_QUARANTINE', service: 'exchange', account_provider: 'office365', mailbox: 'u@x.example', mail_unique_id: 'AAMk=' };
    const cases: Array<[Record<string, unknown>, boolean]> = [
      [base, true],
      [{ ...base, mail_unique_id: undefined, mail_message_id: '<m@x.example>' }, true],
      [{ ...base, mail_unique_id: undefined }, false],
      [{ ...base, service: 'gmail', account_provider: 'google' }, false],
      [{ ...base, service: 'gmail', account_provider: 'google', action_type: 'MAIL_DELETE' }, true],
      [{ ...base, account_provider: 'google' }, false],
      [{ ...base, action_type: 'MAIL_RESTORE' }, false],
      [{ ...base, action_type: 'MAIL_RESTORE', detection_time: '2019-03-15T07:44:27.000Z', mail_log_id: 'L1' }, true],
      [{ ...base, mail_message_delivery_time: '15.03.2019 07:45' }, false],
      [{ ...base, rule: 'x' }, false],
    ];
    for (const [item, valid] of cases) {
      const clean = JSON.parse(JSON.stringify(item)) as Record<string, unknown>;
      expect(mitigationItemProblems(clean).length === 0, JSON.stringify(clean)).toBe(valid);
      expect(validateMitigationItems([clean]).problems.length === 0, `client ${JSON.stringify(clean)}`).toBe(valid);
    }
  });
});
