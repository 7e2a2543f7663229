// Message accounting for fault tests: a batch of marked messages, a client that retries 4xx and dropped connections a bounded number of times, and the tally delivered + quarantined + rejected + deferred = sent.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SmtpSession, replyCode } from './raw-smtp.js';

/** What the DLP simulator does with each kind (fixtures/detectors-test.yaml): relay, block (550), quarantine (250 held). */
export type Kind = 'clean' | 'block' | 'quarantine';

/**
 * Where in the transaction an attempt ended. With lockstep the next hop's state shows up before the
 * dot (down → MAIL FROM, refused recipient → RCPT), so a test must be able to say where a reply came.
 */
export type Stage = 'connect' | 'greeting' | 'mail' | 'rcpt' | 'data';

export interface Attempt {
  /** Final reply to the end of DATA (or an earlier refusal), null when the connection dropped first. */
  reply: string | null;
  /** Why there is no reply: the server closed or reset the connection. */
  dropped?: string;
  /** The step whose reply (or drop) ended the attempt; 'data' covers the DATA command and the final dot. */
  stage?: Stage;
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
    return { reply: null, dropped: (e as Error).message, stage: 'connect' };
  }
  let stage: Stage = 'greeting';
  try {
    if (replyCode(s.greeting) !== 220) return { reply: s.greeting, stage };
    await s.cmd('EHLO client.example.test');
    stage = 'mail';
    const mail = await s.cmd('MAIL FROM:<alice@example.test>');
    if (replyCode(mail) !== 250) return { reply: mail, stage };
    stage = 'rcpt';
    const rcpt = await s.cmd('RCPT TO:<bob@example.test>');
    if (replyCode(rcpt) !== 250) return { reply: rcpt, stage };
    stage = 'data';
    const reply = await s.data(m.body, { dotStuff: true });
    // The final reply is the outcome; a server that closes right after it (shutdown: 421) does not undo it.
    await s.quit();
    return { reply, stage };
  } catch (e) {
    return { reply: null, dropped: (e as Error).message, stage };
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
  /** Last attempt was a 4xx or a dropped connection: the client still holds the message and will retry. */
  deferred: number;
  /** Messages that needed more than one attempt (a 4xx or a drop came first). */
  retried: number;
  /** Extra copies at the sink beyond the first, summed over the batch. */
  duplicates: number;
  problems: string[];
}

export const POLICY_REJECT = /^550 5\.7\.1 Message rejected by data-loss-prevention policy \(ref [0-9a-f-]{36}\)$/;

/** 2xx replies that do not mean "relayed": held in the quarantine, or written to the local outbox. */
const HELD = /held for review/;
const OUTBOX = /stored in local outbox/;

/**
 * The invariants of issue 5 for one batch:
 *  - every 2xx was earned: "held" → in the quarantine, any other 2xx (since lockstep the next hop's own
 *    final reply, whatever its text) → at the sink;
 *  - every 5xx is a policy reject or one of `nextHop5xx` (the next hop's own), never our failure;
 *  - each message ends in exactly one bucket (delivered, quarantined, rejected, deferred);
 *  - at most `maxCopies` copies of any message reach the sink, never more than one per attempt.
 */
export function tally(
  batch: Tracked[],
  atSink: Map<string, number>,
  inQuarantine: Map<string, number>,
  opts: { maxCopies?: number; nextHop5xx?: RegExp } = {},
): Tally {
  const maxCopies = opts.maxCopies ?? 1;
  const t: Tally = { sent: batch.length, delivered: 0, quarantined: 0, rejected: 0, deferred: 0, retried: 0, duplicates: 0, problems: [] };
  for (const m of batch) {
    const sinkN = atSink.get(m.marker) ?? 0;
    const qN = inQuarantine.get(m.marker) ?? 0;
    const last = lastAttempt(m);
    const code = last?.reply ? replyCode(last.reply) : null;
    const rejected = code !== null && code >= 500;
    const deferred = last !== undefined && needsRetry(m);
    for (const a of m.attempts) {
      if (!a.reply) continue;
      const c = replyCode(a.reply);
      if (c >= 500 && !POLICY_REJECT.test(a.reply) && !(opts.nextHop5xx && opts.nextHop5xx.test(a.reply)))
        t.problems.push(`${m.marker}: 5xx that is neither policy nor next hop: ${a.reply}`);
      if (c >= 200 && c < 300) {
        if (HELD.test(a.reply)) {
          if (qN === 0) t.problems.push(`${m.marker}: 250 held but not in the quarantine`);
        } else if (OUTBOX.test(a.reply)) {
          t.problems.push(`${m.marker}: stored in the local outbox, which this tally cannot see: ${a.reply}`);
        } else if (sinkN === 0) t.problems.push(`${m.marker}: ${a.reply} (relayed) but not at the sink`);
      }
    }
    const buckets = [sinkN > 0, qN > 0, rejected, deferred].filter(Boolean).length;
    if (buckets !== 1)
      t.problems.push(`${m.marker} (${m.kind}): in ${buckets} buckets (sink ${sinkN}, quarantine ${qN}, last reply ${last?.reply ?? last?.dropped ?? 'none'})`);
    if (sinkN > 0) t.delivered++;
    if (qN > 0) t.quarantined++;
    if (rejected) t.rejected++;
    if (deferred) t.deferred++;
    if (m.attempts.length > 1) t.retried++;
    if (sinkN > maxCopies) t.problems.push(`${m.marker}: ${sinkN} copies at the sink (at most ${maxCopies} allowed here)`);
    if (sinkN > m.attempts.length) t.problems.push(`${m.marker}: ${sinkN} copies from ${m.attempts.length} attempts`);
    if (qN > 1) t.problems.push(`${m.marker}: quarantined ${qN} times`);
    t.duplicates += Math.max(0, sinkN - 1);
  }
  return t;
}
