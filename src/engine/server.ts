// The UCWI simulator: an HTTP server speaking SkyGuard UCWI's email-channel API, backed by the embedded DLP engine, with fault knobs for tests.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import busboy from 'busboy';
import type { Logger } from 'pino';
import { z } from 'zod';
import { checkSkgAuth } from './verify-auth.js';
import { silentLogger } from '../observability/logger.js';
import { decide, DEFAULT_POLICIES_FILE, loadPolicies, parsePolicies, type MatchedPolicy, type PolicyDef } from './policies.js';
import { compilePolicies, scanMessage, type ScanLimits, type ScanReport } from './scan.js';
import { CHANNEL_LIST, EMAIL_CHANNEL_DETAIL, IncidentRing, errorEnvelope, parseMetadata, sendError, sendJson, sendRaw, type Metadata } from './wire.js';

export { loadPolicies, type PolicyDef } from './policies.js';

/** What a 200 answer's body looks like on the wire. */
export type UcwiBodyMode = 'normal' | 'garbage' | 'truncated' | 'empty' | 'no_action' | 'unknown_action';

export interface UcwiFaults {
  /**
   * Response time in milliseconds, counted from the request's arrival: the answer goes out no sooner
   * than this, and the upload and the scan count toward it (a DLP server "with 200 ms latency" answers
   * in 200 ms, not 200 ms plus its own scan). A scan that takes longer answers when it is done.
   */
  latencyMs: number;
  /** Answer this HTTP status with the UCWI error envelope instead of the real answer; null = off. */
  status: number | null;
  /** Corrupt a 200 answer: non-JSON text, JSON cut in the middle, no body, no actionCode, actionCode 42. */
  body: UcwiBodyMode;
  /** Answer this actionCode whatever the scan found; null = off. */
  forceActionCode: number | null;
  /** Destroy the socket instead of answering. */
  dropConnection: boolean;
}

export const NO_FAULTS: Readonly<UcwiFaults> = { latencyMs: 0, status: null, body: 'normal', forceActionCode: null, dropConnection: false };

const faultsSchema = z
  .strictObject({
    latencyMs: z.number().min(0),
    status: z.int().min(200).max(599).nullable(),
    body: z.enum(['normal', 'garbage', 'truncated', 'empty', 'no_action', 'unknown_action']),
    forceActionCode: z.int().nullable(),
    dropConnection: z.boolean(),
  })
  .partial();

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

const EMAIL_PATH = /^\/skg\/v1\/dlp\/channel\/email\/([^/]+)\/([^/]+)\/?$/;
const INCIDENT_PATH = /^\/skg\/v1\/dlp\/incident\/([^/]+)\/?$/;
const INCIDENT_RING_SIZE = 1000;
const METADATA_MAX_BYTES = 1024 * 1024;

interface ParsedUpload {
  outcome: 'ok' | 'too_large' | 'bad_form' | 'aborted';
  metadataRaw: string | undefined;
  metadataTruncated: boolean;
  scan: Promise<ScanReport> | null;
}

export async function startUcwiSim(opts: UcwiSimOptions): Promise<UcwiSim> {
  if (!opts.accessKey || !opts.secretKey) throw new Error('startUcwiSim: accessKey and secretKey are required');
  const host = opts.host ?? '127.0.0.1';
  const maxBodyBytes = opts.maxBodyBytes ?? 64 * 1024 * 1024;
  const maxSkewSec = opts.clockSkewSec ?? 300;
  const log = (opts.logger ?? silentLogger()).child({ component: 'ucwi-sim' });
  const policies = opts.policies ? parsePolicies(opts.policies, 'UcwiSimOptions.policies') : loadPolicies(opts.policiesFile ?? DEFAULT_POLICIES_FILE);
  const compiled = compilePolicies(policies);
  const keys = { accessKey: opts.accessKey, secretKey: opts.secretKey };

  const validFaults = (f: Partial<UcwiFaults>): Partial<UcwiFaults> => {
    const r = faultsSchema.safeParse(f);
    if (!r.success) throw new Error(`invalid UCWI simulator faults: ${z.prettifyError(r.error)}`);
    return r.data;
  };
  const baseFaults: UcwiFaults = { ...NO_FAULTS, ...validFaults(opts.faults ?? {}) };
  let faults: UcwiFaults = { ...baseFaults };
  let requests = 0;
  let authFailures = 0;
  let lastMetadata: unknown | null = null;
  const incidents = new IncidentRing(INCIDENT_RING_SIZE);

  // Pending latency waits, released on close() so no handler outlives the server.
  const waits = new Map<NodeJS.Timeout, () => void>();
  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const t = setTimeout(() => {
        waits.delete(t);
        resolve();
      }, ms);
      waits.set(t, resolve);
    });

  function readUpload(req: IncomingMessage, signal: AbortSignal): Promise<ParsedUpload> {
    const result: ParsedUpload = { outcome: 'ok', metadataRaw: undefined, metadataTruncated: false, scan: null };
    let bb: busboy.Busboy;
    try {
      bb = busboy({
        headers: req.headers,
        limits: { fields: 32, files: 8, parts: 64, fieldSize: METADATA_MAX_BYTES, fileSize: maxBodyBytes },
      });
    } catch {
      // Not multipart/form-data at all.
      return Promise.resolve({ ...result, outcome: 'bad_form' });
    }
    bb.on('field', (name, value, info) => {
      if (name === 'metadata' && result.metadataRaw === undefined) {
        result.metadataRaw = value;
        result.metadataTruncated = info.valueTruncated;
      }
    });
    bb.on('file', (name, stream) => {
      if (name === 'request' && result.scan === null) {
        // The EML is never buffered: it streams from the socket through busboy into the parser.
        result.scan = scanMessage(stream, compiled, { limits: opts.scanLimits ?? {}, signal });
        // Paths that answer 400/413 never await the scan; a failure there must not become an unhandled rejection.
        result.scan.catch(() => {});
      } else {
        stream.resume();
      }
    });
    return new Promise<ParsedUpload>((resolve) => {
      let settled = false;
      let received = 0;
      const settle = (outcome: ParsedUpload['outcome']): void => {
        if (settled) return;
        settled = true;
        if (outcome !== 'ok') req.unpipe(bb);
        resolve({ ...result, outcome });
      };
      req.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > maxBodyBytes) settle('too_large');
      });
      req.on('close', () => {
        if (!req.complete) settle('aborted');
      });
      bb.on('error', () => settle('bad_form'));
      bb.on('close', () => settle('ok'));
      req.pipe(bb);
    });
  }

  /** Applies the fault knobs to an answer of the email endpoint, then sends it. */
  async function deliver(
    req: IncomingMessage,
    res: ServerResponse,
    f: UcwiFaults & { arrivedAt: number },
    status: number,
    body: Record<string, unknown>,
  ): Promise<void> {
    const wait = f.latencyMs - (performance.now() - f.arrivedAt);
    if (wait >= 1) await sleep(wait);
    // The client may have given up (its own timeout) or close() may have ended the connection meanwhile.
    if (res.destroyed || res.headersSent || req.socket.destroyed) return;
    if (f.dropConnection) {
      req.socket.destroy();
      return;
    }
    if (f.status !== null) return sendError(res, f.status);
    if (status !== 200) return sendJson(res, status, body);
    const out = { ...body };
    if ('actionCode' in out) {
      if (f.forceActionCode !== null) out['actionCode'] = f.forceActionCode;
      if (f.body === 'no_action') delete out['actionCode'];
      if (f.body === 'unknown_action') out['actionCode'] = 42;
    }
    const text = JSON.stringify(out);
    switch (f.body) {
      case 'garbage':
        // Still labelled JSON: the client must not trust the content type.
        return sendRaw(res, 200, 'application/json; charset=utf-8', '<html><body>502 Bad Gateway (ucwi-sim garbage)</body></html>');
      case 'truncated':
        // A JSON text cut in half, with a Content-Length that matches the cut text: only parsing can tell.
        return sendRaw(res, 200, 'application/json; charset=utf-8', text.slice(0, Math.floor(text.length / 2)));
      case 'empty':
        return sendRaw(res, 200, 'application/json; charset=utf-8', '');
      default:
        return sendRaw(res, 200, 'application/json; charset=utf-8', text);
    }
  }

  function recordIncident(meta: Metadata, protocol: string, report: ScanReport): { actionCode: number; matchedPolicies: MatchedPolicy[] } {
    const verdict = decide(policies, report.counts);
    if (verdict.matchedPolicies.length > 0) {
      const now = Math.floor(Date.now() / 1000);
      incidents.add({
        id: randomUUID(),
        queryID: meta.queryID,
        forensicsName: `${meta.queryID}.eml`,
        detectTime: now,
        incidentTime: now,
        source: meta.sender,
        dest: meta.recipients,
        channel: 'email',
        protocol,
        action: verdict.actionCode,
        severity: Math.min(...verdict.matchedPolicies.map((p) => p.severity)),
        maxMatches: Math.max(...verdict.matchedPolicies.map((p) => p.numberOfMatches)),
        policies: verdict.matchedPolicies,
      });
    }
    if (report.truncated)
      log.warn({ queryId: meta.queryID, errors: report.errors }, 'scan incomplete: limits reached or message malformed; verdict uses what was scanned');
    return verdict;
  }

  async function handleEmail(req: IncomingMessage, res: ServerResponse, protocol: string, mode: 'sync' | 'async'): Promise<void> {
    // Faults are read once per request so a test's setFaults() never lands halfway through one.
    const f = { ...faults, arrivedAt: performance.now() };
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > maxBodyBytes) {
      return sendError(res, 413, { connection: 'close' });
    }
    const ac = new AbortController();
    const upload = await readUpload(req, ac.signal);
    if (upload.outcome !== 'ok') {
      ac.abort();
      if (upload.outcome === 'too_large') return sendError(res, 413, { connection: 'close' });
      if (upload.outcome === 'aborted') return;
      return deliver(req, res, f, 400, errorEnvelope(400));
    }
    const { parsed, meta } = parseMetadata(upload.metadataRaw, upload.metadataTruncated);
    if (upload.metadataRaw !== undefined) lastMetadata = parsed;
    // md5 alone is a documented request form ("也支持仅送检MD5"); with no content to look at, it is no match.
    if (!meta || (upload.scan === null && meta.md5 === null)) {
      ac.abort();
      log.info({ reason: meta ? 'no request part' : 'bad metadata' }, 'ucwi-sim: 400');
      return deliver(req, res, f, 400, errorEnvelope(400));
    }
    const emptyReport: ScanReport = { counts: policies.map(() => 0), attachments: 0, scannedAttachments: 0, truncated: false, errors: [] };
    const scan = upload.scan ?? Promise.resolve(emptyReport);

    if (mode === 'async') {
      // ASSUMPTION: the immediate answer of an async call is not documented; {"result":0,"queryID"} per ucwi.md §8.6.
      // "Immediately" means once the upload has been read, without waiting for the scan to finish. The verdict
      // only becomes an incident (GET /skg/v1/dlp/incident/{queryID}); callback_url is never called.
      void scan
        .then((report) => recordIncident(meta, protocol, report))
        .catch((err: unknown) => log.error({ err, queryId: meta.queryID }, 'async scan failed'));
      return deliver(req, res, f, 200, { result: 0, queryID: meta.queryID });
    }

    const report = await scan;
    const verdict = recordIncident(meta, protocol, report);
    log.debug({ queryId: meta.queryID, actionCode: verdict.actionCode, matched: verdict.matchedPolicies.length }, 'ucwi-sim: verdict');
    // `result`/`actionCode` are documented; ASSUMPTION: `responseCode` (read by the seed's Python sample) and
    // the `queryID` echo are not in any documented response, they are extras a client must tolerate.
    return deliver(req, res, f, 200, {
      result: 0,
      responseCode: 200,
      actionCode: verdict.actionCode,
      queryID: meta.queryID,
      incident_info: verdict.matchedPolicies.length > 0 ? { matchedPolicies: verdict.matchedPolicies } : {},
    });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://ucwi-sim').pathname;

    if (path === '/healthz') {
      if (method !== 'GET' && method !== 'HEAD') return sendError(res, 405);
      return sendRaw(res, 200, 'text/plain; charset=utf-8', 'ok');
    }
    if (!path.startsWith('/skg/')) return sendError(res, 404);

    const email = EMAIL_PATH.exec(path);
    if (email && method === 'POST') requests++;

    // Every UCWI API call carries the SKG signature; the check does not depend on the route.
    const auth = checkSkgAuth(req.headers, keys, Date.now(), maxSkewSec);
    if (!auth.ok) {
      authFailures++;
      log.info({ reason: auth.reason, path }, 'ucwi-sim: 401');
      return sendError(res, 401);
    }

    if (email) {
      if (method !== 'POST') return sendError(res, 405);
      const protocol = email[1]!.toLowerCase();
      const mode = email[2]!.toLowerCase();
      if (protocol !== 'smtp' || (mode !== 'sync' && mode !== 'async')) return sendError(res, 404);
      return handleEmail(req, res, protocol, mode);
    }
    if (path === '/skg/v1/dlp/channel' || path === '/skg/v1/dlp/channel/') {
      if (method !== 'GET') return sendError(res, 405);
      return sendJson(res, 200, CHANNEL_LIST);
    }
    if (path === '/skg/v1/dlp/channel/email' || path === '/skg/v1/dlp/channel/email/') {
      if (method !== 'GET') return sendError(res, 405);
      return sendJson(res, 200, EMAIL_CHANNEL_DETAIL);
    }
    const incident = INCIDENT_PATH.exec(path);
    if (incident) {
      if (method !== 'GET') return sendError(res, 405);
      let key: string;
      try {
        key = decodeURIComponent(incident[1]!);
      } catch {
        return sendError(res, 404);
      }
      const found = incidents.get(key);
      // Documented: an ID that produced no incident answers 404.
      if (!found) return sendError(res, 404);
      return sendJson(res, 200, { result: 0, ...found });
    }
    return sendError(res, 404);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
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
      faults = { ...faults, ...validFaults(f) };
    },
    resetFaults() {
      faults = { ...baseFaults };
    },
    stats() {
      return { requests, lastMetadata, authFailures };
    },
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        for (const [t, wake] of waits) {
          clearTimeout(t);
          wake();
        }
        waits.clear();
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
