// Composition root: builds every part from the frozen config, starts them in order, and stops them in reverse.
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { FrozenConfig } from './config/load.js';
import { UcwiClient } from './dlp/client.js';
import { Ingress } from './ingress/server.js';
import { UserDb } from './ingress/auth.js';
import { recoverStores } from './recovery/startup.js';
import { ensurePortsFree, listenNamed } from './util/listeners.js';
import { createNotifier, type QuarantineStore, type Notifier } from './quarantine/index.js';
import { loopGuardFromConfig } from './policy/loop-token.js';
import { nextHopFor } from './policy/rules.js';
import type { PipelineDeps, VerdictHook } from './pipeline/process.js';
import { ClusterMetrics, Metrics } from './observability/metrics.js';
import { type ReadyReport } from './observability/health.js';
import { startCas, type CasParts } from './cas/wiring.js';
import { type DaemonRouteDeps, type StatusReport } from './admin/daemon-routes.js';
import { startReviewerDigest } from './console/index.js';
import type { ReviewerDigest } from './console/reviewer-digest.js';
import { ConfirmLinks } from './console/confirm.js';
import { setLogLevel } from './observability/logger.js';
import { Reloader, type ReloadReport, cannotReload } from './reload.js';
import { openStores, openClients, retentionFor, startAdmin, plannedListeners, statusOf, runStops } from './app-parts.js';
import { policySettings, startGateways, type AppDeliverer } from './clients.js';
// Part of this module's API before the outward-facing parts moved to clients.ts.
export {
  nextHopEndpoints,
  ucwiEndpoints,
  nextHopOptions,
  gatewayOptions,
  policySettings,
  createDeliverer,
  createUcwiClient,
  quarantineOps,
  type AppDeliverer,
} from './clients.js';

export interface RunningRelay {
  smtp: { host: string; port: number };
  admin: { url: string; port: number; apiEnabled: boolean } | null;
  ucwiUrl: string;
  embeddedDlp: boolean;
  delivery: string;
  quarantine: QuarantineStore;
  ingress: Ingress;
  ucwi: UcwiClient;
  deliverer: AppDeliverer;
  metrics: Metrics;
  cas: CasParts | null;
  /** The reviewer digest scheduler (console.digest), null when off or in a cluster worker. */
  digest: ReviewerDigest | null;
  /** Re-reads the configuration (StartOptions.reloadConfig) and applies it; see reload.ts. */
  reload(trigger: string): Promise<ReloadReport>;
  status(): Promise<StatusReport>;
  stop(graceMs?: number): Promise<void>;
}

export interface StartOptions {
  /** Reads the configuration again for a reload (SIGHUP, POST /api/v1/reload); without it reload answers "cannot reload". */
  reloadConfig?: () => FrozenConfig;
  /** Shown by `status`: the file the configuration came from. */
  configFile?: string | undefined;
  onVerdict?: VerdictHook;
  /** Replace the quarantine store (tests inject failing stores this way). */
  quarantine?: QuarantineStore;
  /**
   * Run as SMTP worker `index` of a cluster (cluster.ts): no admin listener, retention or CAS pusher
   * (the supervisor runs those), metrics answered to the supervisor, spool in `<spool.dir>/w<index>`.
   */
  worker?: { index: number };
  /** Clock of the reviewer digest's schedule; tests pass a fake one instead of waiting hours. */
  clock?: () => Date;
}

export async function startRelay(c: FrozenConfig, logger: Logger, opts: StartOptions = {}): Promise<RunningRelay> {
  const worker = opts.worker;
  // Each cluster worker sweeps and uses its own subdirectory, so a restarting worker never removes
  // the spool files of a sibling's messages in flight.
  const spoolDir = worker ? join(c.spool.dir, `w${worker.index}`) : c.spool.dir;
  // A cluster's supervisor checked before forking (and workers share the SMTP port through it).
  if (!worker) await ensurePortsFree(plannedListeners(c));
  await recoverStores(c, logger, { spoolDir, worker: worker !== undefined });
  const stops: Array<() => Promise<unknown>> = [];
  try {
    const startedAt = new Date();
    const { quarantine, cas, casRef, sources } = await openStores(c, logger, stops, { quarantine: opts.quarantine, casPusher: !worker });
    const metrics = new Metrics(sources, { storeGauges: !worker });
    if (worker) metrics.shareWithSupervisor();

    const { ucwi, sim, baseUrl, deliverer, ops } = await openClients(c, logger, stops, quarantine, metrics.ucwiObserver());
    metrics.watchUpstreams(() => [...(deliverer.pool?.statuses() ?? []), ...ucwi.statuses()]);
    const makeNotifier = (n: FrozenConfig): Promise<Notifier> =>
      createNotifier(
        {
          enabled: n.quarantine.notifications.enabled,
          onQuarantine: n.quarantine.notifications.onQuarantine,
          onReject: n.quarantine.notifications.onReject,
          from: n.quarantine.notifications.from,
          helpContact: n.quarantine.notifications.helpContact,
          hostname: n.smtp.hostname,
          templateDir: n.quarantine.notifications.templateDir,
        },
        ops.deliver!,
        logger.child({ component: 'notify' }),
      );
    // Replaced by a reload (new templates or settings); a message in flight keeps the one it started with.
    let notifier: Notifier = await makeNotifier(c);
    let live = c;
    // Sender self-service links (console.confirm); the key is a file, so every process of this state dir agrees.
    const confirm = ConfirmLinks.fromConfig(c);

    // In a cluster the supervisor purges; one purger per store is enough.
    if (!worker) stops.push(retentionFor(c, quarantine, logger));

    // Through casRef: a reload may replace the CAS parts. Without CAS at start no hook is installed (switching it on needs a restart).
    const hooks: VerdictHook[] = [cas ? (v: Parameters<VerdictHook>[0]) => casRef.current?.hook(v) ?? Promise.resolve() : undefined, opts.onVerdict].filter(
      (h): h is VerdictHook => h !== undefined,
    );
    const gatewayPools = startGateways(c, logger, stops);
    const deps: PipelineDeps = {
      logger,
      hostname: c.smtp.hostname,
      instance: `${hostname()}:${process.pid}`,
      dataDeadlineMs: c.limits.dataDeadlineMs,
      policy: policySettings(c),
      loopGuard: loopGuardFromConfig({ ...c.policy.loop, key: c.secrets.loopKey, previousKey: c.secrets.loopPreviousKey }, logger),
      dlp: ucwi,
      quarantine,
      gateways: gatewayPools,
      onVerdict: hooks.length
        ? async (v) => {
            await Promise.all(hooks.map((h) => h(v)));
          }
        : undefined,
      onOutcome: (o, msg) => {
        if (!live.quarantine.notifications.enabled) return;
        const kind = o.reply.code < 300 && o.action.startsWith('quarantine') ? 'quarantine' : o.reply.code >= 500 && o.action === 'reject' ? 'reject' : null;
        if (!kind) return;
        const h = (n: string) => msg.spool.headers.find((x) => x.name === n)?.value ?? null;
        void notifier.notify({
          kind,
          queryId: msg.queryId,
          sender: msg.envelope.from,
          recipients: msg.envelope.to.map((t) => t.address),
          subject: h('subject'),
          reason: kind === 'quarantine' ? 'it is held for review under the data-loss-prevention policy' : 'it was blocked by the data-loss-prevention policy',
          autoSubmitted: h('auto-submitted'),
          precedence: h('precedence'),
          listId: h('list-id'),
          confirm: kind === 'quarantine' ? (confirm?.linkFor(o.actionCode, msg.queryId) ?? null) : null,
        });
      },
    };
    const ingress = new Ingress(
      {
        host: c.listen.host,
        port: c.listen.port,
        hostname: c.smtp.hostname,
        maxMessageBytes: c.smtp.maxMessageBytes,
        maxClients: c.smtp.maxClients,
        maxRecipients: c.smtp.maxRecipients,
        idleTimeoutMs: c.smtp.idleTimeoutMs,
        sessionTimeoutMs: c.smtp.sessionTimeoutMs,
        minBytesPerSecond: c.smtp.minBytesPerSecond,
        greetingDelayMs: c.smtp.greetingDelayMs,
        bareLineEndings: c.smtp.bareLineEndings,
        allowedClients: c.smtp.allowedClients,
        trustedNetworks: c.policy.loop.trustedNetworks,
        proxyProtocolFrom: c.smtp.proxyProtocolFrom,
        tls: { ...c.smtp.tls },
        dsn: c.smtp.dsn,
        spoolDir,
        saturated: () => ucwi.saturated,
        auth: c.smtp.auth.enabled
          ? { users: UserDb.fromFile(c.smtp.auth.usersFile!), required: c.smtp.auth.required, maxFailures: c.smtp.auth.maxFailures }
          : undefined,
        delivery: deliverer.pool ? { pool: deliverer.pool } : { outbox: deliverer.outbox! },
        // policy.rules[].nextHop: read through deps.policy, so a reload's new rules route the next transaction.
        routeFor: (ctx) => {
          const name = nextHopFor(deps.policy.rules ?? [], ctx);
          return name ? (gatewayPools.get(name) ?? null) : null;
        },
      },
      deps,
      logger.child({ component: 'smtp' }),
      metrics.ingressObserver(),
    );

    const reloader = opts.reloadConfig
      ? new Reloader(
          c,
          opts.reloadConfig,
          {
            async apply(next, _prev, changed) {
              // Everything that can fail first (templates, certificates, CAS), then the swaps.
              const newNotifier = changed.some((p) => p.startsWith('quarantine.notifications.')) ? await makeNotifier(next) : notifier;
              const restart = ingress.reconfigure({
                allowedClients: next.smtp.allowedClients,
                trustedNetworks: next.policy.loop.trustedNetworks,
                tls: { ...next.smtp.tls },
              });
              if (changed.some((p) => p.startsWith('cas.'))) {
                if (!cas || !next.cas.enabled) restart.push('cas.enabled (CAS switched on or off)');
                else {
                  await casRef.current?.stop();
                  casRef.current = await startCas(next, logger, { pusher: !worker });
                }
              }
              // Each message takes a snapshot of deps when its DATA ends (ingress/message.ts): new messages see the new table.
              deps.policy = policySettings(next);
              notifier = newNotifier;
              setLogLevel(logger, next.log.level);
              live = next;
              return restart;
            },
          },
          logger,
        )
      : null;
    const reload = (trigger: string): Promise<ReloadReport> => (reloader ? reloader.reload(trigger) : cannotReload(trigger));
    let readinessRef: (() => Promise<ReadyReport>) | null = null;
    const status = (): Promise<StatusReport> =>
      statusOf(startedAt, {
        configFile: opts.configFile,
        draining: ingress.draining,
        sessions: ingress.activeSessions,
        ucwi,
        ucwiUrl: baseUrl,
        readiness: readinessRef ?? (async () => ({ ready: !ingress.draining, checks: {} })),
        sources,
        lastReload: reloader?.lastReport ?? null,
      });
    const daemon = (readiness: () => Promise<ReadyReport>): DaemonRouteDeps => {
      readinessRef = readiness;
      return { status, reload: reloader ? reload : null, casOutbox: () => casRef.current?.outbox ?? null };
    };

    // Workers have no admin listener: the supervisor serves it for the whole cluster.
    // Set by stop() before the drain: /readyz fails while sessions are still served (limits.drainDelayMs).
    let unready = false;
    const admin = worker
      ? null
      : await startAdmin(c, logger, stops, {
          metrics,
          ucwi,
          deliverer,
          quarantine,
          ops,
          draining: () => unready || ingress.draining,
          spoolDir,
          daemon,
          confirm,
        });
    // One sender per store, like retention: a cluster's supervisor sends, its workers never do.
    const digest = worker
      ? null
      : startReviewerDigest(c, {
          store: quarantine,
          deliver: ops.deliver!,
          adminUrl: admin?.url ?? null,
          logger: logger.child({ component: 'digest' }),
          now: opts.clock,
        });
    if (digest) stops.push(digest.stop);

    const smtp = await listenNamed('SMTP', c.listen.host, c.listen.port, () => ingress.listen());
    return {
      smtp,
      admin,
      ucwiUrl: baseUrl,
      embeddedDlp: sim !== null,
      delivery: deliverer.describe,
      quarantine,
      ingress,
      ucwi,
      deliverer,
      metrics,
      cas,
      digest: digest?.digest ?? null,
      reload,
      status,
      async stop(graceMs = c.limits.shutdownGraceMs) {
        // Readiness first: a balancer stops sending new sessions while we still serve them, so none is
        // refused with 421 during a rolling restart. A cluster's supervisor waits for its workers instead.
        unready = true;
        if (!worker && c.limits.drainDelayMs > 0) {
          logger.info(
            { event: 'unready', drainDelayMs: c.limits.drainDelayMs },
            `readiness off, still serving for ${c.limits.drainDelayMs} ms before the drain`,
          );
          await new Promise((r) => setTimeout(r, c.limits.drainDelayMs));
        }
        // Ingress first (finish messages in flight), then everything it used, in reverse order of start.
        await ingress.close(graceMs);
        await runStops(stops, logger);
      },
    };
  } catch (err) {
    await runStops(stops, null);
    throw err;
  }
}

export interface RunningSupervisor {
  admin: RunningRelay['admin'];
  ucwiUrl: string;
  embeddedDlp: boolean;
  delivery: string;
  quarantine: QuarantineStore;
  cas: CasParts | null;
  /** From now on /readyz answers 503 (draining). */
  drain(): void;
  stop(): Promise<void>;
}

/**
 * The cluster supervisor's own parts (see cluster.ts): no SMTP listener; the admin listener with the
 * workers' metrics summed, quarantine retention, the reviewer digest, the CAS pusher, and the stores and clients that the
 * admin API's release and re-scan need.
 */
/** What the cluster (cluster.ts) lends its supervisor's admin API: reloading the workers and the last report. */
export interface SupervisorReload {
  reload(trigger: string): Promise<ReloadReport>;
  lastReport(): ReloadReport | null;
  configFile: string | undefined;
}

export async function startSupervisor(c: FrozenConfig, logger: Logger, cluster: SupervisorReload | null = null): Promise<RunningSupervisor> {
  // Before any store is touched: a second cluster on a live relay's configuration stops here (see ensurePortsFree).
  await ensurePortsFree(plannedListeners(c));
  // Files left by an earlier single-process run; the workers sweep their own subdirectories.
  await recoverStores(c, logger, { spoolDir: c.spool.dir, worker: false });
  const stops: Array<() => Promise<unknown>> = [];
  try {
    const startedAt = new Date();
    const { quarantine, cas, casRef, sources } = await openStores(c, logger, stops, { casPusher: true });
    const { ucwi, sim, baseUrl, deliverer, ops } = await openClients(c, logger, stops, quarantine);
    stops.push(retentionFor(c, quarantine, logger));
    let draining = false;
    const metrics = new ClusterMetrics(sources);
    // The workers hold the sessions (counted through the summed metrics) and reload on SIGHUP, which the
    // cluster sends them once the supervisor has validated the file (cluster.ts); the supervisor reports.
    const daemon = (readiness: () => Promise<ReadyReport>): DaemonRouteDeps => ({
      status: async () =>
        statusOf(startedAt, {
          configFile: cluster?.configFile,
          draining,
          sessions: await metrics.sessions(),
          ucwi,
          ucwiUrl: baseUrl,
          readiness,
          sources,
          lastReload: cluster?.lastReport() ?? null,
        }),
      reload: cluster ? (trigger) => cluster.reload(trigger) : null,
      casOutbox: () => casRef.current?.outbox ?? null,
    });
    const admin = await startAdmin(c, logger, stops, { metrics, ucwi, deliverer, quarantine, ops, draining: () => draining, spoolDir: c.spool.dir, daemon });
    const digest = startReviewerDigest(c, {
      store: quarantine,
      deliver: ops.deliver!,
      adminUrl: admin?.url ?? null,
      logger: logger.child({ component: 'digest' }),
    });
    if (digest) stops.push(digest.stop);
    return {
      admin,
      ucwiUrl: baseUrl,
      embeddedDlp: sim !== null,
      delivery: deliverer.describe,
      quarantine,
      cas,
      drain() {
        draining = true;
      },
      stop: () => runStops(stops, logger),
    };
  } catch (err) {
    await runStops(stops, null);
    throw err;
  }
}
