// One message after the final dot: loop rule → UCWI verdict → policy → relay, quarantine, reject or tempfail, all inside one deadline.
import { Readable } from 'node:stream';
import { createHash, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { SpooledMessage } from '../spool/spool.js';
import type { InspectResult } from '../dlp/client.js';
import { decide, renderHeaders, type Decision, type PolicySettings } from '../policy/policy.js';
import type { LoopGuard } from '../policy/loop-token.js';
import { catalogueReply, nextHopFailureReply, RelayError, type SmtpReply } from '../errors.js';
import type { MatchedPolicy, NewQuarantineRecord, QuarantineStore, StoredEnvelope } from '../quarantine/types.js';
import { DeliveryError, type DeliveryResult, type OutboundEnvelope } from '../egress/relay.js';
import { buildFailureDsn } from '../egress/dsn.js';

/** Where accepted mail goes: the next hop, or the local outbox when none is configured. */
export interface Deliverer {
  readonly kind: 'next-hop' | 'outbox';
  deliver(env: OutboundEnvelope, openMessage: () => Readable, signal: AbortSignal, queryId: string): Promise<DeliveryResult>;
}

export interface Inspector {
  inspect(
    req: { queryId: string; sender: string; recipients: string[]; md5: string; size: number; openMessage: () => Readable },
    signal?: AbortSignal,
  ): Promise<InspectResult>;
}

/** Called after the verdict for side work (CAS push) that must never delay or change the reply. */
export type VerdictHook = (v: { queryId: string; actionCode: number | null; action: string; sender: string; recipients: string[]; spool: SpooledMessage }) => Promise<void>;

export interface PipelineDeps {
  logger: Logger;
  hostname: string;
  instance: string;
  dataDeadlineMs: number;
  policy: PolicySettings;
  /** Signs our loop header and judges incoming ones (only a valid, fresh one from a trusted client skips the scan). */
  loopGuard: LoopGuard;
  dlp: Inspector;
  deliverer: Deliverer;
  quarantine: QuarantineStore;
  onVerdict?: VerdictHook | undefined;
  /** Called once with the final outcome (after deadline handling); for sender notices. Must not throw. */
  onOutcome?: ((o: Omit<Outcome, 'settled'>, msg: MessageInput) => void) | undefined;
}

export interface MessageInput {
  queryId: string;
  receivedAt: Date;
  clientAddress: string;
  clientTrusted: boolean;
  heloName: string | null;
  envelope: StoredEnvelope;
  spool: SpooledMessage;
}

export interface Outcome {
  reply: SmtpReply;
  action: string;
  actionCode: number | null;
  policies: MatchedPolicy[];
  dlpMs: number | null;
  relayMs: number | null;
  errorClass?: string;
  detail?: string;
  nextHopResponse?: string;
  rejectedRecipients?: number;
  /** Settles when every use of the spool file is over (including work that outlived a deadline). */
  settled: Promise<void>;
}

type Partial_ = Omit<Outcome, 'settled'>;

export function toOutbound(env: StoredEnvelope): OutboundEnvelope {
  const out: OutboundEnvelope = { from: env.from, to: env.to.map((r) => ({ ...r })), smtpUtf8: env.smtpUtf8 };
  if (env.bodyType) out.bodyType = env.bodyType;
  if (env.ret) out.ret = env.ret;
  if (env.envid) out.envid = env.envid;
  return out;
}

/**
 * Runs the message through the pipeline. The deadline covers UCWI and the next hop together: when it
 * fires the client gets 451 at once, the in-flight work is aborted, and `settled` tells the caller
 * when the spool may be removed.
 */
export function processMessage(deps: PipelineDeps, msg: MessageInput): Promise<Outcome> {
  const ac = new AbortController();
  const side: Array<Promise<unknown>> = [];
  const work = run(deps, msg, ac.signal, side);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<Partial_>((resolve) => {
    timer = setTimeout(() => {
      ac.abort(new RelayError('DEADLINE_EXCEEDED'));
      resolve({ reply: catalogueReply('DEADLINE_EXCEEDED', msg.queryId), action: 'tempfail-deadline', actionCode: null, policies: [], dlpMs: null, relayMs: null, errorClass: 'deadline' });
    }, deps.dataDeadlineMs);
  });
  // The spool is in use until the pipeline and any side work (CAS extraction) are done.
  const settled = work.then(
    () => Promise.allSettled(side).then(() => undefined),
    () => Promise.allSettled(side).then(() => undefined),
  );
  return Promise.race([work, deadline]).then(
    (o) => {
      clearTimeout(timer);
      try {
        deps.onOutcome?.(o, msg);
      } catch (err) {
        deps.logger.warn({ err, queryId: msg.queryId }, 'outcome hook failed');
      }
      return { ...o, settled };
    },
    (err: unknown) => {
      clearTimeout(timer);
      deps.logger.error({ err, queryId: msg.queryId }, 'unexpected pipeline failure');
      return { reply: catalogueReply('INTERNAL', msg.queryId), action: 'tempfail-internal', actionCode: null, policies: [], dlpMs: null, relayMs: null, errorClass: 'internal', settled };
    },
  );
}

async function run(deps: PipelineDeps, msg: MessageInput, signal: AbortSignal, side: Array<Promise<unknown>>): Promise<Partial_> {
  const { spool, queryId } = msg;
  // A loop header that does not let the message skip the scan is cut out of the bytes we scan and deliver.
  const { rule, strip: skip } = deps.loopGuard.judge(spool.headers, msg.clientTrusted, { queryId, clientAddress: msg.clientAddress });
  const strippedBytes = skip.reduce((n, r) => n + (r.end - r.start), 0);

  let dlp: InspectResult | null = null;
  let decision: Decision;
  if (rule === 'skip') {
    decision = decide({ kind: 'skipped' }, queryId, deps.policy);
  } else {
    dlp = await deps.dlp.inspect(
      {
        queryId,
        sender: msg.envelope.from,
        recipients: msg.envelope.to.map((r) => r.address),
        // md5 describes the bytes UCWI receives; after stripping those differ from the spool's hash, so omit it.
        md5: skip.length ? '' : spool.md5,
        size: spool.size - strippedBytes,
        openMessage: () => spool.open({ skip }),
      },
      signal,
    );
    decision = decide(dlp.ok ? { kind: 'verdict', actionCode: dlp.actionCode } : { kind: 'error', errorClass: dlp.errorClass, ...(dlp.actionCode !== undefined ? { actionCode: dlp.actionCode } : {}) }, queryId, deps.policy);
  }
  const actionCode = dlp ? (dlp.ok ? dlp.actionCode : (dlp.actionCode ?? null)) : null;
  const base = {
    actionCode,
    policies: dlp?.ok ? dlp.policies : [],
    dlpMs: dlp?.elapsedMs ?? null,
    ...(dlp && !dlp.ok ? { errorClass: dlp.errorClass, detail: dlp.detail } : {}),
  };

  if (deps.onVerdict) {
    // Side work gets its own promise; the reply never waits for it, only the spool cleanup does.
    side.push(deps.onVerdict({ queryId, actionCode, action: decision.label, sender: msg.envelope.from, recipients: msg.envelope.to.map((r) => r.address), spool }).catch((err: unknown) => deps.logger.warn({ err, queryId }, 'verdict hook failed')));
  }

  if (signal.aborted) throw signal.reason;
  switch (decision.action) {
    case 'reject':
    case 'tempfail':
      return { ...base, reply: decision.reply, action: decision.label, relayMs: null };
    case 'quarantine':
      return quarantine(deps, msg, decision, base, skip, signal);
    case 'relay':
      return relay(deps, msg, decision, base, skip, strippedBytes, signal);
  }
}

async function quarantine(deps: PipelineDeps, msg: MessageInput, decision: Extract<Decision, { action: 'quarantine' }>, base: Omit<Partial_, 'reply' | 'action' | 'relayMs'>, skip: Array<{ start: number; end: number }>, signal: AbortSignal): Promise<Partial_> {
  const t0 = performance.now();
  try {
    await deps.quarantine.put(quarantineRecord(deps, msg, base.actionCode, decision.reason, base.policies), () => msg.spool.open({ skip }));
  } catch (err) {
    deps.logger.error({ err, queryId: msg.queryId }, 'quarantine store failed');
    return { ...base, reply: catalogueReply('QUARANTINE_FAILED', msg.queryId), action: 'tempfail-quarantine-failed', relayMs: null, errorClass: 'quarantine', detail: (err as Error).message };
  }
  if (signal.aborted) {
    // The deadline answered 451 while the store was still writing: the client keeps the message and
    // will send it again, so this copy would be a second one. Unlike a next hop, our own store can take it back.
    await deps.quarantine.delete(msg.queryId).catch((err: unknown) => deps.logger.error({ err, queryId: msg.queryId }, 'could not remove a quarantine copy written after the deadline'));
    throw signal.reason;
  }
  return { ...base, reply: decision.reply, action: decision.label, relayMs: Math.round(performance.now() - t0) };
}

function quarantineRecord(deps: PipelineDeps, msg: MessageInput, actionCode: number | null, reason: string, policies: MatchedPolicy[]): NewQuarantineRecord {
  const header = (n: string) => msg.spool.headers.find((h) => h.name === n)?.value ?? null;
  return {
    id: msg.queryId,
    queryId: msg.queryId,
    receivedAt: msg.receivedAt.toISOString(),
    envelope: msg.envelope,
    clientAddress: msg.clientAddress,
    heloName: msg.heloName,
    size: msg.spool.size,
    sha256: msg.spool.sha256,
    md5: msg.spool.md5,
    subject: header('subject'),
    messageId: header('message-id'),
    actionCode,
    reason,
    policies,
    instance: deps.instance,
  };
}

async function relay(deps: PipelineDeps, msg: MessageInput, decision: Extract<Decision, { action: 'relay' }>, base: Omit<Partial_, 'reply' | 'action' | 'relayMs'>, skip: Array<{ start: number; end: number }>, strippedBytes: number, signal: AbortSignal): Promise<Partial_> {
  const prepend = renderHeaders(deps.loopGuard.seal(decision.headers, msg.spool.headers.find((h) => h.name === 'message-id')?.value ?? null, msg.queryId));
  const env = toOutbound(msg.envelope);
  env.size = msg.spool.size + prepend.length - strippedBytes;
  const t0 = performance.now();
  let result: DeliveryResult;
  try {
    result = await deps.deliverer.deliver(env, () => msg.spool.open({ prepend, skip }), signal, msg.queryId);
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    const isLocal = deps.deliverer.kind === 'outbox';
    if (isLocal) deps.logger.error({ err, queryId: msg.queryId }, 'local outbox write failed');
    const reply = isLocal ? catalogueReply('OUTBOX_FAILED', msg.queryId) : err instanceof DeliveryError ? nextHopFailureReply(err, msg.queryId) : catalogueReply('INTERNAL', msg.queryId);
    return {
      ...base,
      reply,
      action: `${decision.label}-failed`,
      relayMs: Math.round(performance.now() - t0),
      errorClass: isLocal ? 'outbox' : `next-hop:${err instanceof DeliveryError ? err.phase : 'error'}`,
      detail: err instanceof DeliveryError ? (err.response ?? err.message) : (err as Error).message,
    };
  }
  const relayMs = Math.round(performance.now() - t0);
  if (result.rejected.length > 0) await notifyRefused(deps, msg, result, signal);
  const where = deps.deliverer.kind === 'outbox' ? 'stored in local outbox' : 'relayed';
  return {
    ...base,
    reply: { code: 250, enhanced: '2.0.0', text: `Ok: ${where} (ref ${msg.queryId})` },
    action: decision.label,
    relayMs,
    nextHopResponse: result.response,
    rejectedRecipients: result.rejected.length,
  };
}

/**
 * The next hop took the message for some recipients and refused others. One DATA reply cannot say
 * that, so the client gets 250 and the sender a DSN for the refused ones. If the DSN cannot be sent
 * now it is kept in the quarantine store (reason dsn-undeliverable) so an admin can release it: it is
 * never silently dropped.
 */
async function notifyRefused(deps: PipelineDeps, msg: MessageInput, result: DeliveryResult, signal: AbortSignal): Promise<void> {
  const byAddr = new Map(msg.envelope.to.map((r) => [r.address.toLowerCase(), r]));
  const headers = await msg.spool.readHeaderBlock();
  const dsn = buildFailureDsn({
    reportingMta: deps.hostname,
    originalEnvelope: toOutbound(msg.envelope),
    arrivalDate: msg.receivedAt,
    failed: result.rejected.map((r) => {
      const orig = byAddr.get(r.address.toLowerCase());
      return { address: r.address, code: r.code, response: r.response, ...(orig?.orcpt ? { orcpt: orig.orcpt } : {}) };
    }),
    originalHeaders: headers,
    queryId: msg.queryId,
  });
  deps.logger.warn({ queryId: msg.queryId, refused: result.rejected.map((r) => ({ address: r.address, code: r.code })) }, 'next hop refused some recipients');
  if (!dsn) return;
  try {
    await deps.deliverer.deliver(dsn.envelope, () => Readable.from([dsn.message]), signal, msg.queryId);
  } catch (err) {
    deps.logger.error({ err, queryId: msg.queryId }, 'DSN for refused recipients could not be sent; keeping it in quarantine');
    const id = randomUUID();
    await deps.quarantine
      .put(
        {
          id,
          queryId: msg.queryId,
          receivedAt: new Date().toISOString(),
          envelope: { from: '', to: dsn.envelope.to.map((t) => ({ address: t.address })), smtpUtf8: false },
          clientAddress: '127.0.0.1',
          heloName: null,
          size: dsn.message.length,
          sha256: createHash('sha256').update(dsn.message).digest('hex'),
          md5: createHash('md5').update(dsn.message).digest('hex'),
          subject: 'Delivery Status Notification (Failure)',
          messageId: null,
          actionCode: null,
          reason: 'dsn-undeliverable',
          policies: [],
          instance: deps.instance,
        },
        () => Readable.from([dsn.message]),
      )
      .catch((e: unknown) => deps.logger.error({ err: e, queryId: msg.queryId }, 'DSN could not be stored either'));
  }
}
