// Mitigation validation rules from the vendor docs, batch-file parsing (JSON and CSV), and blocked-list value checks.
import { describe, expect, it } from 'vitest';
import { isIsoDateTime, loadMitigationBatch, parseCsv, validateMitigationItems, type ValidationProblem } from '../../src/cas/validate.js';
import { compareKey, isEmailAddress, isHttpUrl, itemProblem, normalizeItem } from '../../src/cas/items.js';
import { blockRules } from '../../src/cas/cli.js';

const ok = {
  action_type: 'MAIL_QUARANTINE',
  service: 'exchange',
  account_provider: 'office365',
  mailbox: 'user2@example2.com',
  mail_message_id: '<RK0PR06MB@example2.com>',
  mail_unique_id: 'BAMkAGRhODQy=',
  mail_message_delivery_time: '2019-03-15T07:45:27.000Z',
};
const restore = {
  action_type: 'MAIL_RESTORE',
  service: 'exchange',
  account_provider: 'office365',
  mailbox: 'user3@example3.onmicrosoft.com',
  detection_time: '2021-10-25T09:51:26.697Z',
  mail_unique_id: 'AAkALgAAAAAAHYQDEapmEc2byACqAC',
  mail_log_id: '1d9f27ea-3579-11ec-8159-00224809f763',
};
const gmailDelete = { action_type: 'MAIL_DELETE', service: 'gmail', account_provider: 'google', mailbox: 'user1@example1.com', mail_unique_id: 'AAMk=' };

const fields = (ps: ValidationProblem[]) => ps.map((p) => `${p.index}:${p.field}`).sort();

describe('validateMitigationItems', () => {
  it('accepts the three documented examples', () => {
    const r = validateMitigationItems([gmailDelete, ok, restore]);
    expect(r.problems).toEqual([]);
    expect(r.items).toHaveLength(3);
    expect(r.items[0]).toEqual(gmailDelete);
  });

  it('rejects a non-array and an empty batch', () => {
    expect(validateMitigationItems({}).problems[0]?.index).toBe(-1);
    expect(validateMitigationItems([]).problems[0]?.message).toMatch(/empty/);
  });

  it('requires action_type, service, account_provider and mailbox, with exact enums', () => {
    const r = validateMitigationItems([{ mail_message_id: '<a@b>' }, { ...ok, action_type: 'mail_delete', service: 'outlook', account_provider: 'Google' }]);
    expect(fields(r.problems)).toEqual(['0:account_provider', '0:action_type', '0:mailbox', '0:service', '1:account_provider', '1:action_type', '1:service']);
    expect(r.items).toEqual([]);
  });

  it('needs at least one of mail_message_id and mail_unique_id (empty strings count as absent)', () => {
    const { mail_message_id: _a, mail_unique_id: _b, ...none } = ok;
    expect(fields(validateMitigationItems([none]).problems)).toEqual(['0:mail_message_id']);
    expect(fields(validateMitigationItems([{ ...none, mail_message_id: '  ' }]).problems)).toEqual(['0:mail_message_id']);
    expect(validateMitigationItems([{ ...none, mail_unique_id: 'X=' }]).problems).toEqual([]);
    expect(validateMitigationItems([{ ...none, mail_message_id: '<x@y>' }]).problems).toEqual([]);
  });

  it('allows only MAIL_DELETE for Gmail', () => {
    const r = validateMitigationItems([{ ...gmailDelete, action_type: 'MAIL_QUARANTINE' }]);
    expect(r.problems).toHaveLength(1);
    expect(r.problems[0]).toMatchObject({ index: 0, field: 'action_type' });
    expect(r.problems[0]!.message).toMatch(/Gmail supports only MAIL_DELETE/);
  });

  it('restricts MAIL_RESTORE to Exchange and requires detection_time and mail_log_id', () => {
    const { detection_time: _d, mail_log_id: _l, ...bare } = restore;
    expect(fields(validateMitigationItems([bare]).problems)).toEqual(['0:detection_time', '0:mail_log_id']);
    const gmail = validateMitigationItems([{ ...restore, service: 'gmail', account_provider: 'google' }]).problems;
    expect(fields(gmail)).toEqual(['0:action_type', '0:service']);
  });

  it('checks service/provider pairing, mailbox syntax, ISO 8601 times and unknown fields', () => {
    const r = validateMitigationItems([
      { ...ok, account_provider: 'google' },
      { ...ok, mailbox: 'not-an-address' },
      { ...ok, mail_message_delivery_time: '15.03.2019 07:45' },
      { ...restore, detection_time: '2021-02-30T00:00:00Z' },
      { ...ok, mail_messge_id: '<typo@x>' },
      { ...ok, mailbox: 42 },
    ]);
    expect(fields(r.problems)).toEqual([
      '0:account_provider',
      '1:mailbox',
      '2:mail_message_delivery_time',
      '3:detection_time',
      '4:mail_messge_id',
      '5:mailbox',
    ]);
  });

  it('reports every problem of every item, not just the first', () => {
    const r = validateMitigationItems([ok, { action_type: 'MAIL_RESTORE', service: 'gmail' }, 'junk', restore]);
    const idx = new Set(r.problems.map((p) => p.index));
    expect([...idx].sort()).toEqual([1, 2]);
    expect(r.problems.filter((p) => p.index === 1).length).toBeGreaterThanOrEqual(5);
  });
});

describe('isIsoDateTime', () => {
  it.each(['2019-12-19T21:12:37.000Z', '2019-12-19T21:12:37Z', '2021-10-25T09:51:26.697+02:00', '2024-02-29T00:00Z'])('accepts %s', (s) => {
    expect(isIsoDateTime(s)).toBe(true);
  });
  it.each(['2019-12-19', '2019-12-19T21:12:37', '2023-02-29T00:00:00Z', 'yesterday', '2019-13-01T00:00:00Z'])('rejects %s', (s) => {
    expect(isIsoDateTime(s)).toBe(false);
  });
});

describe('batch files', () => {
  it('reads a JSON array', () => {
    const r = loadMitigationBatch(JSON.stringify([ok, gmailDelete]));
    expect(r.problems).toEqual([]);
    expect(r.items).toHaveLength(2);
  });

  it('reports broken JSON and a non-array', () => {
    expect(loadMitigationBatch('[{"action_type":').problems[0]?.message).toMatch(/invalid JSON/);
    expect(loadMitigationBatch('{"a":1}').problems[0]?.message).toMatch(/array/);
  });

  it('reads CSV with a header row, quotes, CRLF, a BOM and empty optional cells', () => {
    const csv =
      '\uFEFFaction_type,service,account_provider,mailbox,mail_message_id,mail_unique_id,mail_message_delivery_time\r\n' +
      'MAIL_DELETE,gmail,google,user1@example1.com,,AAMk=,\r\n' +
      '\r\n' +
      'MAIL_QUARANTINE,exchange,office365,user2@example2.com,"<a,""b""@x>",,2019-03-15T07:45:27.000Z\r\n';
    const r = loadMitigationBatch(csv);
    expect(r.problems).toEqual([]);
    expect(r.items).toEqual([
      { action_type: 'MAIL_DELETE', service: 'gmail', account_provider: 'google', mailbox: 'user1@example1.com', mail_unique_id: 'AAMk=' },
      {
        action_type: 'MAIL_QUARANTINE',
        service: 'exchange',
        account_provider: 'office365',
        mailbox: 'user2@example2.com',
        mail_message_id: '<a,"b"@x>',
        mail_message_delivery_time: '2019-03-15T07:45:27.000Z',
      },
    ]);
  });

  it('reports unknown CSV columns and rule problems with row indexes', () => {
    const csv =
      'action_type,service,account_provider,mailbox,mail_message_id,colour\nMAIL_DELETE,gmail,google,a@b.example,<x@y>,red\nMAIL_RESTORE,exchange,office365,c@d.example,<x@y>,blue\n';
    const r = loadMitigationBatch(csv, 'csv');
    expect(r.items).toEqual([]);
    expect(r.problems).toContainEqual(expect.objectContaining({ index: -1, field: 'colour' }));
    expect(fields(r.problems.filter((p) => p.index >= 0))).toEqual(['1:detection_time', '1:mail_log_id']);
  });

  it('parses quoted newlines and reports an unterminated quote', () => {
    expect(parseCsv('a,b\n"x\ny",z\n').rows.map((r) => r.cells)).toEqual([
      ['a', 'b'],
      ['x\ny', 'z'],
    ]);
    expect(parseCsv('a\n"open').error).toMatch(/unterminated/);
  });
});

describe('blocked-list values', () => {
  it('checks the four formats', () => {
    expect(isEmailAddress('user1@example1.com')).toBe(true);
    expect(isEmailAddress('no-at-sign')).toBe(false);
    expect(isEmailAddress('a..b@x.example')).toBe(false);
    expect(isHttpUrl('https://test.example.com')).toBe(true);
    expect(isHttpUrl('ftp://test.example.com')).toBe(false);
    expect(isHttpUrl('test.example.com')).toBe(false);
    expect(itemProblem('filehashes', 'f3cdddb37f6a933d6a256bd98b4bc703a448c677')).toBeNull();
    expect(itemProblem('filehashes', 'f3cd')).toMatch(/SHA-1/);
    expect(itemProblem('file256hashes', '2eb49162d4977bd96d6918a7602b5451adfd2c498c44592574b5741b3b585fc6')).toBeNull();
    expect(itemProblem('file256hashes', 'f3cdddb37f6a933d6a256bd98b4bc703a448c677')).toMatch(/SHA-256/);
  });

  it('normalises case except in URLs, and compares URLs the way CAS echoes them', () => {
    expect(normalizeItem('senders', ' Bad@Evil.Example ')).toBe('bad@evil.example');
    expect(normalizeItem('filehashes', 'ABCDEF')).toBe('abcdef');
    expect(normalizeItem('urls', 'https://X.example/Path')).toBe('https://X.example/Path');
    expect(compareKey('urls', 'https://Test.Example.com')).toBe(compareKey('urls', 'test.example.com/'));
    expect(compareKey('urls', 'https://a.example/P')).not.toBe(compareKey('urls', 'https://a.example/p'));
  });

  it('lists every bad CLI value at once and de-duplicates good ones', () => {
    const r = blockRules({
      sender: ['ok@x.example', 'OK@x.example', 'bad'],
      url: ['https://u.example', 'javascript:alert(1)'],
      sha1: ['f3cdddb37f6a933d6a256bd98b4bc703a448c677', 'xyz'],
      sha256: ['00'],
    });
    expect(r.problems).toHaveLength(4);
    expect(r.problems.join('\n')).toMatch(/--sender "bad"/);
    expect(r.problems.join('\n')).toMatch(/--url "javascript:alert\(1\)"/);
    expect(r.problems.join('\n')).toMatch(/--sha1 "xyz"/);
    expect(r.problems.join('\n')).toMatch(/--sha256 "00"/);
    expect(r.rules.senders).toEqual(['ok@x.example']);
  });
});
