// Policy rules, table-driven: matching on sender, recipients, client network and AUTH user; first match wins; each rule's table, mode and headers; config validation; `policy test`.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, ConfigError } from '../../src/config/load.js';
import type { PolicySettings } from '../../src/policy/policy.js';
import { ruleMatches, selectRule, settingsFor, type PolicyRuleConfig, type RuleContext } from '../../src/policy/rules.js';
import { policyTest } from '../../src/cli/policy-commands.js';

const ctx = (o: Partial<RuleContext> = {}): RuleContext => ({
  sender: 'alice@corp.test',
  recipients: ['bob@partner.test'],
  clientAddress: '10.1.2.3',
  authUser: null,
  ...o,
});
const rule = (match: PolicyRuleConfig['match']): PolicyRuleConfig => ({ name: 'r', match });

describe('ruleMatches', () => {
  const rows: Array<[string, PolicyRuleConfig['match'], Partial<RuleContext>, boolean]> = [
    ['no criteria matches everything', {}, {}, true],
    ['sender address, exact and case-insensitive', { senders: ['Alice@Corp.test'] }, {}, true],
    ['sender address, other user', { senders: ['carol@corp.test'] }, {}, false],
    ['sender domain', { senders: ['corp.test'] }, {}, true],
    ['sender domain with @', { senders: ['@corp.test'] }, {}, true],
    ['sender subdomain', { senders: ['corp.test'] }, { sender: 'x@eu.corp.test' }, true],
    ['a domain is not a suffix match', { senders: ['corp.test'] }, { sender: 'x@evilcorp.test' }, false],
    ['null sender matches no sender list', { senders: ['corp.test'] }, { sender: '' }, false],
    ['any recipient', { recipients: ['partner.test'] }, { recipients: ['x@other.test', 'bob@partner.test'] }, true],
    ['any recipient, none matches', { recipients: ['partner.test'] }, { recipients: ['x@other.test'] }, false],
    ['all recipients, one outside', { recipients: ['partner.test'], allRecipients: true }, { recipients: ['x@other.test', 'bob@partner.test'] }, false],
    ['all recipients, all inside', { recipients: ['partner.test'], allRecipients: true }, { recipients: ['a@partner.test', 'b@eu.partner.test'] }, true],
    ['client network v4', { clientNetworks: ['10.0.0.0/8'] }, {}, true],
    ['client network v4, outside', { clientNetworks: ['192.168.0.0/16'] }, {}, false],
    ['client network, IPv4-mapped IPv6', { clientNetworks: ['10.0.0.0/8'] }, { clientAddress: '::ffff:10.9.9.9' }, true],
    ['client network v6', { clientNetworks: ['2001:db8::/32'] }, { clientAddress: '2001:db8::5' }, true],
    ['auth user', { authUsers: ['Scanner'] }, { authUser: 'scanner' }, true],
    ['auth user required, none given', { authUsers: ['scanner'] }, {}, false],
    ['every criterion must hold', { senders: ['corp.test'], clientNetworks: ['192.168.0.0/16'] }, {}, false],
    ['every criterion holds', { senders: ['corp.test'], recipients: ['partner.test'], clientNetworks: ['10.0.0.0/8'] }, {}, true],
  ];
  it.each(rows)('%s', (_n, match, c, want) => {
    expect(ruleMatches(rule(match), ctx(c))).toBe(want);
  });
});

function settings(policy: Record<string, unknown>): PolicySettings {
  return loadConfig({ file: undefined, env: {}, overrides: { policy } }).policy;
}

describe('first match wins, and the rule replaces table, mode and headers', () => {
  const s = settings({
    rules: [
      { name: 'legal-partner', match: { recipients: ['partner.test'] }, actions: { '2': { action: 'quarantine' } } },
      { name: 'pilot', match: { senders: ['pilot.corp.test'] }, mode: 'monitor' },
      { name: 'catch-partner-again', match: { recipients: ['partner.test'] }, actions: { '2': { action: 'relay' } } },
      { name: 'quiet', match: { clientNetworks: ['192.168.0.0/16'] }, headers: 'off' },
    ],
  });
  const rows: Array<[string, Partial<RuleContext>, number, Record<string, unknown>]> = [
    ['first rule', {}, 2, { rule: 'legal-partner', action: 'quarantine' }],
    ['codes the rule does not name keep the default table', {}, 1, { rule: 'legal-partner', action: 'relay', label: 'relay' }],
    [
      'second rule, monitor',
      { sender: 'p@pilot.corp.test', recipients: ['x@other.test'] },
      2,
      { rule: 'pilot', mode: 'monitor', action: 'relay', label: 'monitor-reject' },
    ],
    [
      'no rule: the default table',
      { recipients: ['x@other.test'] },
      2,
      { rule: null, action: 'reject', reply: '550 5.7.1 Message rejected by data-loss-prevention policy (ref <queryId>)' },
    ],
    [
      'headers off for a network',
      { recipients: ['x@other.test'], clientAddress: '192.168.1.1' },
      1,
      { rule: 'quiet', headers: [['X-DLP-Relay-Scanned', '<queryId>']] },
    ],
  ];
  it.each(rows)('%s', (_n, c, code, want) => {
    const full = ctx(c);
    const r = policyTest(s, { sender: full.sender, recipients: [...full.recipients], client: full.clientAddress, authUser: full.authUser, actionCode: code });
    expect(r).toMatchObject(want);
  });
  it('selectRule returns the first of two matching rules', () => {
    expect(selectRule(s.rules ?? [], ctx())?.name).toBe('legal-partner');
    expect(settingsFor(s, ctx({ recipients: ['x@other.test'] })).settings).toBe(s);
  });
});

describe('rules in the configuration', () => {
  it.each([
    [{ rules: [{ name: 'a', match: { senders: ['not an address!'] } }] }, /address or a domain/],
    [{ rules: [{ name: 'a', match: { clientNetworks: ['10.0.0.0/99'] } }] }, /prefix/],
    [
      {
        rules: [
          { name: 'a', match: {} },
          { name: 'a', match: {} },
        ],
      },
      /used twice/,
    ],
    [{ rules: [{ name: 'a', match: {}, mode: 'audit' }] }, /mode/],
    [{ rules: [{ name: 'a', match: { bogus: 1 } }] }, /bogus|unrecognized/i],
  ])('refuses %j', (policy, msg) => {
    let err: unknown;
    try {
      settings(policy);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(msg);
  });
});

describe('CLI', () => {
  const dir = mkdtempSync(join(tmpdir(), 'policy-cli-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'dlp-relay.yaml');
  writeFileSync(file, 'policy:\n  rules:\n    - name: partner\n      match: { recipients: [partner.test] }\n      mode: monitor\n');
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const p = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--config', file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
      p.on('error', reject);
      p.on('close', (code) => {
        clearTimeout(t);
        resolve({ code, stdout, stderr });
      });
    });

  it('policy test names the rule and the action; check-config lists the rules', async () => {
    const a = await run(['policy', 'test', '--sender', 'alice@corp.test', '--rcpt', 'bob@partner.test', '--action-code', '2']);
    expect(a.code).toBe(0);
    expect(a.stdout).toContain('rule: partner\nmode: monitor\naction: monitor-reject (would be reject when enforcing)\n');
    const b = await run(['policy', 'test', '--sender', 'alice@corp.test', '--rcpt', 'bob@other.test', '--action-code', '2', '--json']);
    expect(JSON.parse(b.stdout)).toMatchObject({ rule: null, mode: 'enforce', action: 'reject' });
    const c = await run(['check-config']);
    expect(c.code).toBe(0);
    expect(c.stderr).toContain('policy rules (first match wins, else the default table):\n  1. partner: any recipient in [partner.test] → mode monitor\n');
    expect(JSON.parse(c.stdout).policy.rules).toHaveLength(1);
  }, 60_000);
});
