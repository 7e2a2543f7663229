// Policy rules: an ordered list, first match wins, each with its own action table, mode and header setting. Pure: no I/O, table-driven tests.
import { NetworkList } from '../util/cidr.js';
import type { PolicySettings } from './policy.js';

/** A rule as configured (policy.rules[]); its shape and the meaning of each field are in config/policy-schema.ts. */
export type PolicyRuleConfig = PolicySettings['rules'][number];

/** What a message is matched on. */
export interface RuleContext {
  sender: string;
  recipients: readonly string[];
  clientAddress: string;
  authUser: string | null;
}

function addressMatches(address: string, entries: readonly string[]): boolean {
  const a = address.trim().toLowerCase();
  const at = a.lastIndexOf('@');
  const domain = at >= 0 ? a.slice(at + 1) : '';
  return entries.some((raw) => {
    const e = raw.trim().toLowerCase();
    if (e.includes('@') && !e.startsWith('@')) return a === e;
    const d = e.replace(/^[@.]/, '');
    return domain !== '' && (domain === d || domain.endsWith(`.${d}`));
  });
}

const networkCache = new WeakMap<readonly string[], NetworkList>();
function networks(list: readonly string[]): NetworkList {
  let n = networkCache.get(list);
  if (!n) {
    n = new NetworkList(list);
    networkCache.set(list, n);
  }
  return n;
}

/** Every criterion the rule names must hold; a rule naming none matches everything. */
export function ruleMatches(rule: PolicyRuleConfig, ctx: RuleContext): boolean {
  const m = rule.match;
  if (m.senders && !addressMatches(ctx.sender, m.senders)) return false;
  if (m.recipients) {
    const list = m.recipients;
    const ok = m.allRecipients
      ? ctx.recipients.length > 0 && ctx.recipients.every((r) => addressMatches(r, list))
      : ctx.recipients.some((r) => addressMatches(r, list));
    if (!ok) return false;
  }
  if (m.clientNetworks && !networks(m.clientNetworks).has(ctx.clientAddress)) return false;
  if (m.authUsers) {
    const user = ctx.authUser?.toLowerCase();
    if (user === undefined || !m.authUsers.some((u) => u.toLowerCase() === user)) return false;
  }
  return true;
}

/** The first rule that matches, or null (the default table applies). */
export function selectRule(rules: readonly PolicyRuleConfig[], ctx: RuleContext): PolicyRuleConfig | null {
  return rules.find((r) => ruleMatches(r, ctx)) ?? null;
}

/**
 * The next hop for a transaction, known at MAIL FROM: the first rule that matches on what is known then (sender,
 * client, AUTH user) decides, by its nextHop or by having none (the default next hop). Rules that match on recipients
 * are passed over here, since recipients are not known yet (and cannot carry a nextHop).
 */
export function nextHopFor(rules: readonly PolicyRuleConfig[], ctx: Omit<RuleContext, 'recipients'>): string | null {
  const rule = rules.find((r) => !r.match.recipients && ruleMatches(r, { ...ctx, recipients: [] }));
  return rule?.nextHop ?? null;
}

/** The settings one message is judged under: the defaults with the first matching rule's settings over them. */
export function settingsFor(base: PolicySettings, ctx: RuleContext): { settings: PolicySettings; rule: string | null } {
  const rule = selectRule(base.rules, ctx);
  if (!rule) return { settings: base, rule: null };
  return {
    rule: rule.name,
    settings: {
      ...base,
      mode: rule.mode ?? base.mode,
      headers: rule.headers ?? base.headers,
      actions: rule.actions ? { ...base.actions, ...rule.actions } : base.actions,
      unknownAction: rule.unknownAction ?? base.unknownAction,
      onDlpError: rule.onDlpError ?? base.onDlpError,
    },
  };
}

/** One line per rule for check-config and `policy test`. */
export function describeRule(rule: PolicyRuleConfig): string {
  const m = rule.match;
  const parts: string[] = [];
  if (m.senders) parts.push(`sender in [${m.senders.join(', ')}]`);
  if (m.recipients) parts.push(`${m.allRecipients ? 'every' : 'any'} recipient in [${m.recipients.join(', ')}]`);
  if (m.clientNetworks) parts.push(`client in [${m.clientNetworks.join(', ')}]`);
  if (m.authUsers) parts.push(`auth user in [${m.authUsers.join(', ')}]`);
  const then: string[] = [];
  if (rule.mode) then.push(`mode ${rule.mode}`);
  if (rule.headers) then.push(`headers ${rule.headers}`);
  if (rule.actions)
    then.push(
      `actions ${Object.entries(rule.actions)
        .map(([k, v]) => `${k}=${v.action}`)
        .join(' ')}`,
    );
  if (rule.unknownAction) then.push(`unknown=${rule.unknownAction.action}`);
  if (rule.onDlpError) then.push(`onDlpError ${rule.onDlpError}`);
  return `${rule.name}: ${parts.length ? parts.join(' and ') : 'every message'} → ${then.length ? then.join(', ') : 'defaults'}`;
}
