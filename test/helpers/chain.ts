// Test chain: a sink SMTP server (the next hop, on the test SMTP peer), the UCWI simulator over HTTP, and the relay between them, all on 127.0.0.1 port 0.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, readdirSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { loadConfig, deepMerge } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { startRelay, type RunningRelay, type StartOptions } from '../../src/app.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { SmtpSession } from './raw-smtp.js';
import { later, mtaReplies, mtaReply, startSmtpPeer, type Decision, type PathArgs, type PeerMessage } from './smtp-peer.js';

export interface SinkMessage {
  from: string;
  mailArgs: Record<string, unknown>;
  to: Array<{ address: string; args: Record<string, unknown>; dsn?: unknown }>;
  envelope: Record<string, unknown>;
  sha256: string;
  size: number;
  /** Kept for messages up to 2 MiB; bigger ones only have their hash. */
  data: Buffer | null;
  /** The first 64 KiB, whatever the size (our prepended headers, for big messages too). */
  head: Buffer;
}

export interface SinkBehaviour {
  /** Reply for a recipient: null accepts, otherwise [code, text] refuses it. */
  rcpt?: (address: string) => [number, string] | null;
  /** Reply after DATA: null accepts, otherwise [code, text]. */
  data?: (msg: SinkMessage) => [number, string] | null;
  /** Delay before answering the final dot. */
  dataDelayMs?: number;
}

export interface Sink {
  port: number;
  messages: SinkMessage[];
  connections: number;
  behaviour: SinkBehaviour;
  close(): Promise<void>;
}

/** smtp-server decoded xtext (RFC 3461 "+XX") in every parameter value; the sink's records keep doing so. */
function decodeArgs(args: PathArgs): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args))
    out[k] = typeof v === 'string' ? v.replace(/\+([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))) : v;
  return out;
}

function sinkMessage(m: PeerMessage): SinkMessage {
  const to = m.to.map((r) => {
    const args = decodeArgs(r.args);
    const notify = typeof args['NOTIFY'] === 'string' ? { notify: args['NOTIFY'].toUpperCase().split(',') } : {};
    const orcpt = typeof args['ORCPT'] === 'string' ? { orcpt: args['ORCPT'] } : {};
    return { address: r.address, args, ...(args['NOTIFY'] || args['ORCPT'] ? { dsn: { ...notify, ...orcpt } } : {}) };
  });
  const mailArgs = decodeArgs(m.mailArgs);
  return {
    from: m.from,
    mailArgs,
    to,
    envelope: { mailFrom: { address: m.from, args: mailArgs }, rcptTo: to },
    sha256: m.sha256,
    size: m.size,
    data: m.size <= 2 * 1024 * 1024 ? m.data : null,
    head: m.data.subarray(0, 64 * 1024),
  };
}

/**
 * The next hop of the chain: the SMTP peer speaking smtp-server's replies (the sink ran on that package before,
 * and tests assert its exact lines: "250 2.1.5 Accepted", "250 2.6.0 Ok: queued as SINK<n>", a refusal's text after
 * the enhanced code smtp-server chose for its basic code).
 */
export async function startSink(behaviour: SinkBehaviour = {}): Promise<Sink> {
  const refusal = (r: [number, string]): string => mtaReply(r[0], r[1], { enhanced: true });
  const records = new WeakMap<PeerMessage, SinkMessage>();
  const record = (m: PeerMessage): SinkMessage => records.get(m) ?? records.set(m, sinkMessage(m)).get(m)!;
  const peer = await startSmtpPeer({
    name: hostname(),
    replies: mtaReplies({ enhanced: true, queued: (n) => `Ok: queued as SINK${n}` }),
    script: {
      rcpt: (r) => {
        const refused = sink.behaviour.rcpt?.(r.address);
        return refused ? refusal(refused) : undefined;
      },
      message: (m) => {
        const answer = (): Decision => {
          const refused = sink.behaviour.data?.(record(m));
          return refused ? refusal(refused) : undefined;
        };
        return sink.behaviour.dataDelayMs ? later(sink.behaviour.dataDelayMs).then(answer) : answer();
      },
      accepted: (m) => void sink.messages.push(record(m)),
    },
  });
  const sink: Sink = {
    port: peer.port,
    messages: [],
    get connections() {
      return peer.connections;
    },
    behaviour,
    close: () => peer.close(),
  };
  return sink;
}

export const SIM_KEYS = { accessKey: 'test-access-key', secretKey: 'test-secret-key-0123456789' };

export interface Chain {
  relay: RunningRelay;
  sim: UcwiSim;
  sink: Sink;
  port: number;
  dirs: { root: string; spool: string; quarantine: string; outbox: string };
  logs: Array<Record<string, unknown>>;
  rawLogs: () => string;
  /** Summary lines (event=message) logged so far. */
  summaries: () => Array<Record<string, unknown>>;
  /** Reloads the relay with these config overrides on top of the chain's own (as a SIGHUP after a file edit would). */
  reloadWith(config: Record<string, unknown>): ReturnType<RunningRelay['reload']>;
  close(): Promise<void>;
}

export interface ChainOptions {
  /** Config overrides (deep-merged over the test defaults). */
  config?: Record<string, unknown>;
  sink?: SinkBehaviour;
  /** No next hop: deliver into the outbox directory. */
  noNextHop?: boolean;
  start?: StartOptions;
  sim?: UcwiSim;
}

export async function startChain(o: ChainOptions = {}): Promise<Chain> {
  const root = mkdtempSync(join(tmpdir(), 'dlp-chain-'));
  const dirs = { root, spool: join(root, 'spool'), quarantine: join(root, 'quarantine'), outbox: join(root, 'outbox') };
  const sim = o.sim ?? (await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' }));
  const sink = await startSink(o.sink);
  const base: Record<string, unknown> = {
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    spool: { dir: dirs.spool },
    quarantine: { dir: dirs.quarantine },
    outbox: { dir: dirs.outbox },
    ucwi: { url: sim.url, timeouts: { connectMs: 2000, headersMs: 5000, bodyMs: 5000, deadlineMs: 5000 } },
    nextHop: o.noNextHop
      ? { host: null }
      : { host: '127.0.0.1', port: sink.port, starttls: 'off', timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 } },
    limits: { dataDeadlineMs: 15000 },
    log: { level: 'info' },
    secrets: { ucwiAccessKey: SIM_KEYS.accessKey, ucwiSecretKey: SIM_KEYS.secretKey },
  };
  const cfg = loadConfig({ file: '/dev/null', env: {}, overrides: deepMerge(base, o.config ?? {}) });
  // What the next reload reads (reloadWith): the same base and overrides plus the test's changes.
  let nextCfg = cfg;
  const logStream = new PassThrough();
  const logs: Array<Record<string, unknown>> = [];
  let raw = '';
  let partial = '';
  logStream.on('data', (c: Buffer) => {
    raw += c.toString();
    partial += c.toString();
    let nl;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  const logger = createLogger({ level: cfg.log.level, destination: logStream });
  const relay = await startRelay(cfg, logger, { reloadConfig: () => nextCfg, ...o.start });
  return {
    relay,
    sim,
    sink,
    port: relay.smtp.port,
    dirs,
    logs,
    rawLogs: () => raw,
    summaries: () => logs.filter((l) => l['event'] === 'message'),
    reloadWith(config) {
      nextCfg = loadConfig({ file: '/dev/null', env: {}, overrides: deepMerge(deepMerge(base, o.config ?? {}), config) });
      return relay.reload('test');
    },
    async close() {
      await relay.stop(1000);
      await sink.close();
      if (!o.sim) await sim.close();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/**
 * Spool files of messages still in flight: must be none once transactions are over. The others are
 * recycled files idle in the ingress's SpoolFilePool (not emptied: readers stop at each message's
 * size), bounded by its size and unlinked when the relay stops.
 */
export function spoolFiles(chain: Chain): string[] {
  const idle = new Set(chain.relay.ingress.spoolFiles.idlePaths.map((p) => basename(p)));
  try {
    return readdirSync(chain.dirs.spool).filter((f) => !idle.has(f));
  } catch {
    return [];
  }
}

/** Every file in the spool directory, empty recycled ones included. */
export function allSpoolFiles(chain: Chain): string[] {
  try {
    return readdirSync(chain.dirs.spool);
  } catch {
    return [];
  }
}

/** Waits until `check` passes or the bound runs out; for effects that follow a reply asynchronously (spool cleanup). */
export async function eventually(check: () => boolean, boundMs = 5000): Promise<void> {
  const until = Date.now() + boundMs;
  while (!check()) {
    if (Date.now() > until) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function sha256(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A small CRLF message with the given body. */
export function message(body: string, extraHeaders = ''): string {
  return (
    `From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: test\r\nMessage-ID: <${Math.random().toString(36).slice(2)}@example.test>\r\n` +
    `${extraHeaders}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${body}\r\n`
  );
}

/** One transaction over a raw session; returns every reply so tests can assert exact lines. */
export async function sendMessage(
  port: number,
  body: string | Buffer,
  opts: { from?: string; to?: string[]; mailArgs?: string; rcptArgs?: string } = {},
): Promise<{ mail: string; rcpts: string[]; data: string }> {
  const s = await SmtpSession.connect(port);
  try {
    await s.cmd('EHLO client.example.test');
    const mail = await s.cmd(`MAIL FROM:<${opts.from ?? 'alice@example.test'}>${opts.mailArgs ? ' ' + opts.mailArgs : ''}`);
    const rcpts: string[] = [];
    for (const r of opts.to ?? ['bob@example.test']) rcpts.push(await s.cmd(`RCPT TO:<${r}>${opts.rcptArgs ? ' ' + opts.rcptArgs : ''}`));
    const data = await s.data(body, { dotStuff: true });
    await s.quit();
    return { mail, rcpts, data };
  } finally {
    s.close();
  }
}

const TRACE_DAY = '(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000';
const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export interface TraceExpect {
  /** The name the client gave in EHLO (sendMessage says client.example.test), or 'unknown'. */
  helo?: string;
  ip?: string;
  /** smtp.hostname of the relay. */
  host?: string;
  /** RFC 3848 "with" value: ESMTP, ESMTPS, ESMTPA, ESMTPSA. */
  with?: string;
}

/**
 * Regex source for our Received: trace line (semantics §2), anchored at the start of a copy. Only the date
 * is left open; helo, ip, host, protocol and queryId must be exactly the expected ones.
 */
export function traceLinePattern(queryId: string, o: TraceExpect = {}): string {
  return (
    `^Received: from ${reEscape(o.helo ?? 'client.example.test')} \\(\\[${reEscape(o.ip ?? '127.0.0.1')}\\]\\)\\r\\n` +
    `\\tby ${reEscape(o.host ?? 'dlp-relay.localdomain')} \\(dlp-relay\\) with ${o.with ?? 'ESMTP'} id ${reEscape(queryId)};\\r\\n\\t${TRACE_DAY}\\r\\n`
  );
}

/**
 * The leading Received: trace line of a relayed or quarantined copy, exactly as stored, so byte-exact checks
 * can rebuild the whole prefix. Throws when the copy does not start with the expected line.
 */
export function traceLine(data: Buffer | string, queryId: string, o: TraceExpect = {}): string {
  const text = typeof data === 'string' ? data : data.toString('latin1');
  const m = new RegExp(traceLinePattern(queryId, o)).exec(text);
  if (!m) throw new Error(`copy does not start with our Received: line for ${queryId}: ${JSON.stringify(text.slice(0, 200))}`);
  return m[0];
}

/** The queryId the relay stamped on a relayed copy (its X-DLP-Query-ID header); throws when there is none. */
export function queryIdOf(data: Buffer | string): string {
  const text = typeof data === 'string' ? data : data.toString('latin1');
  const head = text.slice(0, Math.max(0, text.indexOf('\r\n\r\n')) || text.length);
  const m = /(?:^|\r\n)X-DLP-Query-ID: ([0-9a-f-]{36})\r\n/.exec(head + '\r\n');
  if (!m) throw new Error(`no X-DLP-Query-ID header in ${JSON.stringify(text.slice(0, 300))}`);
  return m[1]!;
}
