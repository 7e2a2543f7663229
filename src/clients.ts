// The parts of the relay that talk to the outside, built from the config: next-hop and gateway pools, the local outbox, the UCWI client (or the embedded engine) and the quarantine operations on top of them.
import { CATALOGUE } from './errors.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { access, constants, mkdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { FrozenConfig } from './config/load.js';
import { DEFAULT_PRIORITY } from './config/schema.js';
import { UcwiClient } from './dlp/client.js';
import { NextHopPool, type DeliveryReport, type NextHopOptions } from './egress/pool.js';
import { NextHopGroup, type NextHopEndpoint } from './egress/next-hops.js';
import type { UcwiEndpoint } from './dlp/client.js';
import type { Envelope } from './smtp/envelope.js';
import { LocalOutbox } from './egress/outbox.js';
import { type QuarantineStore, type OperationsContext, type DeliverFn, type RescanFn } from './quarantine/index.js';
import { decide, type PolicySettings } from './policy/policy.js';
import { startUcwiSim, type UcwiSim } from './engine/server.js';

/** The next hops: nextHop.endpoints, or the single host/port (the default priority); empty when mail goes to the outbox. */
export function nextHopEndpoints(c: FrozenConfig): NextHopEndpoint[] {
  const n = c.nextHop;
  if (n.endpoints.length) return n.endpoints.map((e) => ({ host: e.host, port: e.port ?? n.port, priority: e.priority }));
  return n.host ? [{ host: n.host, port: n.port, priority: DEFAULT_PRIORITY }] : [];
}

/** ucwi.url as a list of servers (the default priority where none is given), or null for the embedded engine. */
export function ucwiEndpoints(c: FrozenConfig): UcwiEndpoint[] | null {
  const u = c.ucwi.url;
  if (u === null) return null;
  return (typeof u === 'string' ? [u] : u).map((e) => (typeof e === 'string' ? { url: e, priority: DEFAULT_PRIORITY } : { url: e.url, priority: e.priority }));
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

export function startGateways(c: FrozenConfig, logger: Logger, stops: Array<() => Promise<unknown>>): Map<string, NextHopPool> {
  const pools = new Map<string, NextHopPool>();
  for (const name of Object.keys(c.gateways)) {
    const pool = new NextHopPool(gatewayOptions(c, name), logger.child({ component: 'gateway', gateway: name }));
    pools.set(name, pool);
    stops.push(() => pool.close());
  }
  return pools;
}

/** The policy layer's settings are the config's policy part as the schema parsed it: no conversion, no cast. */
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
