// One message after 354: spool it, stamp our Received: line, run the pipeline with this transaction's sink, and write the one summary log line.
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { spoolMessage } from '../spool/spool.js';
import { processMessage, type MessageSink, type Outcome } from '../pipeline/process.js';
import { catalogueReply, formatReply, replyClass, type SmtpReply } from '../errors.js';
import type { SmtpSession } from '../smtp/server.js';
import { passThrough } from '../egress/next-hop-errors.js';
import type { ClientTransaction, Ingress } from './server.js';

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 date-time in UTC ("Sat, 28 Nov 2026 18:47:29 +0000"): no obsolete forms, no locale. */
export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/**
 * Our trace line (RFC 5321 §4.4): `Received: from <helo> ([<ip>]) by <hostname> (dlp-relay) with
 * ESMTP[S][A] id <queryID>; <date>`. The HELO name is the client's word, so anything that is not a
 * plain domain or address literal is replaced by "unknown" rather than copied into a header.
 */
export function traceHeader(s: Pick<SmtpSession, 'heloName' | 'remoteAddress' | 'transmissionType'>, hostname: string, queryId: string, at: Date): Buffer {
  const helo = s.heloName && /^[A-Za-z0-9.:_[\]-]{1,255}$/.test(s.heloName) ? s.heloName : 'unknown';
  const ip = s.remoteAddress.includes(':') ? `IPv6:${s.remoteAddress}` : s.remoteAddress;
  return Buffer.from(
    `Received: from ${helo} ([${ip}])\r\n\tby ${hostname} (dlp-relay) with ${s.transmissionType} id ${queryId};\r\n\t${rfc5322Date(at)}\r\n`,
    'latin1',
  );
}

/** Reads a stream to its end, discarding it: the client must reach its final dot before it can get a reply. */
function drain(stream: Readable): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed || stream.readableEnded) return resolve();
    stream
      .on('end', resolve)
      .on('close', resolve)
      .on('error', () => resolve());
    stream.resume();
  });
}

export async function handleMessage(ingress: Ingress, s: SmtpSession, tx: ClientTransaction, message: Readable, clientTrusted: boolean): Promise<SmtpReply> {
  const { opts, deps, logger, observer } = ingress;
  const queryId = randomUUID();
  const receivedAt = new Date();
  const started = performance.now();
  const envelope = tx.envelope;
  let messageId: string | null = null;
  const log = (o: Partial<Outcome> & { reply: SmtpReply; action: string }, size: number) => {
    // The one summary line per message (Postfix's to=/status=): ids, envelope, verdict, reply, timings.
    logger.info(
      {
        event: 'message',
        cid: s.id,
        queryId,
        client: s.remoteAddress,
        helo: s.heloName,
        sender: envelope.from,
        to: tx.rcptLog,
        messageId,
        size,
        actionCode: o.actionCode ?? null,
        action: o.action,
        reply: formatReply(o.reply),
        replyClass: replyClass(o.reply.code),
        dlpMs: o.dlpMs ?? null,
        relayMs: o.relayMs ?? null,
        totalMs: Math.round(performance.now() - started),
        ...(o.policies && o.policies.length ? { policies: o.policies.map((p) => p.name) } : {}),
        ...(o.rule ? { rule: o.rule } : {}),
        ...(o.errorClass ? { errorClass: o.errorClass } : {}),
        ...(o.detail ? { detail: o.detail } : {}),
      },
      'message',
    );
  };

  if (tx.nextHop && !tx.nextHop.usable) {
    // The next hop dropped the transaction after accepting recipients: nothing can be relayed now.
    await drain(message);
    const reply = catalogueReply('NEXT_HOP_LOST', queryId);
    log({ reply, action: 'tempfail-next-hop-lost', errorClass: 'next-hop:rcpt' }, 0);
    return reply;
  }

  let spool;
  try {
    spool = await spoolMessage(message, { dir: opts.spoolDir, maxBytes: opts.maxMessageBytes, pool: ingress.spoolFiles });
  } catch (err) {
    const engineReply = (err as { reply?: SmtpReply }).reply;
    if (engineReply) {
      // The engine broke off DATA (size, line limit, bare line ending, client gone) and answers itself.
      log({ reply: engineReply, action: 'refused-data', errorClass: 'data', detail: (err as Error).message }, 0);
      return engineReply;
    }
    // Our disk failed (ENOSPC, EIO): read the rest of DATA so the client hears 4xx at its final dot, not a timeout.
    await drain(message);
    const code = (err as NodeJS.ErrnoException).code;
    const reply = catalogueReply(code === 'ENOSPC' || code === 'EDQUOT' ? 'SPOOL_FULL' : 'SPOOL_FAILED', queryId);
    logger.error({ err, cid: s.id, queryId }, 'spooling failed');
    log({ reply, action: 'tempfail-spool', errorClass: 'spool', detail: (err as Error).message }, 0);
    return reply;
  }
  if (spool.sizeExceeded) {
    await spool.remove();
    const reply = catalogueReply('SIZE_EXCEEDED');
    log({ reply, action: 'reject-size' }, spool.size);
    return reply;
  }
  messageId = spool.headers.find((h) => h.name === 'message-id')?.value ?? null;

  const nh = tx.nextHop;
  const outbox = opts.delivery.outbox;
  const sink: MessageSink = nh
    ? { kind: 'next-hop', deliver: async (open, signal) => passThrough(await nh.data(open, signal), queryId) }
    : {
        kind: 'outbox',
        deliver: async (open, signal) => {
          await outbox!.deliver(envelope, open, queryId, signal);
          return catalogueReply('OUTBOX_STORED', queryId);
        },
      };
  // A snapshot: a reload swaps deps.policy for new messages; this one keeps the policy it started under.
  const outcome = await processMessage(
    { ...deps },
    {
      queryId,
      receivedAt,
      clientAddress: s.remoteAddress,
      clientTrusted,
      heloName: s.heloName,
      authUser: s.user,
      envelope,
      spool,
      trace: traceHeader(s, opts.hostname, queryId, receivedAt),
      sink,
    },
  );
  log(outcome, spool.size);
  observer.messageDone?.(outcome, spool.size);
  // The file goes when the last user is done, even if a deadline answered the client earlier.
  void outcome.settled.then(() => spool.remove()).catch((err: unknown) => logger.warn({ err, queryId }, 'spool cleanup failed'));
  return outcome.reply;
}
