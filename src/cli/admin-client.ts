// The admin commands' way to the running relay: its admin API address and token from the same configuration as `serve` (or --server/--token-file), one clear error when it cannot be reached.
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import type { FrozenConfig } from '../config/load.js';
import { DlpError } from '../errors.js';

export class CliError extends DlpError {
  readonly errorCode = 'DLP_ERR_CLI' as const;
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export interface AdminTarget {
  /** http://host:port, no trailing slash. */
  url: string;
  token: string | null;
  /** Where the address came from, for the "relay: ..." line every command prints. */
  from: string;
}

/** A wildcard listen address is reached on loopback. */
function connectHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '[::1]';
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/**
 * Address and token of the relay's admin API. The configuration is read only for what the options do
 * not give, so `reload --server ... --token-file ...` still reaches a relay whose new file is broken.
 */
export function adminTarget(
  o: { server?: string | undefined; tokenFile?: string | undefined },
  config: () => FrozenConfig,
  configFrom: () => string,
): AdminTarget {
  let token: string | null = null;
  if (!o.tokenFile) token = config().secrets.adminToken;
  else {
    try {
      token = readFileSync(o.tokenFile, 'utf8').trim();
    } catch (err) {
      throw new CliError(`--token-file ${o.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  if (o.server) {
    const url = /^https?:\/\//.test(o.server) ? o.server.replace(/\/+$/, '') : `http://${o.server}`;
    try {
      new URL(url);
    } catch {
      throw new CliError(`--server ${o.server}: expected host:port or http://host:port`, 2);
    }
    return { url, token, from: '--server' };
  }
  const cfg = config();
  if (!cfg.admin.enabled)
    throw new CliError(`the admin API is disabled in ${configFrom()} (admin.enabled: false); use --server, or --offline for direct store access`);
  return { url: `http://${connectHost(cfg.admin.host)}:${cfg.admin.port}`, token, from: configFrom() };
}

export interface AdminReply {
  status: number;
  body: unknown;
}

export class AdminClient {
  constructor(
    readonly target: AdminTarget,
    private readonly timeoutMs = 130_000,
  ) {}

  private async fetch(method: string, path: string, body?: unknown): Promise<Response> {
    if (!this.target.token)
      throw new CliError(`no admin token for the relay at ${this.target.url}: set DLP_RELAY_ADMIN_TOKEN (or _FILE, admin.tokenFile) or pass --token-file`);
    let res: Response;
    try {
      res = await fetch(`${this.target.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.target.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (err as Error).message;
      throw new CliError(
        `relay at ${this.target.url} not reachable: ${why} (is it running? --server HOST:PORT names another; --offline reads a store directly)`,
      );
    }
    if (res.status === 401) throw new CliError(`relay at ${this.target.url} refused the admin token (check DLP_RELAY_ADMIN_TOKEN or --token-file)`);
    return res;
  }

  /** JSON request; any status comes back (callers map 404/409/... to their outcomes), except 401 and 5xx without a known meaning. */
  async json(method: string, path: string, body?: unknown): Promise<AdminReply> {
    const res = await this.fetch(method, path, body);
    const text = await res.text();
    let parsed: unknown = null;
    try {
      parsed = text ? (JSON.parse(text) as unknown) : null;
    } catch {
      throw new CliError(`relay at ${this.target.url} answered ${path} with HTTP ${res.status} and no JSON (is that the admin listener?)`);
    }
    return { status: res.status, body: parsed };
  }

  /** A streamed body (EML download); null for 404. */
  async stream(path: string): Promise<Readable | null> {
    const res = await this.fetch('GET', path);
    if (res.status === 404) return null;
    if (!res.ok || !res.body) throw new CliError(`relay at ${this.target.url} answered ${path} with HTTP ${res.status}`);
    return Readable.fromWeb(res.body);
  }
}

/** The error text of an admin API answer. */
export function apiError(r: AdminReply): string {
  const b = r.body as { error?: unknown; detail?: unknown } | null;
  return `HTTP ${r.status}${b && typeof b.error === 'string' ? `: ${b.error}` : ''}${b && typeof b.detail === 'string' ? ` (${b.detail})` : ''}`;
}
