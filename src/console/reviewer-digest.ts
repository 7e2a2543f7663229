// Reviewer digests: an hourly or daily mail listing the messages newly held since the last digest, with links to their console pages; its progress is a mark kept in the quarantine store's audit, so restarts neither repeat nor skip.
import { Readable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import { generatedMail, oneLine } from '../quarantine/notify.js';
import type { DeliverFn } from '../quarantine/operations.js';
import type { QuarantineRecord, QuarantineStore, StoredEnvelope } from '../quarantine/types.js';

export type DigestInterval = 'hourly' | 'daily';

export interface DigestSettings {
  interval: DigestInterval;
  /** Hour of the day (UTC) a daily digest covers up to and is sent at. */
  dailyHourUtc: number;
  recipients: readonly string[];
  /** From: and envelope sender (bounces of a reviewer's mailbox go to whoever runs the relay, not nowhere). */
  from: string;
  /** Origin the links point to (the proxy in front of the console), e.g. https://mail-admin.example. */
  publicUrl: string;
  basePath: string;
  /** Right-hand side of the Message-ID. */
  hostname: string;
  /** Messages listed by name; the rest are counted. */
  maxItems: number;
  /** Messages held this recently wait for the next digest (default 1 minute), so a record not yet listable is never passed over. */
  settleMs?: number;
  /** How often the scheduler looks whether a digest is due (default 1 minute). */
  checkMs?: number;
  /** After a failed send, the next attempt waits this long (default 5 minutes). */
  retryMs?: number;
  timeoutMs?: number;
}

/** Audit identity of the digest: its entries are also its durable state (see readState). */
export const DIGEST_ACTOR = 'digest';
export const DIGEST_ACTION = 'digest';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The latest period boundary at or before `at`: the top of the hour, or dailyHourUtc:00 UTC. */
export function periodBoundary(interval: DigestInterval, dailyHourUtc: number, at: Date): Date {
  const t = at.getTime();
  if (interval === 'hourly') return new Date(Math.floor(t / HOUR) * HOUR);
  const offset = dailyHourUtc * HOUR;
  return new Date(Math.floor((t - offset) / DAY) * DAY + offset);
}

/** What the digest lists: newest first, as the store pages them. */
export interface DigestWindow {
  /** After the previous digest's newest message. */
  since: Date;
  /** Held before this time. */
  until: Date;
  items: QuarantineRecord[];
  /** Held messages of the window beyond `items` (a lower bound when `more` is true). */
  moreCount: number;
  more: boolean;
}

const iso = (d: Date | string): string => new Date(d).toISOString().replace(/\.\d+Z$/, 'Z');

/** Builds the digest mail (pure: pass `now` and `messageId` for a deterministic result). Only metadata, never content. */
export function buildDigest(w: DigestWindow, s: DigestSettings, opts: { now?: Date; messageId?: string } = {}): { envelope: StoredEnvelope; message: Buffer } {
  const origin = s.publicUrl.replace(/\/+$/, '');
  const total = w.items.length + w.moreCount;
  const lines = [
    `${total}${w.more ? '+' : ''} new held message${total === 1 ? '' : 's'} since the last digest (held after ${iso(w.since)}, before ${iso(w.until)} UTC).`,
    `Open the quarantine console to review them: ${origin}${s.basePath}/messages?status=held`,
    '',
  ];
  for (const r of w.items) {
    const rcpts = r.envelope.to.map((t) => t.address);
    const shown = rcpts.slice(0, 3).join(', ') + (rcpts.length > 3 ? ` and ${rcpts.length - 3} more` : '');
    const policies = r.policies.map((p) => p.name).join(', ') || r.reason;
    // Sender, subject and policy names come partly from outside: one bounded, printable line each.
    lines.push(
      `* ${iso(r.quarantinedAt)}  ${oneLine(r.subject ?? '(no subject)', 120)}`,
      `  from ${oneLine(r.envelope.from || '<>', 120)} to ${oneLine(shown, 300)}`,
      `  ${oneLine(`policy: ${policies}`, 200)}`,
      `  ${origin}${s.basePath}/messages/${r.id}`,
      '',
    );
  }
  if (w.moreCount > 0) lines.push(`... and ${w.moreCount}${w.more ? ' or more' : ''} more in the console.`, '');
  lines.push('This digest is sent by dlp-relay; it lists metadata only, never message content.');
  const body = lines.join('\r\n') + '\r\n';
  const ascii = /^[\x00-\x7f]*$/.test(body);
  const from = oneLine(s.from, 254);
  const to = s.recipients.map((r) => oneLine(r, 254));
  const message = generatedMail({
    from,
    to,
    subject: `[dlp-relay] ${total}${w.more ? '+' : ''} new held message${total === 1 ? '' : 's'} (${s.interval} digest)`,
    autoSubmitted: 'auto-generated',
    ownHeader: `X-DLP-Digest: until=${iso(w.until)}`,
    body,
    ascii,
    hostname: s.hostname,
    now: opts.now,
    messageId: opts.messageId,
  });
  const smtpUtf8 = [from, ...to].some((a) => /[^\x00-\x7f]/.test(a));
  return {
    envelope: { from, to: to.map((address) => ({ address })), smtpUtf8, ...(smtpUtf8 ? {} : { bodyType: '7bit' as const }) },
    message,
  };
}

export type DigestRun =
  | { status: 'not-due' }
  | { status: 'started'; mark: DigestMark }
  | { status: 'empty'; period: Date }
  | { status: 'sent'; period: Date; count: number; accepted: string[]; mark: DigestMark }
  | { status: 'failed'; period: Date; error: string };

/**
 * How far the digests have got, in the store's own terms: the newest held message already listed (quarantinedAt, id).
 * A store-side mark, not a clock reading, so skew between this relay and a PostgreSQL server can neither repeat nor skip.
 */
export interface DigestMark {
  at: string;
  id: string;
}

/** The durable state, as the latest digest audit entry records it. */
export interface DigestState {
  /** The period boundary of the latest digest (or of the start). */
  period: Date;
  mark: DigestMark;
}

export interface DigestDeps {
  store: QuarantineStore;
  deliver: DeliverFn;
  settings: DigestSettings;
  logger?: Logger;
  /** The clock; tests inject a fake one instead of waiting hours. */
  now?: () => Date;
}

const after = (r: QuarantineRecord, m: DigestMark): boolean => {
  const a = Date.parse(r.quarantinedAt);
  const b = Date.parse(m.at);
  return a > b || (a === b && r.id > m.id);
};

/** Pages the held messages newer than `mark` and quarantined before `cutoff`, keeping `max` and counting (boundedly) the rest. */
async function collect(
  store: QuarantineStore,
  mark: DigestMark,
  cutoff: Date,
  max: number,
): Promise<Omit<DigestWindow, 'since' | 'until'> & { newest: DigestMark | null }> {
  const items: QuarantineRecord[] = [];
  let moreCount = 0;
  let newest: DigestMark | null = null;
  let cursor: string | null = null;
  // At most 20 pages of 500: a digest is a prompt to open the console, not an inventory.
  for (let i = 0; i < 20; i++) {
    const page = await store.list({ status: 'held', from: new Date(mark.at), to: cutoff, limit: 500, ...(cursor ? { cursor } : {}) });
    for (const r of page.items) {
      if (!after(r, mark)) continue;
      // Newest first: the first one seen is the new mark.
      newest ??= { at: new Date(r.quarantinedAt).toISOString(), id: r.id };
      if (items.length < max) items.push(r);
      else moreCount++;
    }
    cursor = page.nextCursor;
    if (!cursor) return { items, moreCount, more: false, newest };
  }
  return { items, moreCount, more: true, newest };
}

/**
 * The scheduler. One instance per store is enough (in a cluster the supervisor runs it, like retention). A digest is
 * due once per period (top of the hour, or dailyHourUtc each day); it lists the held messages newer than the mark the
 * last one recorded. The new mark is recorded in the audit only after the next hop took the mail: a crash in between
 * repeats that digest rather than losing it, and a relay that was down for several periods sends one digest for all.
 */
export class ReviewerDigest {
  private readonly now: () => Date;
  private state: DigestState | null = null; // null: not read from the store yet
  /** Period already found empty (no mail needed); avoids listing the store every minute until the next period. */
  private checked: Date | null = null;
  private retryAfter = 0;
  private running: Promise<DigestRun> | null = null;

  constructor(private readonly deps: DigestDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  /** Reads the state once from the audit (newest digest entry first); none yet gives null. */
  async readState(): Promise<DigestState | null> {
    const page = await this.deps.store.listAudit({ action: DIGEST_ACTION, actor: DIGEST_ACTOR, limit: 20 });
    for (const a of page.items) {
      if (a.result !== 'ok' && a.result !== 'started') continue;
      const m = /^period=(\S+) mark=(\S+)\/(\S*)/.exec(a.detail ?? '');
      const period = m ? Date.parse(m[1]!) : NaN;
      const at = m ? Date.parse(m[2]!) : NaN;
      if (Number.isFinite(period) && Number.isFinite(at)) return { period: new Date(period), mark: { at: new Date(at).toISOString(), id: m![3]! } };
    }
    return null;
  }

  private async record(result: 'ok' | 'started', st: DigestState, extra: string): Promise<void> {
    await this.deps.store.audit({
      actor: DIGEST_ACTOR,
      action: DIGEST_ACTION,
      target: null,
      result,
      detail: `period=${st.period.toISOString()} mark=${st.mark.at}/${st.mark.id}${extra}`,
    });
    this.state = st;
  }

  /** Sends the digest if one is due; never throws (failures are logged and retried after retryMs). Runs never overlap. */
  tick(): Promise<DigestRun> {
    this.running ??= this.runOnce().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async runOnce(): Promise<DigestRun> {
    const s = this.deps.settings;
    const now = this.now();
    const period = periodBoundary(s.interval, s.dailyHourUtc, now);
    // Messages of the last moments wait for the next digest: a store stamps quarantinedAt a little before the
    // record can be listed, and one listed later than an older mark would never be listed again.
    const cutoff = new Date(now.getTime() - (s.settleMs ?? 60_000));
    try {
      const st = this.state ?? (this.state = await this.readState());
      if (!st) {
        // First start with digests on: "new" means held from now on; the backlog is the console's business.
        const mark = { at: cutoff.toISOString(), id: '' };
        await this.record('started', { period, mark }, '');
        this.deps.logger?.info({ period, mark }, 'reviewer digest started');
        return { status: 'started', mark };
      }
      if (period <= st.period || (this.checked && period <= this.checked) || now.getTime() < this.retryAfter) return { status: 'not-due' };
      const found = await collect(this.deps.store, st.mark, cutoff, s.maxItems);
      if (!found.newest) {
        // Nothing to send and nothing to record: the next digest starts from the same mark.
        this.checked = period;
        return { status: 'empty', period };
      }
      const since = new Date(st.mark.at);
      const mail = buildDigest({ since, until: cutoff, items: found.items, moreCount: found.moreCount, more: found.more }, s, { now });
      const accepted = await this.send(mail);
      const count = found.items.length + found.moreCount;
      await this.record('ok', { period, mark: found.newest }, ` messages=${count}${found.more ? '+' : ''} to=${accepted.join(',')}`);
      this.deps.logger?.info({ period, messages: count, to: accepted }, 'reviewer digest sent');
      return { status: 'sent', period, count, accepted, mark: found.newest };
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      this.retryAfter = now.getTime() + (s.retryMs ?? 300_000);
      this.deps.logger?.warn({ period, err: error }, 'reviewer digest failed; will retry');
      return { status: 'failed', period, error };
    }
  }
  /** Delivers through the relay's own deliverer; resolves with the recipients the next hop accepted, throws when none did. */
  private async send(mail: { envelope: StoredEnvelope; message: Buffer }): Promise<string[]> {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error('digest delivery timed out')), this.deps.settings.timeoutMs ?? 60_000);
    timer.unref();
    try {
      const { recipients, response } = await this.deps.deliver(mail.envelope, () => Readable.from([mail.message]), abort.signal);
      const accepted = recipients.filter((r) => r.status === 'accepted').map((r) => r.address);
      // Some reviewers reached counts as sent: resending to all for one full mailbox would spam the others.
      const missed = recipients.filter((r) => r.status !== 'accepted');
      if (missed.length) this.deps.logger?.warn({ missed }, 'reviewer digest not accepted for some recipients');
      if (accepted.length === 0) throw new Error(`next hop accepted no digest recipient: ${response || missed.map((r) => r.response).join('; ')}`);
      return accepted;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Starts the periodic check (unref'd timer); stop() cancels it and waits for a run in progress. */
  start(): () => Promise<void> {
    const timer = setInterval(() => void this.tick(), this.deps.settings.checkMs ?? 60_000);
    timer.unref();
    void this.tick();
    return async () => {
      clearInterval(timer);
      if (this.running) await this.running;
    };
  }
}
