// What startRelay and startSupervisor share: the stores, the outward clients, the admin listener and its status report, and undoing a partial start.
import { randomBytes } from 'node:crypto';
import { access, constants } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { FrozenConfig } from './config/load.js';
import { UcwiClient, type UcwiObserver } from './dlp/client.js';
import { listenNamed, type PlannedListener } from './util/listeners.js';
import { createQuarantineStore, startRetention, type QuarantineStore, type OperationsContext } from './quarantine/index.js';
import { type UcwiSim } from './engine/server.js';
import { type GaugeSources, type MetricsRenderer } from './observability/metrics.js';
import { createReadiness, type ReadyReport } from './observability/health.js';
import { createAdminServer } from './admin/server.js';
import { registerOpsRoutes } from './admin/ops-routes.js';
import { registerQuarantineRoutes } from './admin/quarantine-routes.js';
import { startCas, type CasParts } from './cas/wiring.js';
import { registerDaemonRoutes, type DaemonRouteDeps, type StatusReport } from './admin/daemon-routes.js';
import { startConsole } from './console/index.js';
import { ConfirmLinks } from './console/confirm.js';
import { type ReloadReport } from './reload.js';
import { VERSION } from './version.js';
import { createDeliverer, createUcwiClient, quarantineOps, type AppDeliverer } from './clients.js';
import type { RunningRelay } from './app.js';

/** Quarantine store and CAS parts (with their metric sources), shared by a relay and a cluster supervisor. */
export async function openStores(
  c: FrozenConfig,
  logger: Logger,
  stops: Array<() => Promise<unknown>>,
  opts: { quarantine?: QuarantineStore | undefined; casPusher: boolean },
): Promise<{ quarantine: QuarantineStore; cas: CasParts | null; casRef: { current: CasParts | null }; sources: GaugeSources }> {
  const quarantine = opts.quarantine ?? createQuarantineStore({ dir: c.quarantine.dir, url: c.quarantine.url }, logger.child({ component: 'quarantine' }));
  await quarantine.init();
  stops.push(() => quarantine.close());
  const cas = c.cas.enabled ? await startCas(c, logger, { pusher: opts.casPusher }) : null;
  // A reload may replace the CAS parts; readers go through the reference.
  const casRef = { current: cas };
  stops.push(async () => casRef.current?.stop());
  // The quarantine gauge reads the store at scrape time; cache it so scrapes stay cheap.
  let heldCache: { at: number; n: number } | null = null;
  const sources: GaugeSources = {
    quarantineSize: async () => {
      if (heldCache && Date.now() - heldCache.at < 30_000) return heldCache.n;
      let n = 0;
      let cursor: string | null = null;
      // Bounded walk: the gauge is an operator's overview, not an audit; 20 pages of 500 at most.
      for (let i = 0; i < 20; i++) {
        const page = await quarantine.list({ status: 'held', limit: 500, ...(cursor ? { cursor } : {}) });
        n += page.items.length;
        cursor = page.nextCursor;
        if (!cursor) break;
      }
      heldCache = { at: Date.now(), n };
      return n;
    },
    ...(cas ? { casOutbox: () => casRef.current!.outbox.stats() } : {}),
  };
  return { quarantine, cas, casRef, sources };
}

/** UCWI client (and the embedded engine when no URL is set), the deliverer, and the quarantine operations built on them. */
export async function openClients(
  c: FrozenConfig,
  logger: Logger,
  stops: Array<() => Promise<unknown>>,
  quarantine: QuarantineStore,
  observer?: UcwiObserver,
): Promise<{ ucwi: UcwiClient; sim: UcwiSim | null; baseUrl: string; deliverer: AppDeliverer; ops: OperationsContext }> {
  const { client: ucwi, sim, baseUrl } = await createUcwiClient(c, logger, observer);
  stops.push(() => ucwi.close());
  if (sim) stops.push(() => sim.close());
  const deliverer = createDeliverer(c, logger);
  stops.push(() => deliverer.close());
  // One operations context (delivery + re-scan) for sender notices and the admin API.
  const ops = quarantineOps(c, quarantine, deliverer, ucwi, logger);
  return { ucwi, sim, baseUrl, deliverer, ops };
}

export function retentionFor(c: FrozenConfig, quarantine: QuarantineStore, logger: Logger): () => Promise<void> {
  return startRetention(
    quarantine,
    { days: c.quarantine.retentionDays, intervalMs: c.quarantine.retentionIntervalMs },
    logger.child({ component: 'retention' }),
  );
}

/** The admin listener: health, readiness, metrics and the quarantine API. */
export async function startAdmin(
  c: FrozenConfig,
  logger: Logger,
  stops: Array<() => Promise<unknown>>,
  parts: {
    metrics: MetricsRenderer;
    ucwi: UcwiClient;
    deliverer: AppDeliverer;
    quarantine: QuarantineStore;
    ops: OperationsContext;
    draining: () => boolean;
    spoolDir: string;
    daemon: (readiness: () => Promise<ReadyReport>) => DaemonRouteDeps;
    confirm?: ConfirmLinks | null;
  },
): Promise<RunningRelay['admin']> {
  if (!c.admin.enabled) return null;
  const token = c.secrets.adminToken;
  // Without a configured token the API answers 401 to everyone (nobody knows this random one); health still works.
  const admin = createAdminServer({
    host: c.admin.host,
    port: c.admin.port,
    token: token ?? randomBytes(32).toString('hex'),
    logger: logger.child({ component: 'admin' }),
  });
  const { ucwi, deliverer, quarantine } = parts;
  const readiness = createReadiness({
    ucwi: (signal) => ucwi.probe(signal),
    [deliverer.kind === 'next-hop' ? 'nextHop' : 'outbox']: (signal) => deliverer.verify(signal),
    quarantine: () => quarantine.checkWritable(),
    spool: async () => {
      await access(parts.spoolDir, constants.W_OK);
    },
  });
  registerOpsRoutes(admin, { metrics: parts.metrics, readiness, draining: parts.draining });
  registerQuarantineRoutes(admin, parts.ops);
  registerDaemonRoutes(admin, parts.daemon(readiness));
  startConsole(admin, c, parts.ops, logger.child({ component: 'console' }), parts.confirm);
  const a = await listenNamed('admin', c.admin.host, c.admin.port, () => admin.listen());
  parts.confirm?.useOrigin(a.url);
  stops.push(() => admin.close());
  return { ...a, apiEnabled: token !== null };
}

/** The fixed ports this process will bind, named as in the bind errors. */
export function plannedListeners(c: FrozenConfig): PlannedListener[] {
  return [{ name: 'SMTP', host: c.listen.host, port: c.listen.port }, ...(c.admin.enabled ? [{ name: 'admin', host: c.admin.host, port: c.admin.port }] : [])];
}

/** The status report's parts common to a relay and a cluster supervisor. */
export async function statusOf(
  startedAt: Date,
  parts: {
    configFile: string | undefined;
    draining: boolean;
    sessions: number | null;
    ucwi: UcwiClient;
    ucwiUrl: string;
    readiness: () => Promise<ReadyReport>;
    sources: GaugeSources;
    lastReload: ReloadReport | null;
  },
): Promise<StatusReport> {
  const { quarantineSize, casOutbox: casStats } = parts.sources;
  const [readiness, held, casOutbox] = await Promise.all([
    parts.readiness(),
    quarantineSize ? Promise.resolve(quarantineSize()).catch(() => null) : null,
    casStats
      ? Promise.resolve(casStats())
          .then((s) => ({ done: 0, ...s }))
          .catch(() => null)
      : null,
  ]);
  return {
    version: VERSION,
    pid: process.pid,
    startedAt: startedAt.toISOString(),
    uptimeS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    configFile: parts.configFile ?? null,
    draining: parts.draining,
    sessions: parts.sessions,
    ucwi: { url: parts.ucwiUrl, inFlight: parts.ucwi.inFlight, waiting: parts.ucwi.waiting, outage: parts.ucwi.outageState },
    readiness,
    held,
    casOutbox,
    lastReload: parts.lastReload,
  };
}

/** Undoes what was started, newest first, logging (not throwing) what fails. */
export async function runStops(stops: Array<() => Promise<unknown>>, logger: Logger | null): Promise<void> {
  for (const stop of stops.reverse()) await stop().catch((err: unknown) => logger?.warn({ err }, 'error while stopping'));
}
