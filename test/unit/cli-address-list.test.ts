// The send harness's own address-list parser: names, groups, quoted commas, comments.
import { describe, expect, it } from 'vitest';
import { parseAddressList } from '../../src/cli/address-list.js';

describe('parseAddressList', () => {
  it.each([
    ['a@example.test', ['a@example.test']],
    ['Alice <alice@example.test>', ['alice@example.test']],
    ['a@x.test, "B" <reject-b@example.test>', ['a@x.test', 'reject-b@example.test']],
    ['"Doe, John" <john@x.test>, jane@x.test', ['john@x.test', 'jane@x.test']],
    ['team: a@x.test, B <b@x.test>;, c@x.test', ['a@x.test', 'b@x.test', 'c@x.test']],
    ['undisclosed-recipients:;', []],
    ['a@x.test (Alice, (nested) comment), b@x.test', ['a@x.test', 'b@x.test']],
    ['"quoted \\" name" <q@x.test>', ['q@x.test']],
    ['"john doe"@x.test', ['"john doe"@x.test']],
    ['=?utf-8?q?J=C3=B6rg?= <joerg@x.test>', ['joerg@x.test']],
    ['postmaster', ['postmaster']],
    ['Just A Name', []],
    ['', []],
    [' , ,a@x.test,', ['a@x.test']],
    ['<>', []],
    ['Unclosed <u@x.test', ['u@x.test']],
  ])('%j', (value, expected) => {
    expect(parseAddressList(value)).toEqual(expected);
  });
});
