// Entry point of the quarantine module: picks the backend from configuration (postgres when a URL is set, else the filesystem) and re-exports the API.
import type { Logger } from '../observability/logger.js';
import { FsQuarantineStore } from './fs-store.js';
import { PgQuarantineStore, type PgStoreOptions } from './pg-store.js';
import type { QuarantineStore } from './types.js';

export interface QuarantineStoreSettings {
  dir: string;
  url: string | null | undefined;
  /** Claims older than this count as left by a crash (default 15 minutes). */
  claimTtlMs?: number;
  /** Extra pool settings for the postgres store (timeouts, pool size). */
  pool?: PgStoreOptions['pool'];
}

/** The store is returned un-initialised; the relay calls init() at start (which runs migrations for postgres). */
export function createQuarantineStore(settings: QuarantineStoreSettings, logger: Logger): QuarantineStore {
  const claim = settings.claimTtlMs !== undefined ? { claimTtlMs: settings.claimTtlMs } : {};
  if (settings.url) {
    logger.info({ backend: 'postgres' }, 'quarantine store');
    return new PgQuarantineStore(settings.url, { logger, ...claim, ...(settings.pool ? { pool: settings.pool } : {}) });
  }
  logger.info({ backend: 'fs', dir: settings.dir }, 'quarantine store');
  return new FsQuarantineStore(settings.dir, claim);
}

export * from './types.js';
export { SAFE_ID, isSafeId, QuarantineInputError, DEFAULT_CLAIM_TTL_MS } from './common.js';
export { QuarantineNotFoundError, QuarantineUnavailableError, isNotFound, isUnavailable } from './errors.js';
export { FsQuarantineStore } from './fs-store.js';
export { PgQuarantineStore, createQuarantinePool, QUARANTINE_MIGRATIONS, CHUNK_BYTES } from './pg-store.js';
export * from './operations.js';
export { buildNotice, sendNotice, createNotifier, loadNoticeTemplates, noticeSuppressedBecause, parseTemplate } from './notify.js';
export type { Notice, NoticeInput, NoticeKind, NoticeOptions, NotifySettings, Notifier, NoticeTemplates } from './notify.js';
export { startRetention, runRetentionOnce } from './retention.js';
export type { RetentionSettings } from './retention.js';
