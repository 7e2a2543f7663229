// The console's entry point for the composition root: builds the users store and registers the routes when console.enabled is set.
import type { FrozenConfig } from '../config/load.js';
import type { Logger } from '../observability/logger.js';
import type { OperationsContext } from '../quarantine/operations.js';
import type { AdminServer } from '../admin/server.js';
import { registerConsoleRoutes, type ConsoleContext } from './routes.js';
import { FileUserStore } from './users.js';
import { ConfirmLinks, registerConfirmRoutes } from './confirm.js';

/** `links` signs the sender notices' links (the relay shares its instance); a supervisor builds its own from the same key file. */
export function startConsole(admin: AdminServer, c: FrozenConfig, ops: OperationsContext, logger: Logger, links: ConfirmLinks | null = ConfirmLinks.fromConfig(c)): ConsoleContext | null {
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
