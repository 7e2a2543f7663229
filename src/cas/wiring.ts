// Connects CAS to the relay: builds client, outbox and pusher from config, and the verdict hook that enqueues pushes without touching the SMTP reply.
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { FrozenConfig } from '../config/load.js';
import { CasClient } from './client.js';
import { PgCasRateLimiter, casBucketFor, type CasLimiter } from './shared-rate.js';
import { FsCasOutbox, PgCasOutbox, CasPusher, type CasOutbox } from './outbox.js';
import { extractPushItems } from './extract.js';
import { shouldPush } from './trigger.js';
import type { VerdictHook } from '../pipeline/process.js';

/** Bound on one CAS extraction (side work after the reply; it only holds the spool file). */
const EXTRACT_DEADLINE_MS = 60_000;

export interface CasParts {
  client: CasClient;
  /** The budget shared with every relay on the database (pg outbox backend), else null: this relay's own limiter. */
  sharedLimiter: PgCasRateLimiter | null;
  outbox: CasOutbox;
  /** null in a cluster's SMTP workers: the supervisor alone pushes, so the rate limit stays one. */
  pusher: CasPusher | null;
  hook: VerdictHook;
  stop(): Promise<void>;
}

export function casClientFromConfig(c: FrozenConfig, logger: Logger, limiter?: CasLimiter): CasClient {
  const s = c.cas;
  return new CasClient({
    token: c.secrets.casToken ?? '',
    region: s.region,
    url: s.url,
    rate: { ...s.rate },
    ...(limiter ? { limiter } : {}),
    retry: { ...s.retry },
    timeouts: { ...s.timeouts },
    logger: logger.child({ component: 'cas' }),
  });
}

export async function casOutboxFromConfig(c: FrozenConfig, logger: Logger, pool?: Pool): Promise<CasOutbox> {
  const s = c.cas;
  const log = logger.child({ component: 'cas-outbox' });
  let outbox: CasOutbox;
  if (s.outbox.backend === 'pg') {
    if (!pool) {
      const { createQuarantinePool } = await import('../quarantine/pg-store.js');
      pool = createQuarantinePool(c.quarantine.url!);
    }
    outbox = new PgCasOutbox(pool, { logger: log });
  } else {
    outbox = new FsCasOutbox(s.outbox.dir, { logger: log });
  }
  await (outbox as CasOutbox & { init(): Promise<void> }).init();
  return outbox;
}

/** The pool the pg backend's outbox and shared budget use; the caller ends it. */
export async function casPoolFromConfig(c: FrozenConfig, logger: Logger): Promise<Pool> {
  const { createQuarantinePool } = await import('../quarantine/pg-store.js');
  const pool = createQuarantinePool(c.quarantine.url!, { max: 4, application_name: 'dlp-relay-cas' });
  // An idle client losing its connection emits 'error' on the pool; unheard it would end the process.
  pool.on('error', (err) => logger.warn({ err: err.message }, 'CAS database connection lost'));
  return pool;
}

/**
 * With the pg backend every relay on the database draws from one budget per token (the vendor's 20 a
 * minute is per token, not per relay); the lease outlasts one HTTP attempt so a crashed relay's slot
 * cannot overlap the next request's window.
 */
export async function casSharedLimiterFromConfig(c: FrozenConfig, pool: Pool, logger: Logger): Promise<PgCasRateLimiter> {
  const s = c.cas;
  const limiter = new PgCasRateLimiter(pool, {
    bucket: casBucketFor(c.secrets.casToken ?? ''),
    rate: { ...s.rate },
    leaseMs: s.timeouts.requestMs + 5_000,
    logger: logger.child({ component: 'cas-rate' }),
  });
  await limiter.init();
  return limiter;
}

/**
 * Everything CAS needs inside the relay. The hook runs after the verdict: it parses the spooled
 * message (attachments hashed while streaming) and writes to the outbox only; the pusher talks to
 * CAS on its own schedule, so neither a CAS outage nor a slow parse can delay or change a reply.
 */
export async function startCas(c: FrozenConfig, logger: Logger, opts: { pusher?: boolean } = {}): Promise<CasParts> {
  const s = c.cas;
  const pool = s.outbox.backend === 'pg' ? await casPoolFromConfig(c, logger) : null;
  let sharedLimiter: PgCasRateLimiter | null = null;
  let outbox: CasOutbox;
  try {
    outbox = await casOutboxFromConfig(c, logger, pool ?? undefined);
    // Only a process that pushes spends budget; a cluster's SMTP workers only enqueue.
    if (pool && opts.pusher !== false) sharedLimiter = await casSharedLimiterFromConfig(c, pool, logger);
  } catch (err) {
    await pool?.end().catch(() => {});
    throw err;
  }
  const client = casClientFromConfig(c, logger, sharedLimiter ?? undefined);
  const pusher =
    opts.pusher === false
      ? null
      : new CasPusher({
          outbox,
          client,
          schedule: { maxAttempts: s.outbox.maxAttempts, baseMs: s.outbox.baseMs, maxMs: s.outbox.maxMs },
          intervalMs: s.outbox.intervalMs,
          ttlDays: s.ttlDays,
          maxListItems: s.maxListItems,
          logger: logger.child({ component: 'cas-pusher' }),
        });
  pusher?.start();
  const hook: VerdictHook = async (v) => {
    if (!shouldPush(v.actionCode, s.triggers)) return;
    const { items } = await extractPushItems(() => v.spool.open(), {
      sender: v.sender,
      pushSender: s.push.sender,
      pushAttachmentHashes: s.push.attachmentHashes,
      pushUrls: s.push.urls,
      exemptDomains: [...s.exemptDomains],
      exemptSenders: [...s.exemptSenders],
      maxUrls: s.push.maxUrls,
      reason: `dlp:${v.actionCode} ref ${v.queryId}`,
      // The spool file stays until this settles: a message that makes the walk crawl must not pin it forever.
      deadlineMs: EXTRACT_DEADLINE_MS,
    });
    if (items.length === 0) return;
    await outbox.enqueue(items);
    pusher?.kick();
    logger.info({ queryId: v.queryId, items: items.length }, 'CAS push queued');
  };
  return {
    client,
    sharedLimiter,
    outbox,
    pusher,
    hook,
    async stop() {
      await pusher?.stop();
      await outbox.close();
      await client.close();
      await sharedLimiter?.settle();
      await pool?.end().catch(() => {});
    },
  };
}
