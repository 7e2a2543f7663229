// `dlp-relay policy test`: which rule and which action would apply to a sender, recipients, client and actionCode, from the configuration alone (no relay, no UCWI).
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import type { FrozenConfig } from '../config/load.js';
import { decide, type PolicySettings } from '../policy/policy.js';
import { describeRule, settingsFor, type PolicyRuleConfig } from '../policy/rules.js';
import { formatReply } from '../errors.js';
import { collect } from './options.js';

export interface PolicyTestInput {
  sender: string;
  recipients: string[];
  client: string;
  authUser: string | null;
  actionCode: number;
}

export interface PolicyTestResult {
  rule: string | null;
  mode: string;
  action: string;
  label: string;
  /** The SMTP reply the client would get, when the relay makes it (reject, tempfail, quarantine). */
  reply: string | null;
  /** Headers a relayed copy would get (values of ids shown as <queryId>). */
  headers: Array<[string, string]>;
  wouldBe?: string;
}

/** Pure: the decision for one hypothetical message. */
export function policyTest(policy: PolicySettings, input: PolicyTestInput): PolicyTestResult {
  const { settings, rule } = settingsFor(policy, { sender: input.sender, recipients: input.recipients, clientAddress: input.client, authUser: input.authUser });
  const d = decide({ kind: 'verdict', actionCode: input.actionCode }, '<queryId>', settings);
  return {
    rule,
    mode: settings.mode,
    action: d.action,
    label: d.label,
    reply: 'reply' in d ? formatReply(d.reply) : null,
    headers: 'headers' in d ? d.headers : [],
    ...(d.action === 'relay' && d.wouldBe ? { wouldBe: d.wouldBe } : {}),
  };
}

/** Human lines listing the rules in order (check-config prints them on stderr, the JSON stays on stdout). */
export function describeRules(rules: readonly PolicyRuleConfig[]): string {
  if (rules.length === 0) return 'policy rules: none (the default table applies to every message)\n';
  return `policy rules (first match wins, else the default table):\n${rules.map((r, i) => `  ${i + 1}. ${describeRule(r)}\n`).join('')}`;
}

function actionCodeArg(v: string): number {
  if (!/^\d{1,3}$/.test(v)) throw new InvalidArgumentError('an actionCode is a number (1..9 as UCWI documents them)');
  return Number(v);
}

export function registerPolicyCommands(program: Command, loadConfig: () => FrozenConfig): void {
  const policy = program.command('policy').description('inspect the verdict policy and its rules');
  policy
    .command('test')
    .description('show which rule and action would apply to a message (from the configuration only)')
    .requiredOption('--sender <addr>', 'envelope sender ("" for a bounce)')
    .option('--rcpt <addr>', 'envelope recipient, repeatable', collect, [])
    .requiredOption('--action-code <n>', 'the UCWI actionCode to assume', actionCodeArg)
    .option('--client <ip>', 'client address', '127.0.0.1')
    .option('--auth-user <user>', 'SMTP AUTH user')
    .option('--json', 'print the result as JSON', false)
    .action((o: { sender: string; rcpt: string[]; actionCode: number; client: string; authUser?: string; json: boolean }) => {
      const c = loadConfig();
      const r = policyTest(c.policy, { sender: o.sender, recipients: o.rcpt, client: o.client, authUser: o.authUser ?? null, actionCode: o.actionCode });
      if (o.json) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      const lines = [
        `rule: ${r.rule ?? '(none: default table)'}`,
        `mode: ${r.mode}`,
        `action: ${r.label}${r.wouldBe ? ` (would be ${r.wouldBe} when enforcing)` : ''}`,
        ...(r.reply ? [`reply: ${r.reply}`] : []),
        ...r.headers.map(([k, v]) => `header: ${k}: ${v}`),
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
