// The console's entry point for the composition root: builds the users store and registers the routes when console.enabled is set, and starts the reviewer digest.
import type { FrozenConfig } from '../config/load.js';
import type { Logger } from '../observability/logger.js';
import type { OperationsContext } from '../quarantine/operations.js';
import type { AdminServer } from '../admin/server.js';
import { registerConsoleRoutes, type ConsoleContext } from './routes.js';
import { FileUserStore } from './users.js';
import { ConfirmLinks, registerConfirmRoutes } from './confirm.js';
import { ReviewerDigest } from './reviewer-digest.js';
import type { DeliverFn } from '../quarantine/operations.js';
import type { QuarantineStore } from '../quarantine/types.js';

/** `links` signs the sender notices' links (the relay shares its instance); a supervisor builds its own from the same key file. */
export function startConsole(
  admin: AdminServer,
  c: FrozenConfig,
  ops: OperationsContext,
  logger: Logger,
  links: ConfirmLinks | null = ConfirmLinks.fromConfig(c),
): ConsoleContext | null {
  const k = c.console;
  if (!k.enabled) return null;
  logger.info({ basePath: k.basePath, usersFile: k.usersFile, host: c.admin.host }, 'quarantine console enabled');
  const ctx = registerConsoleRoutes(admin, {
    ops,
    users: new FileUserStore(k.usersFile),
    logger,
    settings: {
      basePath: k.basePath,
      trustProxy: k.trustProxy,
      secureCookie: k.secureCookie,
      sessionIdleMs: k.sessionIdleMs,
      sessionMaxMs: k.sessionMaxMs,
      maxFailures: k.maxFailures,
      lockoutMs: k.lockoutMs,
    },
  });
  if (links) registerConfirmRoutes(admin, ctx, ops, links);
  return ctx;
}

/** Starts the reviewer digest when console.digest is enabled; `adminUrl` is the link origin of last resort. */
export function startReviewerDigest(
  c: FrozenConfig,
  deps: { store: QuarantineStore; deliver: DeliverFn; adminUrl: string | null; logger: Logger; now?: (() => Date) | undefined },
): { digest: ReviewerDigest; stop: () => Promise<void> } | null {
  const d = c.console.digest;
  if (!c.console.enabled || !d.enabled) return null;
  const publicUrl = d.publicUrl ?? c.console.confirm.publicUrl ?? deps.adminUrl;
  if (!publicUrl) return null; // unreachable: config validation requires the admin listener for the console
  const digest = new ReviewerDigest({
    store: deps.store,
    deliver: deps.deliver,
    logger: deps.logger,
    ...(deps.now ? { now: deps.now } : {}),
    settings: {
      interval: d.interval,
      dailyHourUtc: d.dailyHourUtc,
      recipients: d.recipients,
      from: d.from,
      publicUrl,
      basePath: c.console.basePath,
      hostname: c.smtp.hostname,
      maxItems: d.maxItems,
    },
  });
  deps.logger.info({ interval: d.interval, recipients: d.recipients.length, publicUrl }, 'reviewer digest enabled');
  return { digest, stop: digest.start() };
}
