// The verdict policy: turns a UCWI verdict or DLP failure into one action and its SMTP reply. Pure: no I/O, no clock, table-driven tests.
import type { ActionSpec, PolicyConfig } from '../config/policy-schema.js';
import type { DeepReadonly } from '../config/schema.js';
import type { DlpErrorClass } from '../dlp/parse.js';
import { CATALOGUE, type SmtpReply } from '../errors.js';

/** What UCWI told us, or why it could not. */
export type DlpOutcome =
  | { kind: 'verdict'; actionCode: number }
  | { kind: 'error'; errorClass: DlpErrorClass; actionCode?: number }
  /** The loop rule let a trusted message skip the scan. */
  | { kind: 'skipped' };

export type Decision =
  /** wouldBe: monitor mode, the label the enforcing decision would have had. */
  | { action: 'relay'; label: string; headers: Array<[string, string]>; wouldBe?: string }
  | { action: 'reject'; label: string; reply: SmtpReply }
  | { action: 'tempfail'; label: string; reply: SmtpReply }
  | { action: 'quarantine'; label: string; reply: SmtpReply; reason: string }
  /** Relay a copy without its attachments (headers as for relay); the original goes to the quarantine as evidence. */
  /** Deliver the whole message to an encryption gateway (a separate next hop) instead of the open transaction. */
  | { action: 'gateway'; label: string; gateway: string; headers: Array<[string, string]> }
  | { action: 'remove-attachments'; label: string; headers: Array<[string, string]>; reason: string; quarantineReply: SmtpReply; countHeader: string | null };

/**
 * The settings one message is judged under, as the config schema gives them (defaults filled in, the action
 * table complete) and frozen; rules.ts settingsFor lays the first matching rule's settings over them.
 */
export type PolicySettings = DeepReadonly<PolicyConfig>;

function fill(template: string, queryId: string): string {
  // Reply text is one line of printable ASCII; the template is admin-controlled, the queryId ours.
  return template.replaceAll('{queryId}', queryId).replace(/[^\x20-\x7e]/g, ' ');
}

function stamps(s: PolicySettings): boolean {
  return s.headers === 'on' || (s.headers === 'auto' && s.mode === 'enforce');
}

function verdictHeaders(s: PolicySettings, queryId: string, actionCode: string, label: string): Array<[string, string]> {
  // The loop header first and always: if this copy comes back from a trusted MTA it skips a second scan.
  const loop: [string, string] = [s.loop.header, queryId];
  if (!stamps(s)) return [loop];
  return [loop, [s.verdictHeaders.queryId, queryId], [s.verdictHeaders.actionCode, actionCode], [s.verdictHeaders.action, label]];
}

/** The label (X-DLP-Action, log `action`) of a configured action. */
function labelOf(spec: ActionSpec): string {
  if (spec.action === 'relay_with_headers') return 'relay-encrypt';
  if (spec.action === 'remove_attachments') return 'attachments-removed';
  if (spec.action === 'route_to_gateway') return 'relay-gateway';
  return spec.action;
}

function applySpec(spec: ActionSpec, s: PolicySettings, queryId: string, actionCode: string, label: string, reason: string): Decision {
  switch (spec.action) {
    case 'relay':
    case 'relay_with_headers': {
      const headers = verdictHeaders(s, queryId, actionCode, label);
      if (spec.action === 'relay_with_headers') headers.push([s.encryptionHeader.name, s.encryptionHeader.value]);
      return { action: 'relay', label, headers };
    }
    case 'route_to_gateway': {
      const headers = verdictHeaders(s, queryId, actionCode, label);
      if (spec.header !== false) headers.push([s.encryptionHeader.name, s.encryptionHeader.value]);
      return { action: 'gateway', label, gateway: spec.gateway ?? '', headers };
    }
    case 'remove_attachments':
      return {
        action: 'remove-attachments',
        label,
        headers: verdictHeaders(s, queryId, actionCode, label),
        reason,
        // Used when the MIME tree cannot be rewritten safely and the message is held instead.
        quarantineReply: { code: 250, enhanced: '2.0.0', text: fill(spec.text ?? s.quarantineText, queryId) },
        countHeader: stamps(s) ? s.verdictHeaders.removedCount : null,
      };
    case 'reject':
      return {
        action: 'reject',
        label,
        reply: {
          code: spec.code ?? CATALOGUE.POLICY_REJECT.code,
          enhanced: spec.enhanced ?? CATALOGUE.POLICY_REJECT.enhanced,
          text: fill(spec.text ?? s.rejectText, queryId),
        },
      };
    case 'tempfail': {
      const base = CATALOGUE.DLP_UNAVAILABLE;
      return {
        action: 'tempfail',
        label,
        reply: { code: spec.code ?? base.code, enhanced: spec.enhanced ?? base.enhanced, text: fill(spec.text ?? `${base.text} (ref {queryId})`, queryId) },
      };
    }
    case 'quarantine':
      return { action: 'quarantine', label, reason, reply: { ...CATALOGUE.QUARANTINED, text: fill(spec.text ?? s.quarantineText, queryId) } };
  }
}

/**
 * The one decision for one message. In monitor mode every message is relayed; the label says what
 * enforcing would have done (`monitor-reject`, …) and `wouldBe` keeps that label for the log.
 */
export function decide(outcome: DlpOutcome, queryId: string, s: PolicySettings): Decision {
  const d = enforce(outcome, queryId, s);
  if (s.mode !== 'monitor' || outcome.kind === 'skipped') return d;
  const label = `monitor-${d.label}`;
  const code =
    outcome.kind === 'verdict'
      ? String(outcome.actionCode)
      : outcome.kind === 'error' && outcome.actionCode !== undefined
        ? String(outcome.actionCode)
        : 'none';
  return { action: 'relay', label, headers: verdictHeaders(s, queryId, code, label), wouldBe: d.label };
}

function enforce(outcome: DlpOutcome, queryId: string, s: PolicySettings): Decision {
  switch (outcome.kind) {
    case 'skipped':
      // Already scanned by us on its way out; the trusted MTA sent it back. Relay as is, no new verdict headers.
      return { action: 'relay', label: 'relay-loop-skip', headers: [] };
    case 'verdict': {
      const spec = s.actions[String(outcome.actionCode)];
      if (spec) return applySpec(spec, s, queryId, String(outcome.actionCode), labelOf(spec), `dlp:${outcome.actionCode}`);
      return applySpec(s.unknownAction, s, queryId, String(outcome.actionCode), `unknown-${s.unknownAction.action}`, `unknown-action:${outcome.actionCode}`);
    }
    case 'error': {
      if (outcome.errorClass === 'unknown_action') {
        const code = String(outcome.actionCode ?? 'none');
        return applySpec(s.unknownAction, s, queryId, code, `unknown-${s.unknownAction.action}`, `unknown-action:${code}`);
      }
      const reason = `dlp-error:${outcome.errorClass}`;
      switch (s.onDlpError) {
        case 'relay':
          return applySpec({ action: 'relay' }, s, queryId, 'none', 'relay-unscanned', reason);
        case 'quarantine':
          return applySpec({ action: 'quarantine' }, s, queryId, 'none', 'quarantine-unscanned', reason);
        case 'tempfail':
          return applySpec({ action: 'tempfail' }, s, queryId, 'none', 'tempfail', reason);
      }
    }
  }
}

/**
 * The loop rule: a message carrying our loop header from a trusted network was scanned by us
 * already; from anyone else the header is a forgery attempt, so it is stripped and the message scanned.
 */
export function loopRule(hasLoopHeader: boolean, clientTrusted: boolean): 'skip' | 'strip-and-scan' | 'scan' {
  if (!hasLoopHeader) return 'scan';
  return clientTrusted ? 'skip' : 'strip-and-scan';
}

/** Header lines to prepend, CRLF-terminated. Values are ours (ids, codes, config), folded never needed. */
export function renderHeaders(headers: ReadonlyArray<readonly [string, string]>): Buffer {
  return Buffer.from(headers.map(([k, v]) => `${k}: ${v.replace(/[\r\n]/g, ' ')}\r\n`).join(''), 'utf8');
}
