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
    { code: 4, expect: { action: 'remove-attachments', label: 'attachments-removed', reason: 'dlp:4', headers: verdictHeaders('4', 'attachments-removed') } },
    { code: 5, expect: { action: 'relay', label: 'relay-encrypt', headers: [...verdictHeaders('5', 'relay-encrypt'), ['X-DLP-Encrypt', 'required']] } },
    { code: 6, expect: { action: 'quarantine', reason: 'dlp:6' } },
    { code: 7, expect: { action: 'relay', label: 'relay-encrypt', headers: [...verdictHeaders('7', 'relay-encrypt'), ['X-DLP-Encrypt', 'required']] } },
    { code: 8, expect: { action: 'relay', label: 'relay-encrypt', headers: [...verdictHeaders('8', 'relay-encrypt'), ['X-DLP-Encrypt', 'required']] } },
    { code: 9, expect: { action: 'relay', label: 'relay-encrypt', headers: [...verdictHeaders('9', 'relay-encrypt'), ['X-DLP-Encrypt', 'required']] } },
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
    {
      name: 'onDlpError relay marks unscanned',
      policy: { onDlpError: 'relay' },
      outcome: { kind: 'error', errorClass: 'timeout' },
      expect: { action: 'relay', label: 'relay-unscanned', headers: verdictHeaders('none', 'relay-unscanned') },
    },
    {
      name: 'onDlpError quarantine',
      policy: { onDlpError: 'quarantine' },
      outcome: { kind: 'error', errorClass: 'auth' },
      expect: { action: 'quarantine', reason: 'dlp-error:auth', label: 'quarantine-unscanned' },
    },
    {
      name: 'custom reject code and text',
      policy: { actions: { '2': { action: 'reject', code: 554, enhanced: '5.7.0', text: 'Blocked, ref {queryId}' } } },
      outcome: { kind: 'verdict', actionCode: 2 },
      expect: { reply: { code: 554, enhanced: '5.7.0', text: `Blocked, ref ${QID}` } },
    },
    {
      name: 'code 6 remapped to reject keeps others',
      policy: { actions: { '6': { action: 'reject' } } },
      outcome: { kind: 'verdict', actionCode: 6 },
      expect: { action: 'reject', reply: { code: 550, enhanced: '5.7.1' } },
    },
    {
      name: 'code 1 remapped to tempfail',
      policy: { actions: { '1': { action: 'tempfail', code: 450, enhanced: '4.7.0' } } },
      outcome: { kind: 'verdict', actionCode: 1 },
      expect: { action: 'tempfail', reply: { code: 450, enhanced: '4.7.0' } },
    },
    {
      name: 'unknown action relayed when configured',
      policy: { unknownAction: { action: 'relay' } },
      outcome: { kind: 'error', errorClass: 'unknown_action', actionCode: 77 },
      expect: { action: 'relay', label: 'unknown-relay' },
    },
    {
      name: 'renamed verdict headers',
      policy: {
        verdictHeaders: { queryId: 'X-Scan-Id', actionCode: 'X-Scan-Code', action: 'X-Scan-Action' },
        encryptionHeader: { name: 'X-Encrypt-Route', value: 'tls-gw' },
      },
      outcome: { kind: 'verdict', actionCode: 5 },
      expect: {
        headers: [
          ['X-DLP-Relay-Scanned', QID],
          ['X-Scan-Id', QID],
          ['X-Scan-Code', '5'],
          ['X-Scan-Action', 'relay-encrypt'],
          ['X-Encrypt-Route', 'tls-gw'],
        ],
      },
    },
    {
      name: 'skipped scan relays without new headers',
      policy: {},
      outcome: { kind: 'skipped' },
      expect: { action: 'relay', label: 'relay-loop-skip', headers: [] },
    },
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
    expect(
      renderHeaders([
        ['X-A', 'one'],
        ['X-B', 'two\r\nInjected: yes'],
      ]).toString(),
    ).toBe('X-A: one\r\nX-B: two  Injected: yes\r\n');
  });
});

describe('monitor mode and verdict headers', () => {
  const loopOnly = [['X-DLP-Relay-Scanned', QID]];
  const rows: Array<{ name: string; policy: Record<string, unknown>; outcome: DlpOutcome; expect: Record<string, unknown> }> = [
    {
      name: 'monitor: a block relays, headers off by default',
      policy: { mode: 'monitor' },
      outcome: { kind: 'verdict', actionCode: 2 },
      expect: { action: 'relay', label: 'monitor-reject', wouldBe: 'reject', headers: loopOnly },
    },
    {
      name: 'monitor: quarantine relays',
      policy: { mode: 'monitor' },
      outcome: { kind: 'verdict', actionCode: 6 },
      expect: { action: 'relay', label: 'monitor-quarantine', wouldBe: 'quarantine' },
    },
    {
      name: 'monitor: attachment removal relays whole',
      policy: { mode: 'monitor' },
      outcome: { kind: 'verdict', actionCode: 4 },
      expect: { action: 'relay', label: 'monitor-attachments-removed' },
    },
    {
      name: 'monitor: encryption adds no route header',
      policy: { mode: 'monitor' },
      outcome: { kind: 'verdict', actionCode: 5 },
      expect: { action: 'relay', label: 'monitor-relay-encrypt', headers: loopOnly },
    },
    {
      name: 'monitor: a DLP error relays instead of 451',
      policy: { mode: 'monitor' },
      outcome: { kind: 'error', errorClass: 'timeout' },
      expect: { action: 'relay', label: 'monitor-tempfail', wouldBe: 'tempfail' },
    },
    {
      name: 'monitor with headers on',
      policy: { mode: 'monitor', headers: 'on' },
      outcome: { kind: 'verdict', actionCode: 2 },
      expect: { headers: [...verdictHeaders('2', 'monitor-reject')] },
    },
    {
      name: 'monitor: a loop skip stays a loop skip',
      policy: { mode: 'monitor' },
      outcome: { kind: 'skipped' },
      expect: { action: 'relay', label: 'relay-loop-skip', headers: [] },
    },
    {
      name: 'enforce with headers off keeps the loop and encryption headers',
      policy: { headers: 'off' },
      outcome: { kind: 'verdict', actionCode: 8 },
      expect: { action: 'relay', label: 'relay-encrypt', headers: [...loopOnly, ['X-DLP-Encrypt', 'required']] },
    },
    {
      name: 'enforce with headers off: no removal count header',
      policy: { headers: 'off' },
      outcome: { kind: 'verdict', actionCode: 4 },
      expect: { action: 'remove-attachments', headers: loopOnly, countHeader: null },
    },
    {
      name: 'enforce: removal count header by default',
      policy: {},
      outcome: { kind: 'verdict', actionCode: 4 },
      expect: { countHeader: 'X-DLP-Attachments-Removed' },
    },
    { name: 'enforce: a block still rejects', policy: { headers: 'on' }, outcome: { kind: 'verdict', actionCode: 2 }, expect: { action: 'reject' } },
  ];
  it.each(rows)('$name', ({ policy, outcome, expect: e }) => {
    const d = decide(outcome, QID, settings(policy));
    expect(d).toMatchObject(e);
    if (e['headers']) expect((d as { headers: unknown }).headers).toEqual(e['headers']);
  });
});

describe('route_to_gateway', () => {
  it('routes to the named gateway with the encryption header unless told not to', () => {
    const cfg = loadConfig({
      file: undefined,
      env: {},
      overrides: {
        gateways: { gw: { host: 'gw.example.test' } },
        policy: { actions: { '5': { action: 'route_to_gateway', gateway: 'gw' }, '7': { action: 'route_to_gateway', gateway: 'gw', header: false } } },
      },
    });
    const s = cfg.policy;
    expect(decide({ kind: 'verdict', actionCode: 5 }, QID, s)).toEqual({
      action: 'gateway',
      label: 'relay-gateway',
      gateway: 'gw',
      headers: [...verdictHeaders('5', 'relay-gateway'), ['X-DLP-Encrypt', 'required']],
    });
    expect(decide({ kind: 'verdict', actionCode: 7 }, QID, s)).toMatchObject({ action: 'gateway', headers: verdictHeaders('7', 'relay-gateway') });
    expect(decide({ kind: 'verdict', actionCode: 5 }, QID, { ...s, mode: 'monitor' })).toMatchObject({ action: 'relay', label: 'monitor-relay-gateway' });
  });
});
