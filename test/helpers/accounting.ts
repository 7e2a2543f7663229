// Message accounting for fault tests: a batch of marked messages, a client that retries 4xx and dropped connections a bounded number of times, and the tally delivered + quarantined + rejected = sent.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SmtpSession, replyCode } from './raw-smtp.js';

/** What the DLP simulator does with each kind (fixtures/detectors-test.yaml): relay, block (550), quarantine (250 held). */
export type Kind = 'clean' | 'block' | 'quarantine';

export interface Attempt {
  /** Final reply to the end of DATA (or an earlier refusal), null when the connection dropped first. */
  reply: string | null;
  /** Why there is no reply: the server closed or reset the connection. */
  dropped?: string;
}

export interface Tracked {
  kind: Kind;
  /** Unique token in the body: how the message is found at the sink and in the quarantine. */
  marker: string;
  body: string;
  attempts: Attempt[];
}

const BODY: Record<Kind, string> = {
  clean: 'Quarterly numbers look fine.',
  block: 'Card: 4111 1111 1111 1111',
  quarantine: 'Please review DLPTEST-ACTION-6',
};

export function makeBatch(label: string, kinds: Kind[]): Tracked[] {
  const run = randomBytes(4).toString('hex');
  return kinds.map((kind, i) => {
    const marker = `MARK-${label}-${run}-${i}`;
    const body =
      `From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: ${label} ${i}\r\nMessage-ID: <${marker}@example.test>\r\n` +
      `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${marker}\r\n${BODY[kind]}\r\n`;
    return { kind, marker, body, attempts: [] };
  });
}

/** One complete transaction; a closed or reset connection is an outcome (dropped), not a test error. */
export async function attemptOnce(port: number, m: Tracked, timeoutMs = 15_000): Promise<Attempt> {
  let s: SmtpSession;
  try {
    s = await SmtpSession.connect(port, { timeoutMs });
  } catch (e) {
    return { reply: null, dropped: (e as Error).message };
  }
  try {
    if (replyCode(s.greeting) !== 220) return { reply: s.greeting };
    await s.cmd('EHLO client.example.test');
    const mail = await s.cmd('MAIL FROM:<alice@example.test>');
    if (replyCode(mail) !== 250) return { reply: mail };
    const rcpt = await s.cmd('RCPT TO:<bob@example.test>');
    if (replyCode(rcpt) !== 250) return { reply: rcpt };
    const reply = await s.data(m.body, { dotStuff: true });
    await s.quit();
    return { reply };
  } catch (e) {
    return { reply: null, dropped: (e as Error).message };
  } finally {
    s.close();
  }
}

export function lastAttempt(m: Tracked): Attempt | undefined {
  return m.attempts[m.attempts.length - 1];
}

/** A sending MTA keeps the message and tries again after a 4xx or a lost connection; after 2xx/5xx it is done. */
export function needsRetry(m: Tracked): boolean {
  const a = lastAttempt(m);
  if (!a) return true;
  return a.reply === null || replyCode(a.reply) === 421 || (replyCode(a.reply) >= 400 && replyCode(a.reply) < 500);
}

/**
 * Sends the batch like a queueing MTA: round 1 with the fault active, then `clearFault()` and up to
 * `maxTries - 1` further rounds for the messages that got 4xx or a dropped connection. Bounded in
 * rounds; each transaction is bounded by the session timeout.
 */
export async function sendWithRetries(port: number | (() => number), batch: Tracked[], clearFault: () => Promise<void> | void, maxTries = 3): Promise<void> {
  for (let round = 1; round <= maxTries; round++) {
    const pending = batch.filter(needsRetry);
    if (pending.length === 0) return;
    if (round === 2) await clearFault();
    const p = typeof port === 'function' ? port() : port;
    const results = await Promise.all(pending.map((m) => attemptOnce(p, m)));
    results.forEach((r, i) => pending[i]!.attempts.push(r));
  }
}

/** How often each marker occurs in a list of delivered message bodies. */
export function countMarkers(batch: Tracked[], bodies: Array<Buffer | null>): Map<string, number> {
  const counts = new Map(batch.map((m) => [m.marker, 0]));
  for (const b of bodies) {
    if (!b) continue;
    const text = b.toString('latin1');
    for (const m of batch) if (text.includes(m.marker)) counts.set(m.marker, (counts.get(m.marker) ?? 0) + 1);
  }
  return counts;
}

/** Quarantined copies of each marker: the .eml files of the filesystem store. */
export function quarantineCounts(batch: Tracked[], dir: string): Map<string, number> {
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.eml'));
  } catch {
    /* no store directory: nothing quarantined */
  }
  return countMarkers(
    batch,
    names.map((n) => readFileSync(join(dir, n))),
  );
}

export interface Tally {
  sent: number;
  delivered: number;
  quarantined: number;
  rejected: number;
  /** Extra copies at the sink beyond the first, summed over the batch. */
  duplicates: number;
  problems: string[];
}

export const POLICY_REJECT = /^550 5\.7\.1 Message rejected by data-loss-prevention policy \(ref [0-9a-f-]{36}\)$/;

/**
 * The invariants of issue 5 for one batch:
 *  - every 2xx was earned: "relayed" → at the sink, "held" → in the quarantine;
 *  - every 5xx is a policy reject or one of `nextHop5xx` (the next hop's own), never our failure;
 *  - each message ends in exactly one bucket (delivered, quarantined, rejected);
 *  - at most `maxCopies` copies of any message reach the sink, never more than one per attempt.
 */
export function tally(batch: Tracked[], atSink: Map<string, number>, inQuarantine: Map<string, number>, opts: { maxCopies?: number; nextHop5xx?: RegExp } = {}): Tally {
  const maxCopies = opts.maxCopies ?? 1;
  const t: Tally = { sent: batch.length, delivered: 0, quarantined: 0, rejected: 0, duplicates: 0, problems: [] };
  for (const m of batch) {
    const sinkN = atSink.get(m.marker) ?? 0;
    const qN = inQuarantine.get(m.marker) ?? 0;
    const last = lastAttempt(m);
    const code = last?.reply ? replyCode(last.reply) : null;
    const rejected = code !== null && code >= 500;
    for (const a of m.attempts) {
      if (!a.reply) continue;
      const c = replyCode(a.reply);
      if (c >= 500 && !POLICY_REJECT.test(a.reply) && !(opts.nextHop5xx && opts.nextHop5xx.test(a.reply))) t.problems.push(`${m.marker}: 5xx that is neither policy nor next hop: ${a.reply}`);
      if (c >= 200 && c < 300) {
        if (/Ok: queued as SINK/.test(a.reply) && sinkN === 0) t.problems.push(`${m.marker}: 250 relayed but not at the sink`);
        if (/held for review/.test(a.reply) && qN === 0) t.problems.push(`${m.marker}: 250 held but not in the quarantine`);
      }
    }
    const buckets = [sinkN > 0, qN > 0, rejected].filter(Boolean).length;
    if (buckets !== 1) t.problems.push(`${m.marker} (${m.kind}): in ${buckets} buckets (sink ${sinkN}, quarantine ${qN}, last reply ${last?.reply ?? last?.dropped ?? 'none'})`);
    if (sinkN > 0) t.delivered++;
    if (qN > 0) t.quarantined++;
    if (rejected) t.rejected++;
    if (sinkN > maxCopies) t.problems.push(`${m.marker}: ${sinkN} copies at the sink (at most ${maxCopies} allowed here)`);
    if (sinkN > m.attempts.length) t.problems.push(`${m.marker}: ${sinkN} copies from ${m.attempts.length} attempts`);
    if (qN > 1) t.problems.push(`${m.marker}: quarantined ${qN} times`);
    t.duplicates += Math.max(0, sinkN - 1);
  }
  return t;
}
