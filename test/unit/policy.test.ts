// Table-driven tests of the verdict policy: every actionCode, every DLP error class, configured overrides and the loop rule.
import { describe, expect, it } from 'vitest';
import { decide, loopRule, renderHeaders, type DlpOutcome, type PolicySettings } from '../../src/policy/policy.js';
import { loadConfig } from '../../src/config/load.js';
import type { DlpErrorClass } from '../../src/dlp/parse.js';

const QID = '0f8fad5b-d9cb-469f-a165-70867728950e';

function settings(overrides: Record<string, unknown> = {}): PolicySettings {
  const cfg = loadConfig({ file: undefined, env: {}, overrides: { policy: overrides } });
  return cfg.policy;
}

const verdictHeaders = (code: string, label: string) => [
  ['X-DLP-Relay-Scanned', QID],
  ['X-DLP-Query-ID', QID],
  ['X-DLP-Action-Code', code],
  ['X-DLP-Action', label],
];

describe('default verdict table', () => {
  const s = settings();
  const rows: Array<{ code: number; expect: Record<string, unknown> }> = [
    { code: 1, expect: { action: 'relay', label: 'relay', headers: verdictHeaders('1', 'relay') } },
    {
      code: 2,
      expect: { action: 'reject', reply: { code: 550, enhanced: '5.7.1', text: `Message rejected by data-loss-prevention policy (ref ${QID})` } },
    },
    { code: 3, expect: { action: 'quarantine', reason: 'dlp:3', reply: { code: 250, enhanced: '2.0.0', text: `Ok: message held for review (ref ${QID})` } } },
    { code: 4, expect: { action: 'quarantine', reason: 'dlp:4' } },
    { code: 5, expect: { action: 'relay', label: 'relay-encrypt', headers: [...verdictHeaders('5', 'relay-encrypt'), ['X-DLP-Encrypt', 'required']] } },
    { code: 6, expect: { action: 'quarantine', reason: 'dlp:6' } },
    { code: 7, expect: { action: 'relay', label: 'relay', headers: verdictHeaders('7', 'relay') } },
    { code: 8, expect: { action: 'relay', label: 'relay-encrypt', headers: [...verdictHeaders('8', 'relay-encrypt'), ['X-DLP-Encrypt', 'required']] } },
    { code: 9, expect: { action: 'relay', label: 'relay', headers: verdictHeaders('9', 'relay') } },
  ];
  it.each(rows)('actionCode $code', ({ code, expect: e }) => {
    expect(decide({ kind: 'verdict', actionCode: code }, QID, s)).toMatchObject(e);
  });

  it('an unknown actionCode is quarantined', () => {
    const d = decide({ kind: 'error', errorClass: 'unknown_action', actionCode: 42 }, QID, s);
    expect(d).toMatchObject({ action: 'quarantine', reason: 'unknown-action:42' });
  });

  const errorClasses: DlpErrorClass[] = ['auth', 'client_error', 'server_error', 'timeout', 'unreachable', 'bad_response', 'saturated'];
  it.each(errorClasses)('DLP error %s tempfails with 451 4.7.1 and the queryID', (errorClass) => {
    const d = decide({ kind: 'error', errorClass }, QID, s);
    expect(d).toEqual({
      action: 'tempfail',
      label: 'tempfail',
      reply: { code: 451, enhanced: '4.7.1', text: `Content inspection unavailable, try again later (ref ${QID})` },
    });
  });

  it('the reject text carries no policy internals', () => {
    const d = decide({ kind: 'verdict', actionCode: 2 }, QID, s);
    expect(d.action === 'reject' && d.reply.text).not.toMatch(/PCI|card|policy name/i);
  });
});

describe('configured behaviour', () => {
  const cases: Array<{ name: string; policy: Record<string, unknown>; outcome: DlpOutcome; expect: Record<string, unknown> }> = [
    { name: 'onDlpError relay marks unscanned', policy: { onDlpError: 'relay' }, outcome: { kind: 'error', errorClass: 'timeout' }, expect: { action: 'relay', label: 'relay-unscanned', headers: verdictHeaders('none', 'relay-unscanned') } },
    { name: 'onDlpError quarantine', policy: { onDlpError: 'quarantine' }, outcome: { kind: 'error', errorClass: 'auth' }, expect: { action: 'quarantine', reason: 'dlp-error:auth', label: 'quarantine-unscanned' } },
    { name: 'custom reject code and text', policy: { actions: { '2': { action: 'reject', code: 554, enhanced: '5.7.0', text: 'Blocked, ref {queryId}' } } }, outcome: { kind: 'verdict', actionCode: 2 }, expect: { reply: { code: 554, enhanced: '5.7.0', text: `Blocked, ref ${QID}` } } },
    { name: 'code 6 remapped to reject keeps others', policy: { actions: { '6': { action: 'reject' } } }, outcome: { kind: 'verdict', actionCode: 6 }, expect: { action: 'reject', reply: { code: 550, enhanced: '5.7.1' } } },
    { name: 'code 1 remapped to tempfail', policy: { actions: { '1': { action: 'tempfail', code: 450, enhanced: '4.7.0' } } }, outcome: { kind: 'verdict', actionCode: 1 }, expect: { action: 'tempfail', reply: { code: 450, enhanced: '4.7.0' } } },
    { name: 'unknown action relayed when configured', policy: { unknownAction: { action: 'relay' } }, outcome: { kind: 'error', errorClass: 'unknown_action', actionCode: 77 }, expect: { action: 'relay', label: 'unknown-relay' } },
    { name: 'renamed verdict headers', policy: { verdictHeaders: { queryId: 'X-Scan-Id', actionCode: 'X-Scan-Code', action: 'X-Scan-Action' }, encryptionHeader: { name: 'X-Encrypt-Route', value: 'tls-gw' } }, outcome: { kind: 'verdict', actionCode: 5 }, expect: { headers: [['X-DLP-Relay-Scanned', QID], ['X-Scan-Id', QID], ['X-Scan-Code', '5'], ['X-Scan-Action', 'relay-encrypt'], ['X-Encrypt-Route', 'tls-gw']] } },
    { name: 'skipped scan relays without new headers', policy: {}, outcome: { kind: 'skipped' }, expect: { action: 'relay', label: 'relay-loop-skip', headers: [] } },
  ];
  it.each(cases)('$name', ({ policy, outcome, expect: e }) => {
    expect(decide(outcome, QID, settings(policy))).toMatchObject(e);
  });

  it('other codes keep defaults when one is overridden', () => {
    const s = settings({ actions: { '6': { action: 'reject' } } });
    expect(decide({ kind: 'verdict', actionCode: 3 }, QID, s)).toMatchObject({ action: 'quarantine' });
  });
});

describe('loop rule', () => {
  it.each([
    { has: false, trusted: false, rule: 'scan' },
    { has: false, trusted: true, rule: 'scan' },
    { has: true, trusted: true, rule: 'skip' },
    { has: true, trusted: false, rule: 'strip-and-scan' },
  ])('header=$has trusted=$trusted → $rule', ({ has, trusted, rule }) => {
    expect(loopRule(has, trusted)).toBe(rule);
  });
});

describe('renderHeaders', () => {
  it('writes CRLF lines and never lets a value break a line', () => {
    expect(renderHeaders([['X-A', 'one'], ['X-B', 'two\r\nInjected: yes']]).toString()).toBe('X-A: one\r\nX-B: two  Injected: yes\r\n');
  });
});
