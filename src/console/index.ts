// The console's entry point for the composition root: builds the users store and registers the routes when console.enabled is set.
import type { FrozenConfig } from '../config/load.js';
import type { Logger } from '../observability/logger.js';
import type { OperationsContext } from '../quarantine/operations.js';
import type { AdminServer } from '../admin/server.js';
import { registerConsoleRoutes, type ConsoleContext } from './routes.js';
import { FileUserStore } from './users.js';

export function startConsole(admin: AdminServer, c: FrozenConfig, ops: OperationsContext, logger: Logger): ConsoleContext | null {
  const k = c.console;
  if (!k.enabled) return null;
  logger.info({ basePath: k.basePath, usersFile: k.usersFile, host: c.admin.host }, 'quarantine console enabled');
  return registerConsoleRoutes(admin, {
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
}
