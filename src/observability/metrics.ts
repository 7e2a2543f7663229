// Prometheus metrics: messages by action and reply class, UCWI and next-hop latency, sessions and calls in flight, quarantine size, CAS outbox depth, errors by class.
import { AggregatorRegistry, Registry, Counter, Histogram, Gauge, collectDefaultMetrics } from 'prom-client';
import type { IngressObserver } from '../ingress/server.js';
import type { UcwiObserver } from '../dlp/client.js';
import { replyClass } from '../errors.js';
import { maskSecrets } from '../util/mask.js';
import type { EndpointStatus } from '../egress/endpoints.js';

/** Seconds buckets from 1 ms to 60 s: UCWI and next hops live between a few ms and the deadline. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export interface GaugeSources {
  /** Messages held in quarantine (status held); may be slow, so it is cached by the caller. */
  quarantineSize?: () => Promise<number> | number;
  casOutbox?: () => Promise<{ pending: number; failed: number }> | { pending: number; failed: number };
}

/** What /metrics serves: one process's registry, or the cluster supervisor's sum over its workers. */
export interface MetricsRenderer {
  render(): Promise<{ contentType: string; body: string }>;
}

export class Metrics implements MetricsRenderer {
  readonly registry = new Registry();
  readonly messages: Counter<'action' | 'reply_class'>;
  readonly ucwiDuration: Histogram<'outcome'>;
  readonly nextHopDuration: Histogram<'outcome'>;
  readonly sessions: Gauge;
  readonly ucwiInFlight: Gauge;
  readonly errors: Counter<'class'>;
  readonly refused: Counter<'reason'>;
  readonly messageBytes: Counter;

  /**
   * `storeGauges: false` leaves out the quarantine and CAS outbox gauges: SMTP workers of a cluster
   * leave those to the supervisor, which reads the shared stores once instead of once per worker.
   */
  constructor(sources: GaugeSources = {}, opts: { defaultMetrics?: boolean; storeGauges?: boolean } = {}) {
    const r = this.registry;
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: r, prefix: 'dlp_relay_' });
    this.messages = new Counter({
      name: 'dlp_relay_messages_total',
      help: 'Messages processed after the final dot, by action and reply class',
      labelNames: ['action', 'reply_class'],
      registers: [r],
    });
    this.ucwiDuration = new Histogram({
      name: 'dlp_relay_ucwi_duration_seconds',
      help: 'UCWI verdict latency, by outcome (verdict or error class)',
      labelNames: ['outcome'],
      buckets: LATENCY_BUCKETS,
      registers: [r],
    });
    this.nextHopDuration = new Histogram({
      name: 'dlp_relay_next_hop_duration_seconds',
      help: 'Time to hand a message to the next hop (or outbox/quarantine), by outcome',
      labelNames: ['outcome'],
      buckets: LATENCY_BUCKETS,
      registers: [r],
    });
    this.sessions = new Gauge({ name: 'dlp_relay_smtp_sessions', help: 'SMTP sessions open now', registers: [r] });
    this.ucwiInFlight = new Gauge({ name: 'dlp_relay_ucwi_in_flight', help: 'UCWI calls in flight now', registers: [r] });
    this.errors = new Counter({
      name: 'dlp_relay_errors_total',
      help: 'Failures by class (dlp error classes, next-hop phases, quarantine, spool, deadline)',
      labelNames: ['class'],
      registers: [r],
    });
    this.refused = new Counter({
      name: 'dlp_relay_connections_refused_total',
      help: 'Sessions refused at connect, by reason',
      labelNames: ['reason'],
      registers: [r],
    });
    this.messageBytes = new Counter({ name: 'dlp_relay_message_bytes_total', help: 'Bytes of messages received', registers: [r] });
    if (opts.storeGauges !== false) registerStoreGauges(r, sources);
  }

  /**
   * Each upstream endpoint (next hops, UCWI servers): up or down, failures and failovers. Read at scrape
   * time; across cluster workers "up" is the minimum (down in any worker shows), the counts are summed.
   */
  watchUpstreams(statuses: () => EndpointStatus[]): void {
    const r = this.registry;
    const labelNames = ['kind', 'endpoint', 'priority'] as const;
    const labels = (s: EndpointStatus) => ({ kind: s.kind, endpoint: s.endpoint, priority: String(s.priority) });
    new Gauge({
      name: 'dlp_relay_upstream_up',
      help: 'Upstream endpoint state: 1 in service, 0 marked down (skipped until its back-off ends and a probe answers)',
      labelNames,
      aggregator: 'min',
      registers: [r],
      collect() {
        this.reset();
        for (const s of statuses()) this.set(labels(s), s.up ? 1 : 0);
      },
    });
    new Gauge({
      name: 'dlp_relay_upstream_failures',
      help: 'Failures of an upstream endpoint since start (transactions and probes)',
      labelNames,
      registers: [r],
      collect() {
        this.reset();
        for (const s of statuses()) this.set(labels(s), s.failures);
      },
    });
    new Gauge({
      name: 'dlp_relay_upstream_failovers',
      help: 'Transactions that moved from this endpoint to the next one since start',
      labelNames,
      registers: [r],
      collect() {
        this.reset();
        for (const s of statuses()) this.set(labels(s), s.failovers);
      },
    });
  }

  /** In a cluster worker: answer the supervisor's metric requests (prom-client's IPC) with this registry. */
  shareWithSupervisor(): void {
    new AggregatorRegistry(); // installs prom-client's worker-side message listener
    AggregatorRegistry.setRegistries([this.registry]);
  }

  ingressObserver(): IngressObserver {
    return {
      sessionOpened: () => this.sessions.inc(),
      sessionClosed: () => this.sessions.dec(),
      refused: (reason) => this.refused.inc({ reason }),
      messageDone: (o, size) => {
        this.messages.inc({ action: o.action, reply_class: replyClass(o.reply.code) });
        this.messageBytes.inc(size);
        // Label values end up in every scrape and dashboard: never let one carry a secret.
        if (o.errorClass) this.errors.inc({ class: maskSecrets(o.errorClass) });
        if (o.relayMs !== null && o.relayMs !== undefined) this.nextHopDuration.observe({ outcome: o.reply.code < 400 ? 'ok' : 'failed' }, o.relayMs / 1000);
      },
    };
  }

  ucwiObserver(): UcwiObserver {
    return {
      onStart: () => this.ucwiInFlight.inc(),
      onEnd: (r) => {
        this.ucwiInFlight.dec();
        this.ucwiDuration.observe({ outcome: r.ok ? 'verdict' : r.errorClass }, r.elapsedMs / 1000);
      },
    };
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** Gauges whose value lives in a store, read at scrape time; a failing store must not break the scrape. */
function registerStoreGauges(r: Registry, sources: GaugeSources): void {
  const readQuarantine = sources.quarantineSize;
  new Gauge({
    name: 'dlp_relay_quarantine_messages',
    help: 'Messages held in quarantine',
    registers: [r],
    async collect() {
      if (!readQuarantine) return;
      try {
        this.set(await readQuarantine());
      } catch {
        /* store unavailable: keep the last value; /readyz reports the outage */
      }
    },
  });
  const readOutbox = sources.casOutbox;
  new Gauge({
    name: 'dlp_relay_cas_outbox_entries',
    help: 'CAS push outbox entries by state',
    labelNames: ['state'],
    registers: [r],
    async collect() {
      if (!readOutbox) return;
      try {
        const s = await readOutbox();
        this.set({ state: 'pending' }, s.pending);
        this.set({ state: 'failed' }, s.failed);
      } catch {
        /* keep the last value */
      }
    },
  });
}

/**
 * The supervisor's /metrics when SMTP runs in cluster workers: the workers' metrics summed by
 * prom-client over IPC (counters, histograms and in-flight gauges add up across workers), followed by
 * the supervisor's own store gauges.
 */
export class ClusterMetrics implements MetricsRenderer {
  private readonly aggregator = new AggregatorRegistry();
  private readonly own = new Registry();
  constructor(sources: GaugeSources) {
    registerStoreGauges(this.own, sources);
  }
  async render(): Promise<{ contentType: string; body: string }> {
    const [workers, own] = await Promise.all([this.aggregator.clusterMetrics(), this.own.metrics()]);
    return { contentType: this.own.contentType, body: `${workers.trimEnd()}\n${own}` };
  }

  /**
   * Open SMTP sessions summed over the workers, the number /metrics shows (one IPC round trip per worker, fine
   * for a status call); null when a worker does not answer.
   */
  async sessions(): Promise<number | null> {
    try {
      const m = /^dlp_relay_smtp_sessions(?:\{[^}]*\})? (\S+)$/m.exec(await this.aggregator.clusterMetrics());
      return m ? Number(m[1]) : 0;
    } catch {
      return null;
    }
  }
}
