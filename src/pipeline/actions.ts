// What the pipeline does once the policy has decided: hold the message in quarantine, relay it (whole or with its attachments removed), or hand it to an encryption gateway.
import type { Readable } from 'node:stream';
import { renderHeaders, type Decision } from '../policy/policy.js';
import { catalogueReply, nextHopFailureReply, type SmtpReply } from '../errors.js';
import type { NewQuarantineRecord } from '../quarantine/types.js';
import { DeliveryError } from '../egress/next-hop-errors.js';
import type { DeliveryReport } from '../egress/pool.js';
import { MimeStructureError } from '../mime/scanner.js';
import { planRemoval, removeAttachments, type RemovalOptions, type RemovedAttachment } from '../mime/strip.js';
import type { MessageInput, OutcomeFields, PipelineDeps } from './process.js';

/**
 * What every action works from, so each one takes the message once rather than five loose arguments: the
 * pipeline's parts, the message, the outcome fields the verdict already fixed, the byte ranges cut out of
 * the message (a loop header that did not let it skip the scan) and the deadline's signal.
 */
export interface Step {
  deps: PipelineDeps;
  msg: MessageInput;
  base: Omit<OutcomeFields, 'reply' | 'action' | 'relayMs'>;
  skip: Array<{ start: number; end: number }>;
  signal: AbortSignal;
}

/** Carries out the decision; reject and tempfail need nothing beyond their reply. */
export function act(step: Step, decision: Decision): Promise<OutcomeFields> | OutcomeFields {
  switch (decision.action) {
    case 'reject':
    case 'tempfail':
      return { ...step.base, reply: decision.reply, action: decision.label, relayMs: null };
    case 'quarantine':
      return quarantine(step, decision);
    case 'relay':
      return relay(step, decision);
    case 'remove-attachments':
      return removeAndRelay(step, decision);
    case 'gateway':
      return gatewayRelay(step, decision);
  }
}

async function quarantine(step: Step, decision: { label: string; reply: SmtpReply; reason: string }): Promise<OutcomeFields> {
  const { deps, msg, base, signal } = step;
  const t0 = performance.now();
  const failed = await storeCopy(step, decision.reason, 'quarantine store failed');
  if (failed) return failed;
  if (signal.aborted) {
    // The deadline answered 451 while the store was still writing: the client keeps the message and
    // will send it again, so this copy would be a second one. Unlike a next hop, our own store can take it back.
    await deps.quarantine
      .delete(msg.queryId)
      .catch((err: unknown) => deps.logger.error({ err, queryId: msg.queryId }, 'could not remove a quarantine copy written after the deadline'));
    throw signal.reason;
  }
  return { ...base, reply: decision.reply, action: decision.label, relayMs: Math.round(performance.now() - t0) };
}

/**
 * Stores the message (our trace line first, a cut-out loop header left out) in the quarantine; on failure the
 * outcome to answer with (451: we must not say 250 for a message we could not keep), else null.
 */
async function storeCopy({ deps, msg, base, skip }: Step, reason: string, what: string): Promise<OutcomeFields | null> {
  try {
    await deps.quarantine.put(quarantineRecord(deps, msg, base, reason), () => msg.spool.open({ prepend: msg.trace, skip }));
    return null;
  } catch (err) {
    deps.logger.error({ err, queryId: msg.queryId }, what);
    return {
      ...base,
      reply: catalogueReply('QUARANTINE_FAILED', msg.queryId),
      action: 'tempfail-quarantine-failed',
      relayMs: null,
      errorClass: 'quarantine',
      detail: (err as Error).message,
    };
  }
}

function quarantineRecord(deps: PipelineDeps, msg: MessageInput, base: Step['base'], reason: string): NewQuarantineRecord {
  const header = (n: string) => msg.spool.headers.find((h) => h.name === n)?.value ?? null;
  return {
    id: msg.queryId,
    queryId: msg.queryId,
    receivedAt: msg.receivedAt.toISOString(),
    envelope: msg.envelope,
    clientAddress: msg.clientAddress,
    heloName: msg.heloName,
    subject: header('subject'),
    messageId: header('message-id'),
    actionCode: base.actionCode,
    reason,
    policies: base.policies,
    instance: deps.instance,
  };
}

/** What goes before the spooled bytes on every relayed copy: our trace line, then the verdict headers with the signed loop header. */
function relayPrepend({ deps, msg }: Step, headers: Array<[string, string]>): Buffer {
  const sealed = deps.loopGuard.seal(headers, msg.spool.headers.find((h) => h.name === 'message-id')?.value ?? null, msg.queryId);
  return Buffer.concat([msg.trace, renderHeaders(sealed)]);
}

async function relay(
  step: Step,
  decision: { label: string; headers: Array<[string, string]> },
  rewrite?: (source: Readable) => Readable,
): Promise<OutcomeFields> {
  const { deps, msg, base, skip, signal } = step;
  const prepend = relayPrepend(step, decision.headers);
  const t0 = performance.now();
  const isLocal = msg.sink.kind === 'outbox';
  // An unchanged small message goes out as one buffer: no stream and pipes per message.
  const open = (): Readable | Buffer =>
    rewrite ? rewrite(msg.spool.open({ prepend, skip })) : (msg.spool.readSmall({ prepend, skip }) ?? msg.spool.open({ prepend, skip }));
  try {
    const reply = await msg.sink.deliver(open, signal);
    const ok = reply.code < 300;
    return {
      ...base,
      reply,
      action: ok ? decision.label : `${decision.label}-${reply.code >= 500 ? 'refused' : 'deferred'}`,
      relayMs: Math.round(performance.now() - t0),
      ...(ok ? {} : { errorClass: `next-hop:${reply.code >= 500 ? 'refused' : 'deferred'}`, detail: `${reply.code} ${reply.enhanced} ${reply.text}` }),
    };
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    if (isLocal) deps.logger.error({ err, queryId: msg.queryId }, 'local outbox write failed');
    const reply = isLocal
      ? catalogueReply('OUTBOX_FAILED', msg.queryId)
      : err instanceof DeliveryError
        ? nextHopFailureReply(err, msg.queryId)
        : catalogueReply('INTERNAL', msg.queryId);
    return {
      ...base,
      reply,
      action: `${decision.label}-failed`,
      relayMs: Math.round(performance.now() - t0),
      errorClass: isLocal ? 'outbox' : `next-hop:${err instanceof DeliveryError ? err.phase : 'error'}`,
      detail: err instanceof DeliveryError ? (err.response ?? err.message) : (err as Error).message,
    };
  }
}

/**
 * actionCode 4 (by default): a dry run of the rewrite first, so a message whose MIME cannot be rewritten
 * safely is quarantined before any byte goes out; then the original is stored as evidence (an admin can
 * release it whole); then the rewritten copy is relayed through the same sink, streamed from the spool.
 * If the relay does not end in 2xx the client keeps the message and will retry, so the evidence copy is
 * taken back, as a quarantine written after the deadline is.
 */
async function removeAndRelay(step: Step, decision: Extract<Decision, { action: 'remove-attachments' }>): Promise<OutcomeFields> {
  const { deps, msg, base, skip, signal } = step;
  const opts: RemovalOptions = { queryId: msg.queryId, ...deps.policy.attachments };
  let removed: RemovedAttachment[];
  try {
    ({ removed } = await planRemoval(msg.spool.open({ skip }), opts, signal));
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    if (!(err instanceof MimeStructureError)) {
      deps.logger.error({ err, queryId: msg.queryId }, 'attachment removal failed');
      return {
        ...base,
        reply: catalogueReply('INTERNAL', msg.queryId),
        action: 'tempfail-internal',
        relayMs: null,
        errorClass: 'internal',
        detail: (err as Error).message,
      };
    }
    // Never let an attachment through: what we cannot rewrite is held whole.
    const held = await quarantine(step, {
      label: 'quarantine-unremovable',
      reply: decision.quarantineReply,
      reason: `attachments-unremovable:${err.reason}`,
    });
    return { ...held, detail: held.detail ?? err.message };
  }
  const evidenceFailed = await storeCopy(step, `evidence:${decision.reason}`, 'quarantine store failed (evidence copy)');
  if (evidenceFailed) return evidenceFailed;
  const headers: Array<[string, string]> = decision.countHeader ? [...decision.headers, [decision.countHeader, String(removed.length)]] : decision.headers;
  let out: OutcomeFields;
  try {
    out = await relay(step, { label: decision.label, headers }, (source) => removeAttachments(source, opts));
  } catch (err) {
    await dropEvidence(deps, msg.queryId);
    throw err;
  }
  if (out.reply.code >= 300) await dropEvidence(deps, msg.queryId);
  return {
    ...out,
    detail:
      out.detail ??
      `${removed.length} attachment(s) removed: ${removed
        .map((r) => r.filename ?? r.contentType)
        .join(', ')
        .slice(0, 300)}`,
  };
}

async function dropEvidence(deps: PipelineDeps, queryId: string): Promise<void> {
  await deps.quarantine
    .delete(queryId)
    .catch((err: unknown) => deps.logger.error({ err, queryId }, 'could not remove the evidence copy of a message that was not relayed'));
}

/** "250 2.0.0 Ok: queued" → SmtpReply; the first line only. */
function parseReplyLine(line: string, fallback: SmtpReply): SmtpReply {
  const m = /^([2-5]\d\d)[ -]?(?:([2-5]\.\d{1,3}\.\d{1,3})\s+)?([^\r\n]*)/.exec(line);
  if (!m) return fallback;
  const code = Number(m[1]);
  return { code, enhanced: m[2] ?? `${String(code)[0]}.0.0`, text: (m[3] ?? '').slice(0, 400) || fallback.text };
}

/**
 * route_to_gateway. The client's recipients were already answered by the default next hop at RCPT
 * time (lockstep); a route chosen after the verdict cannot go through that transaction, so DATA is
 * never sent there (the ingress resets a transaction that got no DATA) and the whole message goes to
 * the gateway in a transaction of its own. The client can get only one answer for all recipients:
 * 250 only if the gateway accepted every one; the gateway's 5xx if it refused every one with 5xx;
 * anything else (mixed, 4xx, no TLS, unreachable) 451, so the client retries the whole message. A
 * recipient the gateway accepted in a mixed outcome may then get the message twice: a duplicate rather
 * than a loss, and never a copy relayed in clear.
 */
async function gatewayRelay(step: Step, decision: Extract<Decision, { action: 'gateway' }>): Promise<OutcomeFields> {
  const { deps, msg, base, skip, signal } = step;
  const t0 = performance.now();
  const retry = (why: string): SmtpReply => ({ code: 451, enhanced: '4.4.0', text: `Encryption gateway ${why}, try again later (ref ${msg.queryId})` });
  const pool = deps.gateways?.get(decision.gateway);
  if (!pool) {
    deps.logger.error({ queryId: msg.queryId, gateway: decision.gateway }, 'route_to_gateway names a gateway that is not running');
    return {
      ...base,
      reply: retry('not available'),
      action: `${decision.label}-failed`,
      relayMs: null,
      errorClass: 'gateway:missing',
      detail: decision.gateway,
    };
  }
  const prepend = relayPrepend(step, decision.headers);
  let report: DeliveryReport;
  try {
    report = await pool.deliver(msg.envelope, () => msg.spool.open({ prepend, skip }), signal);
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    const phase = err instanceof DeliveryError ? err.phase : 'error';
    deps.logger.warn({ err, queryId: msg.queryId, gateway: decision.gateway }, 'encryption gateway delivery failed');
    return {
      ...base,
      reply: retry('unavailable'),
      action: `${decision.label}-failed`,
      relayMs: Math.round(performance.now() - t0),
      errorClass: `gateway:${phase}`,
      detail: (err as Error).message,
    };
  }
  const relayMs = Math.round(performance.now() - t0);
  const rs = report.recipients;
  const detail = rs
    .map((r) => `${r.address}: ${r.response}`)
    .join('; ')
    .slice(0, 1000);
  if (rs.length > 0 && rs.every((r) => r.status === 'accepted')) {
    return {
      ...base,
      reply: parseReplyLine(report.response, { code: 250, enhanced: '2.0.0', text: `Ok: handed to the encryption gateway (ref ${msg.queryId})` }),
      action: decision.label,
      relayMs,
    };
  }
  const first = rs[0];
  if (first && rs.every((r) => r.status === 'refused' && r.code >= 500)) {
    const reply = parseReplyLine(first.response, { code: first.code, enhanced: '5.0.0', text: 'Rejected by the encryption gateway' });
    return {
      ...base,
      reply: reply.code >= 500 ? reply : { code: first.code, enhanced: '5.0.0', text: 'Rejected by the encryption gateway' },
      action: `${decision.label}-refused`,
      relayMs,
      errorClass: 'gateway:refused',
      detail,
    };
  }
  return {
    ...base,
    reply: retry(rs.some((r) => r.status === 'accepted') ? 'did not accept every recipient' : 'deferred the message'),
    action: `${decision.label}-deferred`,
    relayMs,
    errorClass: 'gateway:deferred',
    detail,
  };
}
