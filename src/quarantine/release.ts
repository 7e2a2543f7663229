// Releasing a held message: claim, optional re-scan, delivery with the original envelope, and per-recipient bookkeeping so only accepted recipients count as released and the rest can be released again.
import { Readable } from 'node:stream';
import { DEFAULT_CLAIM_TTL_MS } from './common.js';
import {
  audited,
  auditTarget,
  errText,
  guard,
  normalizeId,
  DEFAULT_RELEASE_TIMEOUT_MS,
  type Actor,
  type DeliveryReport,
  type OperationsContext,
  type RescanResult,
} from './ops-context.js';
import type { QuarantineRecord, RecipientResult, ReleaseClaimInfo, ReleaseInfo, StoredEnvelope, StoredRecipient } from './types.js';

export interface ReleaseOptions {
  /** Ask the DLP engine again first; a "not allowed" answer stops the release. */
  rescan?: boolean;
  /**
   * Deliver to these original recipients only. May name recipients the next hop refused before (a plain
   * release never retries those), never ones it already accepted.
   */
  recipients?: string[];
  /** Deliver to this address instead of the original recipients; once accepted, the message is released. */
  redirectTo?: string;
  /** Give up on these original recipients: they are never delivered, and no longer keep the message held. */
  drop?: string[];
}

export type RecipientReport = DeliveryReport['recipients'][number];

export type ReleaseOutcome =
  | {
      /** released: every recipient of this delivery accepted; partial: some did; undelivered: none did. */
      status: 'released' | 'partial' | 'undelivered';
      id: string;
      /** This delivery, one entry per recipient it was addressed to. */
      recipients: RecipientReport[];
      /** Original recipients given up on by this release. */
      dropped: string[];
      /** The next hop's final reply ('' when DATA was not sent). */
      response: string;
      /** The message is fully released: every original recipient accepted or dropped, or the redirect accepted. */
      complete: boolean;
      /** Original recipients still held (deferred, refused, or not tried yet); [] when complete. */
      pending: string[];
      releasedAt: string;
      rescan?: RescanResult;
    }
  | { status: 'not-found'; id: string }
  | { status: 'already-released'; id: string; release: ReleaseInfo | null }
  | { status: 'in-progress'; id: string; claim: ReleaseClaimInfo | null }
  | { status: 'blocked'; id: string; rescan: RescanResult }
  | { status: 'invalid'; id: string; message: string }
  | { status: 'failed'; id: string; message: string };

/** Printable ASCII only, bounded: what goes into a header we add must never break the header block. */
function headerSafe(s: string, max = 200): string {
  return s.replace(/[^\x20-\x7e]/g, '?').replace(/\s+/g, ' ').trim().slice(0, max) || '?';
}

/**
 * The one header a release adds: when, who, and the reference the sender was given. Only the actor's
 * name goes out with the mail; its source (admin address, user@host) stays in the audit trail.
 */
export function releaseHeader(at: Date, actor: Actor, queryId: string): string {
  return `X-DLP-Released: ${at.toISOString()} by ${headerSafe(actor.name)} (ref ${headerSafe(queryId, 100)})`;
}

/**
 * Prepends one header line to a stored message without touching a byte of it; the line ending follows
 * the message's own (CRLF as received over SMTP, LF if it was stored that way).
 */
export function prependHeader(source: Readable, headerLine: string): Readable {
  const eolOf = (buf: Buffer): string => {
    const nl = buf.indexOf(0x0a);
    return nl < 0 || (nl > 0 && buf[nl - 1] === 0x0d) ? '\r\n' : '\n';
  };
  async function* gen(): AsyncGenerator<Buffer> {
    // Hold back only until the first line ending is seen (or 64 KiB), then pass chunks through untouched.
    const head: Buffer[] = [];
    let headBytes = 0;
    let sent = false;
    for await (const c of source) {
      const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c as string);
      if (sent) {
        yield chunk;
        continue;
      }
      head.push(chunk);
      headBytes += chunk.length;
      if (chunk.indexOf(0x0a) < 0 && headBytes < 64 * 1024) continue;
      const buf = Buffer.concat(head, headBytes);
      yield Buffer.from(headerLine + eolOf(buf));
      yield buf;
      sent = true;
    }
    if (!sent) {
      const buf = Buffer.concat(head, headBytes);
      yield Buffer.from(headerLine + eolOf(buf));
      if (buf.length) yield buf;
    }
  }
  return Readable.from(gen(), { objectMode: false });
}

const ADDRESS = /^[^\s<>()[\]\\,;:@"\u0000-\u001f\u007f]{1,64}@[^\s<>()[\]\\,;:@"\u0000-\u001f\u007f]{1,253}$/;

const key = (a: string): string => a.trim().toLowerCase();

/** A record's latest result per original recipient, by lowercased address. */
function resultsOf(record: QuarantineRecord): Map<string, RecipientResult> {
  return new Map((record.recipientResults ?? []).map((r) => [key(r.address), r]));
}

/** Accepted and dropped recipients are settled: they never keep a message held and are never delivered again. */
function settled(r: RecipientResult | undefined): boolean {
  return r?.status === 'accepted' || r?.status === 'dropped';
}

export interface ReleasePlan {
  env: StoredEnvelope;
  drop: StoredRecipient[];
  redirect: boolean;
}

/** Picks the recipients of one release from the record's state and the options; a string is the reason it cannot run. */
export function planRelease(record: QuarantineRecord, opts: ReleaseOptions): ReleasePlan | string {
  const env = record.envelope;
  const results = resultsOf(record);
  if (opts.recipients !== undefined && opts.redirectTo !== undefined) return 'recipients and redirectTo cannot be combined';
  if (opts.drop !== undefined && opts.redirectTo !== undefined) return 'drop and redirectTo cannot be combined';
  if (opts.redirectTo !== undefined) {
    const a = opts.redirectTo.trim();
    if (!ADDRESS.test(a) || a.length > 254) return 'redirectTo is not a valid address';
    const nonAscii = /[^\x00-\x7f]/.test(a);
    return { env: { ...env, to: [{ address: a }], smtpUtf8: env.smtpUtf8 || nonAscii }, drop: [], redirect: true };
  }
  const pick = (list: unknown, name: string): StoredRecipient[] | string => {
    if (!Array.isArray(list) || list.length === 0) return `${name} must be a non-empty list`;
    const chosen: StoredRecipient[] = [];
    for (const want of list) {
      if (typeof want !== 'string') return `${name} must be addresses`;
      const match = env.to.find((r) => key(r.address) === key(want));
      if (!match) return `${name} must be a subset of the original recipients`;
      if (results.get(key(match.address))?.status === 'accepted') return `already delivered to ${match.address}; a recipient is never delivered twice`;
      if (!chosen.includes(match)) chosen.push(match);
    }
    return chosen;
  };
  const drop = opts.drop === undefined ? [] : pick(opts.drop, 'drop');
  if (typeof drop === 'string') return drop;
  let to: StoredRecipient[];
  if (opts.recipients !== undefined) {
    const chosen = pick(opts.recipients, 'recipients');
    if (typeof chosen === 'string') return chosen;
    if (chosen.some((r) => drop.includes(r))) return 'a recipient cannot be both released and dropped';
    to = chosen;
  } else {
    // A plain release retries what is not final: never tried, or deferred. Refused (5xx) waits for an operator.
    to = env.to.filter((r) => {
      const s = results.get(key(r.address))?.status;
      return (s === undefined || s === 'deferred') && !drop.includes(r);
    });
    const refused = env.to.filter((r) => results.get(key(r.address))?.status === 'refused' && !drop.includes(r));
    if (to.length === 0 && drop.length === 0 && refused.length > 0) {
      const list = refused.map((r) => `${r.address} (${results.get(key(r.address))!.code})`).join(', ');
      return `nothing left to release on its own: the next hop refused ${list}; name them in recipients to try again, or drop them`;
    }
  }
  return { env: { ...env, to }, drop, redirect: false };
}

/** Every recipient of the delivery gets an entry; one the deliverer did not mention counts as deferred (never as delivered). */
function normalizeReport(env: StoredEnvelope, report: DeliveryReport): RecipientReport[] {
  const byKey = new Map(report.recipients.map((r) => [key(r.address), r]));
  return env.to.map((r) => {
    const got = byKey.get(key(r.address));
    return got ? { ...got, address: r.address } : { address: r.address, status: 'deferred', code: 0, response: 'no result for this recipient' };
  });
}

function describeResult(recipients: RecipientReport[], dropped: string[], pending: string[], redirect: boolean): string {
  const of = (s: RecipientReport['status']) => recipients.filter((r) => r.status === s);
  const parts = [`delivered: ${of('accepted').map((r) => r.address).join(', ') || 'none'}${redirect ? ' (redirect)' : ''}`];
  for (const s of ['refused', 'deferred'] as const) {
    if (of(s).length) parts.push(`${s}: ${of(s).map((r) => `${r.address} (${r.code} ${r.response})`).join(', ')}`);
  }
  if (dropped.length) parts.push(`dropped: ${dropped.join(', ')}`);
  parts.push(pending.length ? `still held for: ${pending.join(', ')}` : 'complete');
  return parts.join('; ');
}

/**
 * Release: claim (atomic, cross-process) → optional re-scan → deliver original bytes plus one header with
 * the planned envelope → record each recipient's result. Only accepted recipients count as released; the
 * message stays held (and can be released again) until every original recipient is accepted or dropped.
 * A concurrent release gets "in progress"; a release of a fully released message gets "already released".
 */
export async function releaseMessage(ctx: OperationsContext, actor: Actor, id: string, opts: ReleaseOptions = {}): Promise<ReleaseOutcome> {
  id = normalizeId(id);
  const target = auditTarget(id);
  const who = actor.source ? `${actor.name} [${actor.source}]` : actor.name;
  if (!target) {
    await audited(ctx, actor, 'release', null, 'not-found', 'malformed id');
    return { status: 'not-found', id };
  }
  const deliver = ctx.deliver;
  if (!deliver) throw new Error('release needs a deliver function');
  if (opts.rescan && !ctx.rescan) {
    await audited(ctx, actor, 'release', id, 'invalid', 'rescan requested but no scanner configured');
    return { status: 'invalid', id, message: 'rescan is not available' };
  }
  const current = await guard(ctx, actor, 'release', id, () => ctx.store.get(id));
  if (!current) {
    await audited(ctx, actor, 'release', id, 'not-found');
    return { status: 'not-found', id };
  }
  if (current.status === 'released') {
    await audited(ctx, actor, 'release', id, 'already-released');
    return { status: 'already-released', id, release: current.release ?? null };
  }
  // Checked before claiming so a bad request costs no claim; planned again under the claim, which is authoritative.
  const early = planRelease(current, opts);
  if (typeof early === 'string') {
    await audited(ctx, actor, 'release', id, 'invalid', early);
    return { status: 'invalid', id, message: early };
  }

  const claim = await guard(ctx, actor, 'release', id, () =>
    ctx.store.claimRelease(id, { actor: who, claimTtlMs: ctx.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS }),
  );
  if (claim.status === 'not-found') {
    await audited(ctx, actor, 'release', id, 'not-found');
    return { status: 'not-found', id };
  }
  if (claim.status === 'already-released') {
    await audited(ctx, actor, 'release', id, 'already-released');
    return { status: 'already-released', id, release: claim.record.release ?? null };
  }
  if (claim.status === 'in-progress') {
    await audited(ctx, actor, 'release', id, 'in-progress');
    return { status: 'in-progress', id, claim: claim.record.releaseClaim ?? null };
  }

  const record = claim.record;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error('release timed out')), ctx.releaseTimeoutMs ?? DEFAULT_RELEASE_TIMEOUT_MS);
  timer.unref();
  const giveBack = async (): Promise<void> => {
    await ctx.store.abandonRelease(id, claim.token).catch((err: unknown) => {
      // The claim then expires after its TTL; until then the message shows "release in progress".
      ctx.logger?.error({ id, err: errText(err) }, 'quarantine release claim could not be dropped');
    });
  };
  try {
    const plan = planRelease(record, opts);
    if (typeof plan === 'string') {
      await giveBack();
      await audited(ctx, actor, 'release', id, 'invalid', plan);
      return { status: 'invalid', id, message: plan };
    }
    let rescan: RescanResult | undefined;
    if (opts.rescan && ctx.rescan) {
      try {
        rescan = await ctx.rescan(record, () => ctx.store.openMessage(id), abort.signal);
      } catch (err) {
        await giveBack();
        await audited(ctx, actor, 'release', id, 'failed', `rescan failed: ${errText(err)}`);
        return { status: 'failed', id, message: `rescan failed: ${errText(err)}` };
      }
      if (!rescan.allow) {
        await giveBack();
        await audited(ctx, actor, 'release', id, 'blocked', `rescan actionCode=${rescan.actionCode ?? 'none'}: ${rescan.detail}`);
        return { status: 'blocked', id, rescan };
      }
    }

    const at = (ctx.now ?? (() => new Date()))();
    const header = releaseHeader(at, actor, record.queryId);
    let report: RecipientReport[] = [];
    let response = '';
    if (plan.env.to.length > 0) {
      try {
        const r = await deliver(plan.env, () => prependHeader(ctx.store.openMessage(id), header), abort.signal);
        response = r.response;
        report = normalizeReport(plan.env, r);
      } catch (err) {
        // Nothing was accepted: every recipient stays to do, and the release can simply be run again.
        report = plan.env.to.map((r) => ({ address: r.address, status: 'deferred' as const, code: 0, response: `delivery failed: ${errText(err)}` }));
      }
    }

    // The record's new state: this delivery's results (original recipients only) and the drops, over the old ones.
    const results = resultsOf(record);
    const stamp = { at: at.toISOString(), by: who };
    if (!plan.redirect) for (const r of report) results.set(key(r.address), { ...r, ...stamp });
    for (const r of plan.drop) results.set(key(r.address), { address: r.address, status: 'dropped', code: 0, response: 'dropped by operator', ...stamp });
    const recipientResults = [...results.values()];
    const accepted = report.filter((r) => r.status === 'accepted');
    const complete = plan.redirect ? accepted.length > 0 : record.envelope.to.every((r) => settled(results.get(key(r.address))));
    const pending = complete ? [] : record.envelope.to.filter((r) => !settled(results.get(key(r.address)))).map((r) => r.address);
    const dropped = plan.drop.map((r) => r.address);

    // Something was delivered: the state must not be lost lightly, or a later release could deliver to the same recipients again.
    let recorded = false;
    for (let attempt = 0; attempt < 3 && !recorded; attempt++) {
      try {
        if (complete) {
          const delivered = recipientResults.filter((r) => r.status === 'accepted').map((r) => r.address);
          const info: ReleaseInfo = { ...stamp, recipients: plan.redirect ? [...delivered, ...accepted.map((r) => r.address)] : delivered, response };
          await ctx.store.completeRelease(id, claim.token, info, recipientResults);
        } else {
          await ctx.store.partialRelease(id, claim.token, recipientResults);
        }
        recorded = true;
      } catch (err) {
        ctx.logger?.error({ id, attempt, err: errText(err) }, 'quarantine release delivered but its result not yet recorded');
      }
    }
    // Nothing accepted and nothing recorded: dropping the claim risks no duplicate, and keeps the message releasable now.
    if (!recorded && accepted.length === 0) await giveBack();

    const status = report.length === accepted.length ? 'released' : accepted.length > 0 ? 'partial' : 'undelivered';
    await audited(
      ctx,
      actor,
      'release',
      id,
      status === 'released' ? 'ok' : status === 'partial' ? 'partial' : 'failed',
      `${describeResult(report, dropped, pending, plan.redirect)}${response ? `: ${response}` : ''}${recorded ? '' : ' [WARNING: result not recorded]'}`,
    );
    return { status, id, recipients: report, dropped, response, complete, pending, releasedAt: stamp.at, ...(rescan ? { rescan } : {}) };
  } finally {
    clearTimeout(timer);
  }
}
