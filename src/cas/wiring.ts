// Connects CAS to the relay: builds client, outbox and pusher from config, and the verdict hook that enqueues pushes without touching the SMTP reply.
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { FrozenConfig } from '../config/load.js';
import { CasClient } from './client.js';
import { FsCasOutbox, PgCasOutbox, CasPusher, type CasOutbox } from './outbox.js';
import { extractPushItems } from './extract.js';
import { shouldPush } from './trigger.js';
import type { CasSettings } from '../config/cas-schema.js';
import type { VerdictHook } from '../pipeline/process.js';

export interface CasParts {
  client: CasClient;
  outbox: CasOutbox;
  /** null in a cluster's SMTP workers: the supervisor alone pushes, so the rate limit stays one. */
  pusher: CasPusher | null;
  hook: VerdictHook;
  stop(): Promise<void>;
}

export function casClientFromConfig(c: FrozenConfig, logger: Logger): CasClient {
  const s = c.cas as CasSettings;
  return new CasClient({
    token: c.secrets.casToken ?? '',
    region: s.region,
    url: s.url,
    rate: { ...s.rate },
    retry: { ...s.retry },
    timeouts: { ...s.timeouts },
    logger: logger.child({ component: 'cas' }),
  });
}

export async function casOutboxFromConfig(c: FrozenConfig, logger: Logger, pool?: Pool): Promise<CasOutbox> {
  const s = c.cas as CasSettings;
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

/**
 * Everything CAS needs inside the relay. The hook runs after the verdict: it parses the spooled
 * message (attachments hashed while streaming) and writes to the outbox only; the pusher talks to
 * CAS on its own schedule, so neither a CAS outage nor a slow parse can delay or change a reply.
 */
export async function startCas(c: FrozenConfig, logger: Logger, opts: { pusher?: boolean } = {}): Promise<CasParts> {
  const s = c.cas as CasSettings;
  const client = casClientFromConfig(c, logger);
  const outbox = await casOutboxFromConfig(c, logger);
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
    const { items } = await extractPushItems(v.spool.path, {
      sender: v.sender,
      pushSender: s.push.sender,
      pushAttachmentHashes: s.push.attachmentHashes,
      pushUrls: s.push.urls,
      exemptDomains: [...s.exemptDomains],
      exemptSenders: [...s.exemptSenders],
      maxUrls: s.push.maxUrls,
      reason: `dlp:${v.actionCode} ref ${v.queryId}`,
    });
    if (items.length === 0) return;
    await outbox.enqueue(items);
    pusher?.kick();
    logger.info({ queryId: v.queryId, items: items.length }, 'CAS push queued');
  };
  return {
    client,
    outbox,
    pusher,
    hook,
    async stop() {
      await pusher?.stop();
      await outbox.close();
      await client.close();
    },
  };
}
