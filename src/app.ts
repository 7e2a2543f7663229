// Composition root: builds every part from the frozen config, starts them in order, and stops them in reverse.
import { CATALOGUE } from './errors.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { access, constants, mkdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { FrozenConfig } from './config/load.js';
import { UcwiClient, type UcwiObserver } from './dlp/client.js';
import { Ingress } from './ingress/server.js';
import { UserDb } from './ingress/auth.js';
import { recoverStores } from './recovery/startup.js';
import { ensurePortsFree, listenNamed, type PlannedListener } from './util/listeners.js';
import { NextHopPool, type DeliveryReport, type NextHopOptions } from './egress/pool.js';
import { NextHopGroup, type NextHopEndpoint } from './egress/next-hops.js';
import type { UcwiEndpoint } from './dlp/client.js';
import type { Envelope } from './smtp/envelope.js';
import { LocalOutbox } from './egress/outbox.js';
import {
  createQuarantineStore,
  startRetention,
  createNotifier,
  type QuarantineStore,
  type OperationsContext,
  type DeliverFn,
  type RescanFn,
  type Notifier,
} from './quarantine/index.js';
import { decide, type PolicySettings } from './policy/policy.js';
import { loopGuardFromConfig } from './policy/loop-token.js';
import { nextHopFor } from './policy/rules.js';
import type { PipelineDeps, VerdictHook } from './pipeline/process.js';
import { startUcwiSim, type UcwiSim } from './engine/server.js';
import { ClusterMetrics, Metrics, type GaugeSources, type MetricsRenderer } from './observability/metrics.js';
import { createReadiness, type ReadyReport } from './observability/health.js';
import { createAdminServer } from './admin/server.js';
import { registerOpsRoutes } from './admin/ops-routes.js';
import { registerQuarantineRoutes } from './admin/quarantine-routes.js';
import { startCas, type CasParts } from './cas/wiring.js';
import { registerDaemonRoutes, type DaemonRouteDeps, type StatusReport } from './admin/daemon-routes.js';
import { startConsole, startReviewerDigest } from './console/index.js';
import type { ReviewerDigest } from './console/reviewer-digest.js';
import { ConfirmLinks } from './console/confirm.js';
import { setLogLevel } from './observability/logger.js';
import { Reloader, type ReloadReport, cannotReload } from './reload.js';
import { VERSION } from './version.js';

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

/** The next hops: nextHop.endpoints, or the single host/port (priority 10); empty when mail goes to the outbox. */
export function nextHopEndpoints(c: FrozenConfig): NextHopEndpoint[] {
  const n = c.nextHop;
  if (n.endpoints.length) return n.endpoints.map((e) => ({ host: e.host, port: e.port ?? n.port, priority: e.priority }));
  return n.host ? [{ host: n.host, port: n.port, priority: 10 }] : [];
}

/** ucwi.url as a list of servers (priority 10 where none is given), or null for the embedded engine. */
export function ucwiEndpoints(c: FrozenConfig): UcwiEndpoint[] | null {
  const u = c.ucwi.url;
  if (u === null) return null;
  return (typeof u === 'string' ? [u] : u).map((e) => (typeof e === 'string' ? { url: e, priority: 10 } : { url: e.url, priority: e.priority }));
}

export function nextHopOptions(c: FrozenConfig): Omit<NextHopOptions, 'host' | 'port'> {
  const n = c.nextHop;
  return {
    secure: n.secure,
    starttls: n.starttls,
    tls: {
      rejectUnauthorized: n.tls.rejectUnauthorized,
      ...(n.tls.caFile ? { ca: readFileSync(n.tls.caFile) } : {}),
      ...(n.tls.servername ? { servername: n.tls.servername } : {}),
    },
    ...(n.authUser && c.secrets.nextHopPass ? { auth: { user: n.authUser, pass: c.secrets.nextHopPass } } : {}),
    heloName: c.smtp.hostname,
    pool: { ...n.pool },
    // The final reply is bounded by the message's own deadline (limits.dataDeadlineMs).
    timeouts: { ...n.timeouts, dataDoneMs: c.limits.dataDeadlineMs },
  };
}

/** One NextHopPool per encryption gateway: TLS always required and verified (never a relay in clear). */
export function gatewayOptions(c: FrozenConfig, name: string): NextHopOptions {
  const g = c.gateways[name];
  if (!g) throw new Error(`no gateway "${name}"`);
  return {
    host: g.host,
    port: g.port,
    secure: g.secure,
    starttls: g.secure ? 'off' : 'required',
    tls: {
      rejectUnauthorized: true,
      ...(g.tls.caFile ? { ca: readFileSync(g.tls.caFile) } : {}),
      ...(g.tls.servername ? { servername: g.tls.servername } : {}),
    },
    ...(g.authUser && g.passFile ? { auth: { user: g.authUser, pass: readFileSync(g.passFile, 'utf8').trim() } } : {}),
    heloName: c.smtp.hostname,
    pool: { ...g.pool },
    timeouts: { ...g.timeouts, dataDoneMs: c.limits.dataDeadlineMs },
  };
}

function startGateways(c: FrozenConfig, logger: Logger, stops: Array<() => Promise<unknown>>): Map<string, NextHopPool> {
  const pools = new Map<string, NextHopPool>();
  for (const name of Object.keys(c.gateways)) {
    const pool = new NextHopPool(gatewayOptions(c, name), logger.child({ component: 'gateway', gateway: name }));
    pools.set(name, pool);
    stops.push(() => pool.close());
  }
  return pools;
}

export function policySettings(c: FrozenConfig): PolicySettings {
  return c.policy;
}

/**
 * Delivery outside a client session (quarantine releases, notices) and readiness, plus the parts
 * ingress uses for live transactions: the next-hop pool, or the local outbox when none is configured.
 */
export interface AppDeliverer {
  kind: 'next-hop' | 'outbox';
  describe: string;
  deliver(env: Envelope, open: () => Readable, signal: AbortSignal): Promise<DeliveryReport>;
  verify(signal: AbortSignal): Promise<void | string>;
  close(): Promise<void>;
  pool: NextHopGroup | null;
  outbox: LocalOutbox | null;
}

/** The deliverer for accepted mail: the next hop when configured, else the local outbox directory. */
export function createDeliverer(c: FrozenConfig, logger: Logger): AppDeliverer {
  const hops = nextHopEndpoints(c);
  if (hops.length) {
    const pool = new NextHopGroup(hops, nextHopOptions(c), logger.child({ component: 'egress' }), { ...c.nextHop.backoff });
    return {
      kind: 'next-hop',
      describe: pool.describe,
      deliver: (env, open, signal) => pool.deliver(env, open, signal),
      verify: (signal) => pool.verify(signal),
      close: () => pool.close(),
      pool,
      outbox: null,
    };
  }
  const outbox = new LocalOutbox(c.outbox.dir);
  return {
    kind: 'outbox',
    describe: `local outbox ${c.outbox.dir}`,
    async deliver(env, open, signal): Promise<DeliveryReport> {
      const { path } = await outbox.deliver(env, open, randomUUID(), signal);
      const response = `${CATALOGUE.OUTBOX_STORED.code} ${CATALOGUE.OUTBOX_STORED.enhanced} stored ${path}`;
      return { response, recipients: env.to.map((r) => ({ address: r.address, status: 'accepted', code: 250, response })) };
    },
    async verify() {
      await mkdir(c.outbox.dir, { recursive: true });
      await access(c.outbox.dir, constants.W_OK);
    },
    close: async () => {},
    pool: null,
    outbox,
  };
}

/** Starts the embedded engine when no UCWI URL is configured, and returns the client either way. */
export async function createUcwiClient(
  c: FrozenConfig,
  logger: Logger,
  observer?: ConstructorParameters<typeof UcwiClient>[2],
): Promise<{ client: UcwiClient; sim: UcwiSim | null; baseUrl: string }> {
  let sim: UcwiSim | null = null;
  const servers = ucwiEndpoints(c);
  let baseUrl = servers?.map((e) => e.url).join(', ') ?? null;
  let accessKey = c.secrets.ucwiAccessKey ?? '';
  let secretKey = c.secrets.ucwiSecretKey ?? '';
  if (!baseUrl) {
    // A key pair made up for this process: the trial path goes through the real client and real auth.
    accessKey = `embedded-${randomBytes(6).toString('hex')}`;
    secretKey = randomBytes(24).toString('hex');
    sim = await startUcwiSim({
      host: c.embeddedDlp.host,
      port: c.embeddedDlp.port,
      accessKey,
      secretKey,
      policiesFile: c.embeddedDlp.policiesFile,
      logger: logger.child({ embeddedDlp: true }),
    });
    baseUrl = sim.url;
  }
  const client = new UcwiClient(
    {
      baseUrl: servers ?? baseUrl,
      backoff: { ...c.ucwi.backoff },
      protocol: c.ucwi.protocol,
      accessKey,
      secretKey,
      tls: { ...c.ucwi.tls },
      timeouts: { ...c.ucwi.timeouts },
      maxConcurrent: c.ucwi.maxConcurrent,
      queueTimeoutMs: c.ucwi.queueTimeoutMs,
      keepAliveMs: c.ucwi.keepAliveMs,
    },
    logger.child({ component: 'ucwi' }),
    observer,
  );
  return { client, sim, baseUrl };
}

/** Release and re-scan for quarantine operations, shared by the admin API and the CLI. */
export function quarantineOps(c: FrozenConfig, store: QuarantineStore, deliverer: AppDeliverer, ucwi: UcwiClient, logger: Logger): OperationsContext {
  const deliver: DeliverFn = (env, open, signal) => deliverer.deliver(env, open, signal);
  // A release re-scan judges as if enforcing: monitor mode must not wave a held message through.
  const rescan: RescanFn = async (record, open, signal) => {
    const queryId = randomUUID();
    const r = await ucwi.inspect(
      { queryId, sender: record.envelope.from, recipients: record.envelope.to.map((t) => t.address), md5: record.md5, size: record.size, openMessage: open },
      signal,
    );
    const d = decide(
      r.ok
        ? { kind: 'verdict', actionCode: r.actionCode }
        : { kind: 'error', errorClass: r.errorClass, ...(r.actionCode !== undefined ? { actionCode: r.actionCode } : {}) },
      queryId,
      { ...policySettings(c), mode: 'enforce' },
    );
    return {
      actionCode: r.ok ? r.actionCode : null,
      allow: d.action === 'relay',
      detail: r.ok ? `re-scan ${queryId}: actionCode ${r.actionCode} → ${d.label}` : `re-scan ${queryId} failed: ${r.errorClass}`,
    };
  };
  return { store, logger: logger.child({ component: 'quarantine-ops' }), deliver, rescan };
}

/** Quarantine store and CAS parts (with their metric sources), shared by a relay and a cluster supervisor. */
async function openStores(
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
async function openClients(
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

function retentionFor(c: FrozenConfig, quarantine: QuarantineStore, logger: Logger): () => Promise<void> {
  return startRetention(
    quarantine,
    { days: c.quarantine.retentionDays, intervalMs: c.quarantine.retentionIntervalMs },
    logger.child({ component: 'retention' }),
  );
}

/** The admin listener: health, readiness, metrics and the quarantine API. */
async function startAdmin(
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
function plannedListeners(c: FrozenConfig): PlannedListener[] {
  return [{ name: 'SMTP', host: c.listen.host, port: c.listen.port }, ...(c.admin.enabled ? [{ name: 'admin', host: c.admin.host, port: c.admin.port }] : [])];
}

/** The status report's parts common to a relay and a cluster supervisor. */
async function statusOf(
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
async function runStops(stops: Array<() => Promise<unknown>>, logger: Logger | null): Promise<void> {
  for (const stop of stops.reverse()) await stop().catch((err: unknown) => logger?.warn({ err }, 'error while stopping'));
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
