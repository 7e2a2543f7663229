// The admin HTTP listener: a tiny router (":param" segments, query strings), bearer-token auth compared in constant time, JSON errors, bounded bodies.
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { ConnectionLimiter } from './limits.js';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from '../observability/logger.js';

export interface AdminRequest {
  method: string;
  /** Decoded path as matched (no query string). */
  path: string;
  /** Decoded ":name" segments. */
  params: Record<string, string>;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  remoteAddress: string;
  /**
   * First X-Forwarded-For entry, reduced to address characters, or null. Informational only (a client
   * can send anything): recorded next to the real peer address, never used for decisions.
   */
  forwardedFor: string | null;
  raw: IncomingMessage;
  /** Reads the body as JSON (at most maxBodyBytes); undefined for an empty body. Throws HttpError 400/413/415. */
  json(): Promise<unknown>;
  /** Aborted when the client goes away, so long operations can stop. */
  signal: AbortSignal;
}

/** What a handler returns; a handler may also write `res` itself and return nothing. */
export interface AdminResponse {
  status: number;
  json?: unknown;
  text?: string;
  stream?: Readable;
  headers?: Record<string, string>;
}

export type RouteHandler = (req: AdminRequest, res: ServerResponse) => Promise<AdminResponse | void> | AdminResponse | void;

/** Thrown by handlers for an answer other than 200; `body` is merged into the JSON error object. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly body: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export interface AdminServerOptions {
  /** Default 127.0.0.1: the admin API is loopback-only unless deliberately exposed (put TLS in front then). */
  host?: string;
  /** 0 picks a free port (tests). */
  port?: number;
  /** Bearer token; required and non-empty: there is no unauthenticated admin API. */
  token: string;
  logger: Logger;
  /** Largest accepted request body (default 64 KiB); admin requests are small JSON. */
  maxBodyBytes?: number;
  /** Time allowed to receive a whole request (default 15 s). */
  requestTimeoutMs?: number;
  /** Time allowed to receive the request head, counted from the connection or the previous response (default 5 s). */
  headersTimeoutMs?: number;
  /** How long an idle keep-alive connection stays open (default 2 s). */
  keepAliveTimeoutMs?: number;
  /** Simultaneous connections (default 128): the admin API is for a few operators and tools. */
  maxConnections?: number;
  /** Simultaneous connections from one address (default 32). */
  maxConnectionsPerAddress?: number;
}

export interface AdminServer {
  addRoute(method: string, pathPattern: string, handler: RouteHandler, opts: { auth: boolean }): void;
  listen(): Promise<{ url: string; port: number }>;
  close(): Promise<void>;
  readonly server: Server;
}

interface Route {
  method: string;
  segments: Array<{ literal: string } | { param: string }>;
  literals: number;
  handler: RouteHandler;
  auth: boolean;
  pattern: string;
}

const COMMON_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
};

function splitPath(p: string): string[] | null {
  const trimmed = p.length > 1 ? p.replace(/\/+$/, '') : p;
  const parts = trimmed.split('/').slice(1);
  try {
    return parts.map((s) => decodeURIComponent(s));
  } catch {
    return null; // malformed percent-encoding: matches nothing
  }
}

function compile(pattern: string): Route['segments'] {
  if (!pattern.startsWith('/')) throw new Error(`route pattern must start with /: ${pattern}`);
  const parts = pattern.length > 1 ? pattern.replace(/\/+$/, '').split('/').slice(1) : [''];
  return parts.map((s) => (s.startsWith(':') ? { param: s.slice(1) } : { literal: s }));
}

function match(route: Route, parts: string[]): Record<string, string> | null {
  if (route.segments.length !== parts.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < parts.length; i++) {
    const seg = route.segments[i]!;
    const part = parts[i]!;
    if ('literal' in seg) {
      if (seg.literal !== part) return null;
    } else {
      if (part === '') return null;
      params[seg.param] = part;
    }
  }
  return params;
}

function forwardedFor(h: string | string[] | undefined): string | null {
  const first = (Array.isArray(h) ? h[0] : h)?.split(',')[0]?.trim() ?? '';
  const clean = first.replace(/[^0-9A-Za-z:.[\]-]/g, '').slice(0, 64);
  return clean || null;
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/**
 * A request body of at most `max` bytes; past that, HttpError 413 with `tooLarge`. Event-based rather than
 * for-await: leaving a for-await early destroys the socket, and the client would see a reset instead of our
 * 413. Past the limit the rest is discarded (bounded by requestTimeout).
 */
export async function readBody(req: IncomingMessage, max: number, tooLarge: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > max) {
        req.off('data', onData);
        req.resume();
        reject(new HttpError(413, tooLarge));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve());
    req.once('error', reject);
  });
  return Buffer.concat(chunks, size);
}

export function createAdminServer(opts: AdminServerOptions): AdminServer {
  if (!opts.token) throw new Error('the admin API needs a token');
  const logger = opts.logger;
  const maxBody = opts.maxBodyBytes ?? 64 * 1024;
  // Compare digests: equal length whatever the guess, so neither content nor length leaks through timing.
  const tokenDigest = digest(opts.token);
  const routes: Route[] = [];

  const authorized = (req: IncomingMessage): boolean => {
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(h) : null;
    const given = digest(m?.[1] ?? '');
    // Always run the comparison, present or not, to keep timing uniform.
    return timingSafeEqual(given, tokenDigest) && m !== null;
  };

  const send = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, {
      ...COMMON_HEADERS,
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(Buffer.byteLength(text)),
      ...headers,
    });
    res.end(text);
  };

  const unauthorized = (res: ServerResponse): void =>
    // No detail on purpose: missing, malformed and wrong tokens look the same.
    send(res, 401, { error: 'unauthorized' }, { 'www-authenticate': 'Bearer realm="dlp-relay"' });

  const readJson = async (req: IncomingMessage): Promise<unknown> => {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (Number.isFinite(declared) && declared > maxBody) throw new HttpError(413, 'request body too large');
    const ct = req.headers['content-type'];
    const body = await readBody(req, maxBody, 'request body too large');
    if (body.length === 0) return undefined;
    if (ct !== undefined && !/^application\/json\s*(;|$)/i.test(ct)) throw new HttpError(415, 'content-type must be application/json');
    try {
      return JSON.parse(body.toString('utf8')) as unknown;
    } catch {
      throw new HttpError(400, 'invalid JSON body');
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = Date.now();
    const method = (req.method ?? 'GET').toUpperCase();
    let url: URL;
    try {
      // The base is a placeholder: only path and query are used, and URL() resolves "." and ".." segments.
      url = new URL(req.url ?? '/', 'http://admin.invalid');
    } catch {
      send(res, 400, { error: 'bad request' });
      return;
    }
    const parts = splitPath(url.pathname);
    let best: { route: Route; params: Record<string, string> } | null = null;
    const allowed = new Set<string>();
    let pathHasPublicRoute = false;
    if (parts) {
      for (const route of routes) {
        const params = match(route, parts);
        if (!params) continue;
        // Among routes matching this path, the one with most literal segments wins ("/audit" beats "/:id").
        if (route.method === method || (method === 'HEAD' && route.method === 'GET')) {
          if (!best || route.literals > best.route.literals) best = { route, params };
        } else {
          allowed.add(route.method);
          if (!route.auth) pathHasPublicRoute = true;
        }
      }
    }
    const isAuthed = authorized(req);
    const remoteAddress = req.socket.remoteAddress ?? 'unknown';
    res.on('finish', () => {
      logger.info({ method, route: best?.route.pattern ?? null, status: res.statusCode, remote: remoteAddress, ms: Date.now() - started }, 'admin request');
    });
    if (!best) {
      // Unauthenticated callers learn nothing about which paths exist, except public ones.
      if (!isAuthed && !pathHasPublicRoute) return unauthorized(res);
      if (allowed.size) return send(res, 405, { error: 'method not allowed' }, { allow: [...allowed].join(', ') });
      return send(res, 404, { error: 'not found' });
    }
    if (best.route.auth && !isAuthed) return unauthorized(res);

    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort(new Error('client went away'));
    });
    const areq: AdminRequest = {
      method,
      path: url.pathname,
      params: best.params,
      query: url.searchParams,
      headers: req.headers,
      remoteAddress,
      forwardedFor: forwardedFor(req.headers['x-forwarded-for']),
      raw: req,
      json: () => readJson(req),
      signal: abort.signal,
    };
    try {
      const out = await best.route.handler(areq, res);
      if (!out) {
        if (!res.headersSent) send(res, 204, {});
        return;
      }
      if (out.stream) {
        res.writeHead(out.status, { ...COMMON_HEADERS, ...out.headers });
        try {
          await pipeline(out.stream, res);
        } catch (err) {
          // Headers are gone: the only honest signal left is a broken connection (no truncated 200 that looks complete).
          logger.warn({ route: best.route.pattern, err: err instanceof Error ? err.message : String(err) }, 'admin response stream failed');
          res.destroy();
        }
        return;
      }
      if (out.text !== undefined) {
        res.writeHead(out.status, {
          ...COMMON_HEADERS,
          'content-type': 'text/plain; charset=utf-8',
          'content-length': String(Buffer.byteLength(out.text)),
          ...out.headers,
        });
        res.end(method === 'HEAD' ? undefined : out.text);
        return;
      }
      send(res, out.status, out.json ?? {}, out.headers);
    } catch (err) {
      if (err instanceof HttpError) {
        send(res, err.status, { error: err.message, ...err.body }, err.status === 413 ? { connection: 'close' } : {});
        return;
      }
      logger.error({ route: best.route.pattern, err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, 'admin handler failed');
      send(res, 500, { error: 'internal error' });
    }
  };

  const requestTimeout = opts.requestTimeoutMs ?? 15_000;
  const headersTimeout = Math.min(requestTimeout, opts.headersTimeoutMs ?? 5_000);
  const server = createServer(
    {
      requestTimeout,
      headersTimeout,
      keepAliveTimeout: opts.keepAliveTimeoutMs ?? 2_000,
      // Node checks the two timeouts above only this often (default 30 s): idle connections would outlive them.
      connectionsCheckingInterval: 1_000,
      maxHeaderSize: 16 * 1024,
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        logger.error({ err: err instanceof Error ? err.message : String(err) }, 'admin request failed');
        if (!res.headersSent) send(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    },
  );
  // No server.maxConnections: at that cap Node drops every new connection, /healthz included, which is
  // how 64 idle connections starved the listener. The limiter makes room by closing the oldest idle one.
  const limiter = new ConnectionLimiter(
    { max: opts.maxConnections ?? 128, perAddress: opts.maxConnectionsPerAddress ?? 32, firstRequestMs: headersTimeout },
    logger,
  );
  server.on('connection', (sock: Socket) => limiter.admit(sock));
  server.on('request', (req: IncomingMessage, res: ServerResponse) => limiter.busy(req.socket, res));

  return {
    server,
    addRoute(method, pathPattern, handler, routeOpts) {
      const segments = compile(pathPattern);
      routes.push({
        method: method.toUpperCase(),
        segments,
        literals: segments.filter((s) => 'literal' in s).length,
        handler,
        auth: routeOpts.auth,
        pattern: pathPattern,
      });
    },
    listen() {
      return new Promise((resolve, reject) => {
        const onError = (err: Error) => reject(err);
        server.once('error', onError);
        server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
          server.off('error', onError);
          const addr = server.address() as AddressInfo;
          const host = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
          resolve({ url: `http://${host}:${addr.port}`, port: addr.port });
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        if (!server.listening) return resolve();
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
