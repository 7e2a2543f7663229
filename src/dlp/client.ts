// UCWI client: streams the spooled EML to the sync email endpoint as multipart/form-data and returns a verdict or a classified error; never throws for DLP failures.
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { Pool, errors as undiciErrors } from 'undici';
import type { Logger } from 'pino';
import { ucwiAuthHeaders } from './auth.js';
import { parseUcwiResponse, type DlpParsed, type DlpErrorClass } from './parse.js';
import { Semaphore } from '../util/semaphore.js';
import { deadline } from '../util/deadline.js';
import { OutageLog, type OutageState } from '../observability/outage.js';
import { EndpointSet, type BackoffOptions, type Endpoint, type EndpointStatus } from '../egress/endpoints.js';
import { randomHex } from '../util/random-id.js';

/** Failures that mean UCWI (or our credentials or clock) is broken, as opposed to one odd message. */
const OUTAGE_CLASSES: ReadonlySet<DlpErrorClass> = new Set(['auth', 'server_error', 'timeout', 'unreachable', 'bad_response']);
/** UCWI refuses signatures whose timestamp is more than 5 minutes off its clock. */
const MAX_CLOCK_SKEW_S = 300;

/** One UCWI server of several: lowest priority first, equal ones share the load. */
export interface UcwiEndpoint {
  url: string;
  priority: number;
}

export interface UcwiClientOptions {
  /** One server's base URL, or several with priorities (failover: see UcwiClient.call). */
  baseUrl: string | readonly UcwiEndpoint[];
  /** Down period of a failing server before it is probed again. */
  backoff?: BackoffOptions;
  protocol: string;
  accessKey: string;
  secretKey: string;
  tls: { rejectUnauthorized: boolean; caFile: string | null };
  timeouts: { connectMs: number; headersMs: number; bodyMs: number; deadlineMs: number };
  maxConcurrent: number;
  /** Bound on waiting for a free slot (default: the whole deadline). */
  queueTimeoutMs?: number;
  keepAliveMs: number;
  /** UCWI answers are small JSON; anything larger is not what we asked for. */
  maxResponseBytes?: number;
}

export interface InspectRequest {
  queryId: string;
  sender: string;
  recipients: string[];
  /** MD5 (hex) of exactly the bytes openMessage() yields; leave it out when unknown ('' counts as unknown): it is never sent empty. */
  md5?: string;
  /** Byte count of what openMessage() yields (it becomes the Content-Length). */
  size: number;
  openMessage: () => Readable;
  /** The same bytes in one buffer when the message is small (see SpooledMessage.readSmall); null or absent: stream them. */
  readSmall?: () => Buffer | null;
}

export type InspectResult = DlpParsed & { elapsedMs: number };

/** Metrics hooks; the relay passes prom-client observers, tests pass nothing. */
export interface UcwiObserver {
  onStart?(): void;
  onEnd?(r: InspectResult): void;
}

/** One UCWI server: its own connection pool, so a dead server's sockets never block a live one's. */
interface Server {
  pool: Pool;
  basePath: string;
  path: string;
}

/** Failures where no answer came back: the scan may be repeated on another server (see call()). */
const NO_ANSWER_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);

export class UcwiClient {
  private readonly servers: EndpointSet<Server>;
  private readonly slots: Semaphore;
  private readonly outage: OutageLog;

  constructor(
    private readonly opts: UcwiClientOptions,
    private readonly logger: Logger,
    private readonly observer: UcwiObserver = {},
  ) {
    this.slots = new Semaphore(opts.maxConcurrent);
    this.outage = new OutageLog(logger, 'UCWI');
    const list = typeof opts.baseUrl === 'string' ? [{ url: opts.baseUrl, priority: 10 }] : opts.baseUrl;
    const endpoints: Array<Endpoint<Server>> = list.map((e) => ({ name: new URL(e.url).origin, priority: e.priority, target: this.server(e.url) }));
    this.servers = new EndpointSet('UCWI', endpoints, (server, signal) => this.probeOne(server, signal), logger, opts.backoff);
  }

  private server(baseUrl: string): Server {
    const opts = this.opts;
    const u = new URL(baseUrl);
    const basePath = u.pathname.replace(/\/+$/, '');
    const path = `${basePath}/skg/v1/dlp/channel/email/${encodeURIComponent(opts.protocol)}/sync`;
    const pool = new Pool(u.origin, {
      connections: opts.maxConcurrent,
      connectTimeout: opts.timeouts.connectMs,
      headersTimeout: opts.timeouts.headersMs,
      bodyTimeout: opts.timeouts.bodyMs,
      keepAliveTimeout: opts.keepAliveMs,
      connect: {
        rejectUnauthorized: opts.tls.rejectUnauthorized,
        ...(opts.tls.caFile ? { ca: readFileSync(opts.tls.caFile) } : {}),
      },
    });
    return { pool, basePath, path };
  }

  /** Each server's state, for /metrics and /readyz. */
  statuses(): EndpointStatus[] {
    return this.servers.statuses();
  }

  get inFlight(): number {
    return this.slots.inUse;
  }

  /** Messages waiting for a UCWI slot: when this reaches maxConcurrent, UCWI is the bottleneck. */
  get waiting(): number {
    return this.slots.waiting;
  }

  get saturated(): boolean {
    return this.slots.waiting >= this.opts.maxConcurrent;
  }

  /** Asks UCWI for a verdict. Resolves with either a verdict or a classified failure, within the deadline. */
  async inspect(req: InspectRequest, outer?: AbortSignal): Promise<InspectResult> {
    const started = performance.now();
    const limit = deadline(this.opts.timeouts.deadlineMs, outer);
    const signal = limit.signal;
    this.observer.onStart?.();
    let result: InspectResult;
    try {
      const parsed = await this.call(req, signal);
      result = { ...parsed, elapsedMs: Math.round(performance.now() - started) };
    } catch (err) {
      result = { ...this.classify(err, signal), elapsedMs: Math.round(performance.now() - started) };
    } finally {
      limit.dispose();
    }
    if (result.ok) this.outage.success();
    else if (OUTAGE_CLASSES.has(result.errorClass)) this.outage.failure(result.errorClass, result.detail);
    this.observer.onEnd?.(result);
    return result;
  }

  private async call(req: InspectRequest, signal: AbortSignal): Promise<DlpParsed> {
    // A free slot is taken at once; only a real wait pays for its own bound. The queue wait has its own bound,
    // so an overload shows up as "saturated", not as a timeout of the call.
    let release = this.slots.tryAcquire();
    if (!release) {
      const queue = deadline(this.opts.queueTimeoutMs || null, signal);
      try {
        release = await this.slots.acquire(queue.signal);
      } catch {
        return { ok: false, errorClass: 'saturated', detail: `no free UCWI slot within the deadline (${this.opts.maxConcurrent} in flight)` };
      } finally {
        queue.dispose();
      }
    }
    try {
      return await this.callServers(req, signal);
    } finally {
      release();
    }
  }

  /**
   * The failover rule for scans: the next server is asked only when this one gave NO answer: connection
   * refused/reset/unreachable, connect timeout, or no response headers within timeouts.headersMs after the
   * request was sent. A scan changes nothing by itself (the relay acts on the verdict), so the only possible
   * duplicate is a second incident record at the DLP side, under the same queryID. Once a response
   * started (any HTTP status, a body timeout, a malformed answer) it is final: retrying would only hide a
   * broken server. All attempts share the message's one deadline (timeouts.deadlineMs), so keep
   * headersMs well below it when listing several servers.
   */
  private async callServers(req: InspectRequest, signal: AbortSignal): Promise<DlpParsed> {
    const order = this.servers.order();
    for (const [i, e] of order.entries()) {
      try {
        const parsed = await this.callOne(e.target, req, signal);
        if (parsed.ok || parsed.errorClass !== 'server_error') this.servers.succeeded(e);
        return parsed;
      } catch (err) {
        if (signal.aborted || !noAnswer(err)) throw err;
        this.servers.failed(e, describeError(err));
        if (i === order.length - 1) throw err;
        this.servers.failedOver(e);
        this.logger.info(
          { queryId: req.queryId, endpoint: e.name, next: order[i + 1]!.name, err: describeError(err) },
          'UCWI server gave no answer, asking the next one',
        );
      }
    }
    throw new Error('no UCWI server to ask');
  }

  private async callOne(server: Server, req: InspectRequest, signal: AbortSignal): Promise<DlpParsed> {
    {
      const boundary = `----dlp-relay-${randomHex(12)}`;
      // An md5 that does not describe the uploaded bytes would be worse than none, so an unknown one is left out, never sent as "".
      const metadata = JSON.stringify({ sender: req.sender, recipients: req.recipients, queryID: req.queryId, ...(req.md5 ? { md5: req.md5 } : {}) });
      const head = Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n${metadata}\r\n` +
          `--${boundary}\r\nContent-Disposition: form-data; name="request"; filename="${req.queryId}.eml"\r\n` +
          `Content-Type: message/rfc822\r\n\r\n`,
      );
      const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
      // A message that fits in one read chunk goes as one buffer: no stream, generator and async iterator per
      // request (about 5 % of the relay's CPU per message in the profile). Bigger ones stream from the spool.
      const read = req.readSmall?.() ?? null;
      const small = read && read.length === req.size ? read : null;
      const res = await server.pool.request({
        path: server.path,
        method: 'POST',
        headers: {
          ...ucwiAuthHeaders(this.opts.accessKey, this.opts.secretKey),
          'content-type': `multipart/form-data; boundary=${boundary}`,
          'content-length': String(head.length + req.size + tail.length),
          accept: 'application/json',
        },
        body: small ? Buffer.concat([head, small, tail]) : Readable.from(multipartBody(head, req.openMessage(), tail), { objectMode: false }),
        signal,
      });
      const max = this.opts.maxResponseBytes ?? 1024 * 1024;
      const chunks: Buffer[] = [];
      let total = 0;
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        if (total > max) {
          res.body.destroy();
          return { ok: false, errorClass: 'bad_response', httpStatus: res.statusCode, detail: `response larger than ${max} bytes` };
        }
        chunks.push(chunk as Buffer);
      }
      return parseUcwiResponse(res.statusCode, Buffer.concat(chunks).toString('utf8'));
    }
  }

  private classify(err: unknown, signal: AbortSignal): { ok: false; errorClass: DlpErrorClass; detail: string } {
    const e = err as NodeJS.ErrnoException & { code?: string };
    if (
      signal.aborted ||
      e instanceof undiciErrors.HeadersTimeoutError ||
      e instanceof undiciErrors.BodyTimeoutError ||
      e instanceof undiciErrors.ConnectTimeoutError ||
      e?.name === 'TimeoutError' ||
      e?.name === 'AbortError'
    ) {
      return { ok: false, errorClass: 'timeout', detail: e?.message ?? 'timeout' };
    }
    if (e instanceof undiciErrors.ResponseContentLengthMismatchError) {
      return { ok: false, errorClass: 'bad_response', detail: 'truncated response' };
    }
    const code = e?.code ?? '';
    if (
      ['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'].includes(code) ||
      /CERT|SSL|TLS/i.test(code)
    ) {
      return { ok: false, errorClass: 'unreachable', detail: `${code}: ${e.message}` };
    }
    if (code === 'ENOENT' || code === 'EACCES') {
      // Our own spool file vanished or is unreadable: a local fault, treated like an unavailable scan.
      this.logger.error({ err }, 'cannot read spooled message for UCWI');
      return { ok: false, errorClass: 'unreachable', detail: `spool read failed: ${code}` };
    }
    return { ok: false, errorClass: 'unreachable', detail: `${code || e?.name || 'error'}: ${e?.message ?? String(err)}` };
  }

  /** The outage in progress (failing since, how often, last class), or null while UCWI answers. */
  get outageState(): OutageState | null {
    return this.outage.current;
  }

  /**
   * The /readyz probe: a signed GET of the channel list. Reachable is not enough: UCWI refusing our keys
   * (401/403) or our clock, or answering 5xx, fails every message with 451, so it fails readiness
   * with that reason. The answer's Date header shows a skewed clock before UCWI starts refusing.
   */
  probe(signal?: AbortSignal): Promise<string> {
    return this.servers.probeAll(signal ?? AbortSignal.timeout(this.opts.timeouts.connectMs));
  }

  private async probeOne(server: Server, signal: AbortSignal): Promise<void> {
    const res = await server.pool.request({
      path: `${server.basePath}/skg/v1/dlp/channel`,
      method: 'GET',
      headers: ucwiAuthHeaders(this.opts.accessKey, this.opts.secretKey),
      signal,
    });
    await res.body.dump();
    const date = Date.parse(String(res.headers['date'] ?? ''));
    const skewS = Number.isNaN(date) ? 0 : Math.round((Date.now() - date) / 1000);
    const clock = Math.abs(skewS) > MAX_CLOCK_SKEW_S ? ` our clock is ${skewS} s off UCWI's (at most ${MAX_CLOCK_SKEW_S} s allowed)` : '';
    if (res.statusCode === 401 || res.statusCode === 403)
      throw new Error(
        `UCWI refuses our credentials (HTTP ${res.statusCode}): check the access/secret keys${clock ? ` and the clock;${clock}` : ' and that our clock is within 5 minutes of UCWI'}`,
      );
    if (res.statusCode >= 500) throw new Error(`UCWI answers HTTP ${res.statusCode}`);
    if (clock) throw new Error(`UCWI will refuse our signatures:${clock}`);
  }

  async close(): Promise<void> {
    this.servers.close();
    await Promise.all(this.servers.endpoints.map((e) => e.target.pool.close()));
  }
}

/** True when the request got no answer at all (see callServers for why only then another server is asked). */
function noAnswer(err: unknown): boolean {
  if (err instanceof undiciErrors.ConnectTimeoutError || err instanceof undiciErrors.HeadersTimeoutError) return true;
  const code = (err as NodeJS.ErrnoException | null)?.code ?? '';
  return NO_ANSWER_CODES.has(code);
}

function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null;
  return `${e?.code ?? e?.name ?? 'error'}: ${e?.message ?? String(err)}`;
}

/** Socket writes of at least this much (except the last): a small message goes out as one write. */
const UPLOAD_CHUNK = 64 * 1024;

async function* multipartBody(head: Buffer, message: Readable, tail: Buffer): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [head];
  let pendingBytes = head.length;
  try {
    for await (const chunk of message) {
      pending.push(chunk as Buffer);
      pendingBytes += (chunk as Buffer).length;
      if (pendingBytes >= UPLOAD_CHUNK) {
        yield Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
      }
    }
  } finally {
    message.destroy();
  }
  pending.push(tail);
  yield Buffer.concat(pending, pendingBytes + tail.length);
}
