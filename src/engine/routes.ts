// The UCWI simulator's request handling: the SKG signature check, the email endpoint (upload, scan, verdict, incident), the channel list and incident lookups.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { checkSkgAuth } from './verify-auth.js';
import { decide, type MatchedPolicy, type Policy } from './policies.js';
import type { ScanReport } from './scan.js';
import { deliver, type LatencyWaits, type UcwiFaults } from './faults.js';
import { readUpload, type UploadLimits } from './upload.js';
import { CHANNEL_LIST, EMAIL_CHANNEL_DETAIL, errorEnvelope, parseMetadata, sendError, sendJson, sendRaw, type IncidentRing, type Metadata } from './wire.js';

const EMAIL_PATH = /^\/skg\/v1\/dlp\/channel\/email\/([^/]+)\/([^/]+)\/?$/;
const INCIDENT_PATH = /^\/skg\/v1\/dlp\/incident\/([^/]+)\/?$/;

/** One simulator's settings and live state, shared by its handlers; startUcwiSim owns it. */
export interface SimContext extends UploadLimits {
  readonly keys: { accessKey: string; secretKey: string };
  readonly maxSkewSec: number;
  readonly policies: readonly Policy[];
  readonly log: Logger;
  readonly incidents: IncidentRing;
  readonly waits: LatencyWaits;
  /** The knobs in force; each request reads them once. */
  faults: UcwiFaults;
  requests: number;
  authFailures: number;
  lastMetadata: unknown | null;
}

function recordIncident(ctx: SimContext, meta: Metadata, protocol: string, report: ScanReport): { actionCode: number; matchedPolicies: MatchedPolicy[] } {
  const verdict = decide(ctx.policies, report.counts);
  if (verdict.matchedPolicies.length > 0) {
    const now = Math.floor(Date.now() / 1000);
    ctx.incidents.add({
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
    ctx.log.warn({ queryId: meta.queryID, errors: report.errors }, 'scan incomplete: limits reached or message malformed; verdict uses what was scanned');
  return verdict;
}

async function handleEmail(ctx: SimContext, req: IncomingMessage, res: ServerResponse, protocol: string, mode: 'sync' | 'async'): Promise<void> {
  // Faults are read once per request so a test's setFaults() never lands halfway through one.
  const f = { ...ctx.faults, arrivedAt: performance.now() };
  const answer = (status: number, body: Record<string, unknown>): Promise<void> => deliver(req, res, f, status, body, ctx.waits);
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > ctx.maxBodyBytes) {
    return sendError(res, 413, { connection: 'close' });
  }
  const ac = new AbortController();
  const upload = await readUpload(req, ac.signal, ctx);
  if (upload.outcome !== 'ok') {
    ac.abort();
    if (upload.outcome === 'too_large') return sendError(res, 413, { connection: 'close' });
    if (upload.outcome === 'aborted') return;
    return answer(400, errorEnvelope(400));
  }
  const { parsed, meta } = parseMetadata(upload.metadataRaw, upload.metadataTruncated);
  if (upload.metadataRaw !== undefined) ctx.lastMetadata = parsed;
  // md5 alone is a documented request form ("也支持仅送检MD5"); with no content to look at, it is no match.
  if (!meta || (upload.scan === null && meta.md5 === null)) {
    ac.abort();
    ctx.log.info({ reason: meta ? 'no request part' : 'bad metadata' }, 'ucwi-sim: 400');
    return answer(400, errorEnvelope(400));
  }
  const emptyReport: ScanReport = { counts: ctx.policies.map(() => 0), attachments: 0, scannedAttachments: 0, truncated: false, errors: [] };
  const scan = upload.scan ?? Promise.resolve(emptyReport);

  if (mode === 'async') {
    // ASSUMPTION: the immediate answer of an async call is not documented; {"result":0,"queryID"} per ucwi.md §8.6.
    // "Immediately" means once the upload has been read, without waiting for the scan to finish. The verdict
    // only becomes an incident (GET /skg/v1/dlp/incident/{queryID}); callback_url is never called.
    void scan
      .then((report) => recordIncident(ctx, meta, protocol, report))
      .catch((err: unknown) => ctx.log.error({ err, queryId: meta.queryID }, 'async scan failed'));
    return answer(200, { result: 0, queryID: meta.queryID });
  }

  const report = await scan;
  const verdict = recordIncident(ctx, meta, protocol, report);
  ctx.log.debug({ queryId: meta.queryID, actionCode: verdict.actionCode, matched: verdict.matchedPolicies.length }, 'ucwi-sim: verdict');
  // `result`/`actionCode` are documented; ASSUMPTION: `responseCode` (read by the seed's Python sample) and
  // the `queryID` echo are not in any documented response, they are extras a client must tolerate.
  return answer(200, {
    result: 0,
    responseCode: 200,
    actionCode: verdict.actionCode,
    queryID: meta.queryID,
    incident_info: verdict.matchedPolicies.length > 0 ? { matchedPolicies: verdict.matchedPolicies } : {},
  });
}

/** GET /skg/v1/dlp/incident/{incident id or queryID}. */
function handleIncident(ctx: SimContext, res: ServerResponse, method: string, rawKey: string): void {
  if (method !== 'GET') return sendError(res, 405);
  let key: string;
  try {
    key = decodeURIComponent(rawKey);
  } catch {
    return sendError(res, 404);
  }
  const found = ctx.incidents.get(key);
  // Documented: an ID that produced no incident answers 404.
  if (!found) return sendError(res, 404);
  return sendJson(res, 200, { result: 0, ...found });
}

/** Every request: /healthz without a signature, every /skg/ path only with a valid one. */
export async function handleRequest(ctx: SimContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET';
  const path = new URL(req.url ?? '/', 'http://ucwi-sim').pathname;

  if (path === '/healthz') {
    if (method !== 'GET' && method !== 'HEAD') return sendError(res, 405);
    return sendRaw(res, 200, 'text/plain; charset=utf-8', 'ok');
  }
  if (!path.startsWith('/skg/')) return sendError(res, 404);

  const email = EMAIL_PATH.exec(path);
  if (email && method === 'POST') ctx.requests++;

  // Every UCWI API call carries the SKG signature; the check does not depend on the route.
  const auth = checkSkgAuth(req.headers, ctx.keys, Date.now(), ctx.maxSkewSec);
  if (!auth.ok) {
    ctx.authFailures++;
    ctx.log.info({ reason: auth.reason, path }, 'ucwi-sim: 401');
    return sendError(res, 401);
  }

  if (email) {
    if (method !== 'POST') return sendError(res, 405);
    const protocol = email[1]!.toLowerCase();
    const mode = email[2]!.toLowerCase();
    if (protocol !== 'smtp' || (mode !== 'sync' && mode !== 'async')) return sendError(res, 404);
    return handleEmail(ctx, req, res, protocol, mode);
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
  if (incident) return handleIncident(ctx, res, method, incident[1]!);
  return sendError(res, 404);
}
