// The UCWI simulator: an HTTP server speaking SkyGuard UCWI's email-channel API, backed by the embedded DLP engine, with fault knobs for tests.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { silentLogger } from '../observability/logger.js';
import { DEFAULT_POLICIES_FILE, loadPolicies, parsePolicies, type PolicyDef } from './policies.js';
import { compilePolicies, type ScanLimits } from './scan.js';
import { LatencyWaits, NO_FAULTS, validFaults, type UcwiFaults } from './faults.js';
import { handleRequest, type SimContext } from './routes.js';
import { IncidentRing, sendError } from './wire.js';

export { loadPolicies, type PolicyDef } from './policies.js';
export { NO_FAULTS, type UcwiBodyMode, type UcwiFaults } from './faults.js';

export interface UcwiSimOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0 (any free port; read it back from `UcwiSim.port`). */
  port?: number;
  accessKey: string;
  secretKey: string;
  /** YAML policy file; default config/detectors.yaml of this package. Ignored when `policies` is given. */
  policiesFile?: string;
  /** Policies given directly (validated like the file). */
  policies?: PolicyDef[];
  /** Largest request body accepted, default 64 MiB; larger answers 413. */
  maxBodyBytes?: number;
  /** Faults active from the start; also what `resetFaults()` returns to. */
  faults?: Partial<UcwiFaults>;
  logger?: Logger;
  /** Largest accepted difference between x-skg-timestamp and our clock, in seconds; default 300 (UCWI's 5 minutes). */
  clockSkewSec?: number;
  /** Work bounds of the scanner (MIME parts, bytes per part, nesting depth). */
  scanLimits?: Partial<ScanLimits>;
}

export interface UcwiSim {
  /** http://127.0.0.1:PORT, no trailing slash. */
  url: string;
  port: number;
  /** Merges into the current faults; pass null (or 'normal') to switch one knob off. Throws on invalid values. */
  setFaults(f: Partial<UcwiFaults>): void;
  /** Back to the faults given at construction (none by default). */
  resetFaults(): void;
  /**
   * `requests`: POSTs to the email channel, whatever their outcome (401s included, /healthz never).
   * `lastMetadata`: the last request's parsed `metadata` (the raw string when it was not JSON).
   * `authFailures`: requests answered 401.
   */
  stats(): { requests: number; lastMetadata: unknown | null; authFailures: number };
  /** Stops listening and ends every connection, keep-alive ones included. */
  close(): Promise<void>;
}

const INCIDENT_RING_SIZE = 1000;

export async function startUcwiSim(opts: UcwiSimOptions): Promise<UcwiSim> {
  if (!opts.accessKey || !opts.secretKey) throw new Error('startUcwiSim: accessKey and secretKey are required');
  const host = opts.host ?? '127.0.0.1';
  const log = (opts.logger ?? silentLogger()).child({ component: 'ucwi-sim' });
  const policies = opts.policies ? parsePolicies(opts.policies, 'UcwiSimOptions.policies') : loadPolicies(opts.policiesFile ?? DEFAULT_POLICIES_FILE);
  const compiled = compilePolicies(policies);
  const baseFaults: UcwiFaults = { ...NO_FAULTS, ...validFaults(opts.faults ?? {}) };
  const ctx: SimContext = {
    keys: { accessKey: opts.accessKey, secretKey: opts.secretKey },
    maxSkewSec: opts.clockSkewSec ?? 300,
    maxBodyBytes: opts.maxBodyBytes ?? 64 * 1024 * 1024,
    scanLimits: opts.scanLimits ?? {},
    policies,
    compiled,
    log,
    incidents: new IncidentRing(INCIDENT_RING_SIZE),
    waits: new LatencyWaits(),
    faults: { ...baseFaults },
    requests: 0,
    authFailures: 0,
    lastMetadata: null,
  };

  const server = createServer((req, res) => {
    handleRequest(ctx, req, res).catch((err: unknown) => {
      log.error({ err }, 'ucwi-sim: handler failed');
      if (!res.headersSent) sendError(res, 500);
      else res.destroy();
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // exclusive: in a cluster worker (the embedded engine) a shared handle would spread one worker's
    // requests over every worker's engine, each with its own made-up key pair.
    server.listen({ port: opts.port ?? 0, host, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  log.info({ url, policies: policies.length }, 'UCWI simulator listening');

  let closing: Promise<void> | null = null;
  return {
    url,
    port,
    setFaults(f) {
      ctx.faults = { ...ctx.faults, ...validFaults(f) };
    },
    resetFaults() {
      ctx.faults = { ...baseFaults };
    },
    stats() {
      return { requests: ctx.requests, lastMetadata: ctx.lastMetadata, authFailures: ctx.authFailures };
    },
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        ctx.waits.releaseAll();
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
