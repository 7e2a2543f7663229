// One message after the final dot: loop rule → UCWI verdict → policy, all inside one deadline; what each decision then does is in actions.ts.
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { SpooledMessage } from '../spool/spool.js';
import type { InspectResult } from '../dlp/client.js';
import { decide, type Decision, type PolicySettings } from '../policy/policy.js';
import type { LoopGuard } from '../policy/loop-token.js';
import { settingsFor } from '../policy/rules.js';
import { catalogueReply, RelayError, type SmtpReply } from '../errors.js';
import type { MatchedPolicy, QuarantineStore } from '../quarantine/types.js';
import type { Envelope } from '../smtp/envelope.js';
import type { DeliveryReport } from '../egress/pool.js';
import { act } from './actions.js';

/**
 * Where this one message goes when the policy says relay: the next-hop transaction the session holds
 * open (lockstep), or the local outbox when no next hop is configured. Resolves with the reply for the
 * client (the next hop's own final reply, passed through); throws on failure.
 */
export interface MessageSink {
  readonly kind: 'next-hop' | 'outbox';
  /** `open` gives a stream, or a small message in one buffer (one socket or file write, no stream). */
  deliver(open: () => Readable | Buffer, signal: AbortSignal): Promise<SmtpReply>;
}

/** NextHopPool's whole-transaction delivery: each recipient's fate comes back. */
export interface GatewayDeliverer {
  deliver(env: Envelope, open: () => Readable, signal: AbortSignal): Promise<DeliveryReport>;
}

export interface Inspector {
  inspect(
    /** md5 is left out when the bytes UCWI gets differ from the spooled ones (a header was cut out). */
    req: { queryId: string; sender: string; recipients: string[]; md5?: string; size: number; openMessage: () => Readable; readSmall?: () => Buffer | null },
    signal?: AbortSignal,
  ): Promise<InspectResult>;
}

/** Called after the verdict for side work (CAS push) that must never delay or change the reply. */
export type VerdictHook = (v: {
  queryId: string;
  actionCode: number | null;
  action: string;
  sender: string;
  recipients: string[];
  spool: SpooledMessage;
}) => Promise<void>;

export interface PipelineDeps {
  logger: Logger;
  hostname: string;
  instance: string;
  dataDeadlineMs: number;
  policy: PolicySettings;
  /** Signs our loop header and judges incoming ones (only a valid, fresh one from a trusted client skips the scan). */
  loopGuard: LoopGuard;
  dlp: Inspector;
  quarantine: QuarantineStore;
  onVerdict?: VerdictHook | undefined;
  /** Encryption gateways by name (route_to_gateway): separate next-hop pools, whole transactions. */
  gateways?: ReadonlyMap<string, GatewayDeliverer> | undefined;
  /** Called once with the final outcome (after deadline handling); for sender notices. Must not throw. */
  onOutcome?: ((o: Omit<Outcome, 'settled'>, msg: MessageInput) => void) | undefined;
}

export interface MessageInput {
  queryId: string;
  receivedAt: Date;
  clientAddress: string;
  clientTrusted: boolean;
  heloName: string | null;
  /** The envelope with the recipients the next hop (or we, without one) accepted. */
  envelope: Envelope;
  spool: SpooledMessage;
  /** The SMTP AUTH user, for policy rules. */
  authUser?: string | null;
  /** Our Received: line, prepended to every copy that leaves the spool (relayed or held). */
  trace: Buffer;
  sink: MessageSink;
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
  /** The policy rule the message matched (none: the default table). */
  rule?: string;
  /** Settles when every use of the spool file is over (including work that outlived a deadline). */
  settled: Promise<void>;
}

/** The outcome before `settled` is known: the reply and what the log and metrics record. */
export type OutcomeFields = Omit<Outcome, 'settled'>;

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
  const deadline = new Promise<OutcomeFields>((resolve) => {
    timer = setTimeout(() => {
      ac.abort(new RelayError('DEADLINE_EXCEEDED'));
      resolve({
        reply: catalogueReply('DEADLINE_EXCEEDED', msg.queryId),
        action: 'tempfail-deadline',
        actionCode: null,
        policies: [],
        dlpMs: null,
        relayMs: null,
        errorClass: 'deadline',
      });
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
      return {
        reply: catalogueReply('INTERNAL', msg.queryId),
        action: 'tempfail-internal',
        actionCode: null,
        policies: [],
        dlpMs: null,
        relayMs: null,
        errorClass: 'internal',
        settled,
      };
    },
  );
}

async function run(deps: PipelineDeps, msg: MessageInput, signal: AbortSignal, side: Array<Promise<unknown>>): Promise<OutcomeFields> {
  const { spool, queryId } = msg;
  // A loop header that does not let the message skip the scan is cut out of the bytes we scan and deliver.
  const { rule, strip: skip } = deps.loopGuard.judge(spool.headers, msg.clientTrusted, { queryId, clientAddress: msg.clientAddress });
  const strippedBytes = skip.reduce((n, r) => n + (r.end - r.start), 0);
  // The first matching rule's table, mode and header setting apply to this message.
  const { settings: policy, rule: ruleName } = settingsFor(deps.policy, {
    sender: msg.envelope.from,
    recipients: msg.envelope.to.map((r) => r.address),
    clientAddress: msg.clientAddress,
    authUser: msg.authUser ?? null,
  });

  let dlp: InspectResult | null = null;
  let decision: Decision;
  if (rule === 'skip') {
    decision = decide({ kind: 'skipped' }, queryId, policy);
  } else {
    dlp = await deps.dlp.inspect(
      {
        queryId,
        sender: msg.envelope.from,
        recipients: msg.envelope.to.map((r) => r.address),
        // md5 describes the bytes UCWI receives; after stripping those differ from the spool's hash, so leave it out.
        ...(skip.length ? {} : { md5: spool.md5 }),
        size: spool.size - strippedBytes,
        openMessage: () => spool.open({ skip }),
        readSmall: () => spool.readSmall({ skip }),
      },
      signal,
    );
    decision = decide(
      dlp.ok
        ? { kind: 'verdict', actionCode: dlp.actionCode }
        : { kind: 'error', errorClass: dlp.errorClass, ...(dlp.actionCode !== undefined ? { actionCode: dlp.actionCode } : {}) },
      queryId,
      policy,
    );
  }
  const actionCode = dlp ? (dlp.ok ? dlp.actionCode : (dlp.actionCode ?? null)) : null;
  const base = {
    actionCode,
    policies: dlp?.ok ? dlp.policies : [],
    dlpMs: dlp?.elapsedMs ?? null,
    ...(ruleName !== null ? { rule: ruleName } : {}),
    ...(dlp && !dlp.ok ? { errorClass: dlp.errorClass, detail: dlp.detail } : {}),
  };

  // Monitor mode acts on nothing, CAS lists included.
  if (deps.onVerdict && !(decision.action === 'relay' && decision.wouldBe !== undefined)) {
    // Side work gets its own promise; the reply never waits for it, only the spool cleanup does.
    side.push(
      deps
        .onVerdict({ queryId, actionCode, action: decision.label, sender: msg.envelope.from, recipients: msg.envelope.to.map((r) => r.address), spool })
        .catch((err: unknown) => deps.logger.warn({ err, queryId }, 'verdict hook failed')),
    );
  }

  if (signal.aborted) throw signal.reason;
  return act({ deps, msg, base, skip, signal }, decision);
}
