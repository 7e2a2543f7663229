// Periodic purge of quarantined mail past its retention, run by every relay (purging is idempotent, so several instances on one store do no harm).
import type { Logger } from '../observability/logger.js';
import { purgeMessages, type Actor } from './operations.js';
import type { QuarantineStore } from './types.js';

export interface RetentionSettings {
  /** Messages older than this many days are deleted. 0 or less disables retention. */
  days: number;
  /** How often to run (quarantine.retentionIntervalMs; its default lives in the config schema). */
  intervalMs: number;
  /** Run once right away as well (default true), so a relay that restarts often still purges. */
  runAtStart?: boolean;
  now?: () => Date;
}

export const RETENTION_ACTOR: Actor = { name: 'retention' };

/** One purge, audited like an admin purge; failures are logged, never thrown (the next tick tries again). */
export async function runRetentionOnce(store: QuarantineStore, days: number, logger: Logger, now?: () => Date): Promise<number | null> {
  try {
    const { purged, olderThan } = await purgeMessages({ store, logger, ...(now ? { now } : {}) }, RETENTION_ACTOR, { olderThanDays: days });
    if (purged > 0) logger.info({ purged, olderThan }, 'quarantine retention purge');
    return purged;
  } catch (err) {
    logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'quarantine retention purge failed');
    return null;
  }
}

/**
 * Starts the periodic purge; returns stop(), which cancels the timer and resolves once a run in
 * progress has finished. The timer is unref'd: retention never keeps the process alive on its own.
 */
export function startRetention(store: QuarantineStore, settings: RetentionSettings, logger: Logger): () => Promise<void> {
  if (!(settings.days > 0)) {
    logger.info('quarantine retention disabled');
    return async () => {};
  }
  let running: Promise<unknown> | null = null;
  let stopped = false;
  const tick = (): void => {
    // Never overlap runs: a slow purge on a large backlog simply skips the next tick.
    if (stopped || running) return;
    running = runRetentionOnce(store, settings.days, logger, settings.now).finally(() => {
      running = null;
    });
  };
  const timer = setInterval(tick, settings.intervalMs);
  timer.unref();
  if (settings.runAtStart ?? true) tick();
  return async () => {
    stopped = true;
    clearInterval(timer);
    if (running) await running;
  };
}
