// Composition root: builds every part from the frozen config, starts them in order, and stops them in reverse.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { FrozenConfig } from './config/load.js';
import { UcwiClient } from './dlp/client.js';
import { Ingress, type IngressObserver } from './ingress/server.js';
import { prepareSpoolDir } from './spool/spool.js';
import { NextHopRelay, type OutboundEnvelope, type DeliveryResult, type NextHopOptions } from './egress/relay.js';
import { LocalOutbox } from './egress/outbox.js';
import { FsQuarantineStore } from './quarantine/fs-store.js';
import type { QuarantineStore } from './quarantine/types.js';
import type { Deliverer, PipelineDeps, VerdictHook } from './pipeline/process.js';
import type { PolicySettings } from './policy/policy.js';
import { startUcwiSim, type UcwiSim } from './sim/ucwi/server.js';

export interface RunningRelay {
  smtp: { host: string; port: number };
  ucwiUrl: string;
  embeddedDlp: boolean;
  delivery: string;
  quarantine: QuarantineStore;
  ingress: Ingress;
  ucwi: UcwiClient;
  deliverer: Deliverer;
  stop(graceMs?: number): Promise<void>;
}

export interface StartOptions {
  observer?: IngressObserver;
  onVerdict?: VerdictHook;
  /** Replace the quarantine store (the PostgreSQL backend is chosen by the quarantine module's factory). */
  quarantine?: QuarantineStore;
}

export function nextHopOptions(c: FrozenConfig): NextHopOptions {
  const n = c.nextHop;
  return {
    host: n.host!,
    port: n.port,
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
    timeouts: { ...n.timeouts },
  };
}

export function policySettings(c: FrozenConfig): PolicySettings {
  return c.policy as unknown as PolicySettings;
}

/** The deliverer for accepted mail: the next hop when configured, else the local outbox directory. */
export function createDeliverer(c: FrozenConfig, logger: Logger): Deliverer & { close(): Promise<void>; describe: string } {
  if (c.nextHop.host) {
    const relay = new NextHopRelay(nextHopOptions(c), logger.child({ component: 'egress' }));
    return {
      kind: 'next-hop',
      describe: `next hop ${c.nextHop.host}:${c.nextHop.port}`,
      deliver: (env: OutboundEnvelope, open: () => Readable, signal: AbortSignal) => relay.deliver(env, open, signal),
      close: () => relay.close(),
    };
  }
  const outbox = new LocalOutbox(c.outbox.dir);
  return {
    kind: 'outbox',
    describe: `local outbox ${c.outbox.dir}`,
    async deliver(env: OutboundEnvelope, open: () => Readable, _signal: AbortSignal, queryId: string): Promise<DeliveryResult> {
      const t0 = performance.now();
      const { path } = await outbox.deliver(env, open, queryId);
      return { accepted: env.to.map((r) => r.address), rejected: [], response: `stored ${path}`, elapsedMs: Math.round(performance.now() - t0) };
    },
    close: async () => {},
  };
}

export async function startRelay(c: FrozenConfig, logger: Logger, opts: StartOptions = {}): Promise<RunningRelay> {
  await prepareSpoolDir(c.spool.dir);

  // No UCWI configured: run the embedded engine on loopback and reach it through the real client,
  // with a key pair made up for this process, so the trial path is the production path.
  let sim: UcwiSim | null = null;
  let baseUrl = c.ucwi.url;
  let accessKey = c.secrets.ucwiAccessKey ?? '';
  let secretKey = c.secrets.ucwiSecretKey ?? '';
  if (!baseUrl) {
    accessKey = `embedded-${randomBytes(6).toString('hex')}`;
    secretKey = randomBytes(24).toString('hex');
    sim = await startUcwiSim({
      host: c.embeddedDlp.host,
      port: c.embeddedDlp.port,
      accessKey,
      secretKey,
      policiesFile: c.embeddedDlp.policiesFile,
      logger: logger.child({ component: 'embedded-dlp' }),
    });
    baseUrl = sim.url;
  }
  const ucwi = new UcwiClient(
    {
      baseUrl,
      protocol: c.ucwi.protocol,
      accessKey,
      secretKey,
      tls: { ...c.ucwi.tls },
      timeouts: { ...c.ucwi.timeouts },
      maxConcurrent: c.ucwi.maxConcurrent,
      keepAliveMs: c.ucwi.keepAliveMs,
    },
    logger.child({ component: 'ucwi' }),
  );

  const quarantine = opts.quarantine ?? new FsQuarantineStore(c.quarantine.dir);
  await quarantine.init();
  const deliverer = createDeliverer(c, logger);

  const instance = `${hostname()}:${process.pid}`;
  const deps: PipelineDeps = {
    logger,
    hostname: c.smtp.hostname,
    instance,
    dataDeadlineMs: c.limits.dataDeadlineMs,
    policy: policySettings(c),
    dlp: ucwi,
    deliverer,
    quarantine,
    onVerdict: opts.onVerdict,
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
      allowedClients: c.smtp.allowedClients,
      trustedNetworks: c.policy.loop.trustedNetworks,
      tls: { ...c.smtp.tls },
      dsn: c.smtp.dsn,
      spoolDir: c.spool.dir,
    },
    deps,
    logger.child({ component: 'smtp' }),
    opts.observer,
  );
  const smtp = await ingress.listen();

  return {
    smtp,
    ucwiUrl: baseUrl,
    embeddedDlp: sim !== null,
    delivery: deliverer.describe,
    quarantine,
    ingress,
    ucwi,
    deliverer,
    async stop(graceMs = 10_000) {
      await ingress.close(graceMs);
      await Promise.allSettled([ucwi.close(), deliverer.close(), quarantine.close(), sim?.close()]);
    },
  };
}
