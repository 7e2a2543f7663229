// `npm run bench`: dlp-relay against Haraka (2 worker processes each) and a direct smtp-source → smtp-sink ceiling on loopback, with new and reused connections; throughput, CPU, added latency, peak RSS, profile; writes bench/results/latest.json and BENCHMARKS.md.
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, copyFileSync, existsSync } from 'node:fs';
import { availableParallelism, cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cpuSeconds,
  freePort,
  loadAvg1,
  machineTicks,
  monotonicUs,
  pollRss,
  runCommand,
  startManaged,
  statusKb,
  stopAll,
  treeCpuSeconds,
  treeCpuSplit,
  treeOf,
  waitForPort,
  type Managed,
} from './lib/proc.js';
import { buildRelay, ensureHaraka, ensurePostfixTools, ensureScript, writeHarakaConfig, SMTP_SINK, SMTP_SOURCE } from './lib/setup.js';
import { SmtpSession, makeMessage, messageIdOf } from './lib/smtp-client.js';
import { writeBigMessage } from './lib/bigmessage.js';
import { stripRun } from './lib/strip.js';
import { summarizeProfiles } from './lib/cpuprofile.js';
import { analyse, cellOf, computeTargets, RELAY } from './lib/analysis.js';
import { scaleOutScenario } from './lib/scale-out.js';
import {
  CONN_MODES,
  median,
  percentiles,
  printTables,
  writeBenchmarksMd,
  type ConnMode,
  type LatencyResult,
  type Results,
  type RssResult,
  type ThroughputCell,
  type ThroughputRun,
} from './lib/report.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RESULTS_DIR = join(ROOT, 'bench', 'results');
const SCENARIOS = ['throughput', 'latency200', 'latency', 'rss', 'strip'] as const;
type Scenario = (typeof SCENARIOS)[number];
/** Optional scenario: never part of the default run, selected by --scale-out or named in --only. */
const SCALE_OUT = 'scale-out';

const { values: argv } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    reps: { type: 'string', default: '3' },
    sessions: { type: 'string', default: '20,100' },
    single: { type: 'boolean', default: false },
    'latency-messages': { type: 'string', default: '1000' },
    'big-mb': { type: 'string', default: '50' },
    only: { type: 'string' },
    profile: { type: 'boolean', default: false },
    'scale-out': { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
    'no-md': { type: 'boolean', default: false },
    'no-stub': { type: 'boolean', default: false },
    'md-only': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
  allowPositionals: false,
});

if (argv.help) {
  process.stdout.write(
    [
      'npm run bench [-- options]',
      '  --seconds N            target length of one measured throughput run (default 8)',
      '  --reps N               repetitions per throughput cell, median reported (default 3)',
      '  --sessions a,b         smtp-source session counts for the throughput matrix (default 20,100)',
      '  --single               also run single-process rows (relay without workers, Haraka nodes=1)',
      '  --latency-messages N   sequential messages for the latency measurement (default 1000)',
      '  --big-mb N             size of the big message for the RSS measurement (default 50)',
      `  --only a,b             run only some scenarios: ${SCENARIOS.join(', ')}`,
      '  --scale-out            also run one relay against three behind HAProxy (haproxy must be installed); --only scale-out runs only that',
      '  --profile              also run the 2-worker relay under --cpu-prof, new connection per message, and summarise it',
      '  --quick                smoke test: 3 s runs, 1 repetition, 300 latency messages',
      '  --no-md                do not rewrite BENCHMARKS.md',
      '  --no-stub              skip the diagnostic 2-worker rows with the no-scan UCWI stub',
      '  --md-only              only rewrite BENCHMARKS.md from bench/results/latest.json',
      '',
    ].join('\n'),
  );
  process.exit(0);
}

if (argv['md-only']) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const saved = JSON.parse(readFileSync(join(root, 'bench', 'results', 'latest.json'), 'utf8')) as Results;
  saved.targets = computeTargets(saved);
  saved.analysis = analyse(saved);
  writeBenchmarksMd(join(root, 'BENCHMARKS.md'), saved);
  process.stdout.write(printTables(saved) + '\n');
  process.exit(0);
}

const SECONDS = argv.quick ? 3 : Number(argv.seconds);
const REPS = argv.quick ? 1 : Math.max(1, Number(argv.reps));
const LAT_N = argv.quick ? 300 : Number(argv['latency-messages']);
const BIG_BYTES = Math.round(Number(argv['big-mb']) * 1_000_000);
/** Messages in the attachment-removal row: cheap (a few seconds), so it runs by default. */
const STRIP_N = argv.quick ? 10 : 40;
const ONLY_NAMES = (argv.only ? argv.only.split(',') : [...SCENARIOS]).map((s) => s.trim());
const RUN_SCALE_OUT = argv['scale-out'] || ONLY_NAMES.includes(SCALE_OUT);
const ONLY = new Set<Scenario>(ONLY_NAMES.filter((s) => s !== SCALE_OUT) as Scenario[]);
for (const s of ONLY) if (!SCENARIOS.includes(s)) throw new Error(`unknown scenario ${s}; known: ${[...SCENARIOS, SCALE_OUT].join(', ')}`);

const BODY = 10 * 1024;
const SESSIONS = argv.sessions.split(',').map((x) => Number(x.trim()));
if (!SESSIONS.length || SESSIONS.some((n) => !Number.isInteger(n) || n < 1 || n > 500))
  throw new Error(`--sessions: want a list of 1..500, got ${argv.sessions}`);
const DOMAIN = 'example.test';
const FROM = 'sender@bench.example.test';
const RCPT = `rcpt@${DOMAIN}`;
const ACCESS_KEY = 'bench-access-key';
const SECRET_KEY = randomBytes(16).toString('hex');

const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

// ---- processes ---------------------------------------------------------------------------------

let work = '';
let relayEntry: string[] = [];

/** The environment for our children: no inherited DLP_RELAY_* or NODE_OPTIONS. */
function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DLP_RELAY_') && k !== 'NODE_OPTIONS') env[k] = v;
  return { ...env, ...extra };
}

interface Sink {
  proc: Managed;
  port: number;
  /** Messages received so far (smtp-sink's own counter, flushed through a pty by `script`). */
  count(): number;
}

async function startSink(): Promise<Sink> {
  const port = await freePort();
  const cmd = `${SMTP_SINK} -c -m 1024 -u nobody 127.0.0.1:${port} 1000`;
  // smtp-sink buffers its counter when stdout is not a terminal; `script` gives it one.
  const proc = startManaged('smtp-sink', 'script', ['-qfc', cmd, '/dev/null'], { maxSeconds: 1800, cwd: work });
  await waitForPort(port, 10_000, proc);
  commands['sink'] = cmd;
  const count = () => {
    const all = [...proc.output().matchAll(/mesg=(\d+)/g)];
    return all.length ? Number(all[all.length - 1]![1]) : 0;
  };
  return { proc, port, count };
}

async function startSim(latencyMs: number): Promise<{ proc: Managed; port: number; url: string }> {
  const port = await freePort();
  const args = [...relayEntry, 'sim-ucwi', '--host', '127.0.0.1', '--port', String(port), '--latency', String(latencyMs)];
  const proc = startManaged(`ucwi-sim-${latencyMs}ms`, process.execPath, args, {
    maxSeconds: 1800,
    cwd: ROOT,
    env: childEnv({ DLP_RELAY_UCWI_ACCESS_KEY: ACCESS_KEY, DLP_RELAY_UCWI_SECRET_KEY: SECRET_KEY, DLP_RELAY_LOG_LEVEL: 'warn' }),
  });
  await waitForPort(port, 30_000, proc);
  commands[`UCWI simulator ${latencyMs} ms`] = `DLP_RELAY_UCWI_ACCESS_KEY=… DLP_RELAY_UCWI_SECRET_KEY=… DLP_RELAY_LOG_LEVEL=warn node ${args.join(' ')}`;
  return { proc, port, url: `http://127.0.0.1:${port}` };
}

async function startStub(latencyMs: number, actionCode = 1): Promise<{ proc: Managed; port: number; url: string }> {
  const port = await freePort();
  const args = [
    '--import',
    'tsx',
    'bench/ucwi-stub.ts',
    '--port',
    String(port),
    '--latency',
    String(latencyMs),
    ...(actionCode !== 1 ? ['--action-code', String(actionCode)] : []),
  ];
  const proc = startManaged(`ucwi-stub-${latencyMs}ms${actionCode !== 1 ? `-code${actionCode}` : ''}`, process.execPath, args, {
    maxSeconds: 1800,
    cwd: ROOT,
    env: childEnv({ DLP_RELAY_UCWI_ACCESS_KEY: ACCESS_KEY, DLP_RELAY_UCWI_SECRET_KEY: SECRET_KEY }),
  });
  await waitForPort(port, 30_000, proc);
  commands[`UCWI stub ${latencyMs} ms${actionCode !== 1 ? `, actionCode ${actionCode}` : ''} (diagnostic)`] =
    `DLP_RELAY_UCWI_ACCESS_KEY=… DLP_RELAY_UCWI_SECRET_KEY=… node ${args.join(' ')}`;
  return { proc, port, url: `http://127.0.0.1:${port}` };
}

const RELAY_YAML = [
  '# dlp-relay settings for the benchmark (written by bench/run.ts); everything else is the schema default.',
  'smtp:',
  '  maxClients: 500',
  'ucwi:',
  '  maxConcurrent: 256',
  'nextHop:',
  '  starttls: "off"',
  '  pool:',
  '    maxConnections: 50',
  '',
].join('\n');

interface Relay {
  proc: Managed;
  port: number;
  pid: number;
  adminPort: number;
}

// Behind HAProxy: PROXY v2 headers are taken from the balancer on 127.0.0.1 only.
const RELAY_PROXY_YAML = RELAY_YAML.replace('smtp:\n', 'smtp:\n  proxyProtocolFrom: ["127.0.0.1/32"]\n');

async function startRelay(
  name: string,
  opts: {
    ucwiUrl: string;
    sinkPort: number;
    logLevel: string;
    cpuProfDir?: string;
    onStdout?: (b: Buffer) => void;
    workers?: number;
    proxyFrom?: boolean;
    /**
     * nextHop.pool.maxConnections, as the README sizes it: one connection per client transaction in flight
     * (lockstep holds it through the UCWI call). The default 50 covers the 0 ms runs; with UCWI at 200 ms,
     * 100 sessions keep 100 transactions open at once, and 50 connections would cap them at 250 msg/s.
     */
    poolMax?: number;
  },
): Promise<Relay> {
  const port = await freePort();
  const adminPort = await freePort();
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const base = opts.proxyFrom ? RELAY_PROXY_YAML : RELAY_YAML;
  const yaml = opts.poolMax ? base.replace('maxConnections: 50', `maxConnections: ${opts.poolMax}`) : base;
  const cfg = join(work, `${opts.proxyFrom ? 'relay-proxy' : 'relay'}${opts.poolMax ? `-pool${opts.poolMax}` : ''}.yaml`);
  writeFileSync(cfg, yaml);
  const envVars = {
    DLP_RELAY_CONFIG: cfg,
    DLP_RELAY_LISTEN: `127.0.0.1:${port}`,
    DLP_RELAY_NEXT_HOP: `127.0.0.1:${opts.sinkPort}`,
    DLP_RELAY_UCWI_URL: opts.ucwiUrl,
    DLP_RELAY_UCWI_ACCESS_KEY: ACCESS_KEY,
    DLP_RELAY_UCWI_SECRET_KEY: SECRET_KEY,
    DLP_RELAY_SPOOL_DIR: join(dir, 'spool'),
    DLP_RELAY_QUARANTINE_DIR: join(dir, 'quarantine'),
    DLP_RELAY_OUTBOX_DIR: join(dir, 'outbox'),
    DLP_RELAY_LOG_LEVEL: opts.logLevel,
    // The admin listener (metrics) stays on, as in production, on a port of its own.
    DLP_RELAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    ...(opts.workers ? { DLP_RELAY_WORKERS: String(opts.workers) } : {}),
  };
  const args = [...(opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : []), ...relayEntry, 'serve', '--grace', '2000'];
  const proc = startManaged(name, process.execPath, args, {
    maxSeconds: 1800,
    cwd: ROOT,
    env: childEnv(envVars),
    ...(opts.onStdout ? { onStdout: opts.onStdout } : {}),
  });
  await waitForPort(port, 30_000, proc);
  const pid = proc.mainPid();
  if (!pid) throw new Error(`${name}: cannot find the relay's pid`);
  commands['relay config (DLP_RELAY_CONFIG)'] ??= RELAY_YAML.trim();
  if (opts.poolMax) commands[`relay config with ${opts.poolMax} next-hop connections ($WORK/relay-pool${opts.poolMax}.yaml)`] ??= yaml.trim();
  // One example per log level; the instances differ only in ports, UCWI URL and directories.
  commands[`relay (log level ${opts.logLevel}${opts.logLevel === 'info' ? ': the latency run reads the JSON "message" lines on stdout' : ''})`] ??=
    `${Object.entries(envVars)
      .map(([k, v]) => `${k}=${k.includes('KEY') ? '…' : v.replace(work, '$WORK')}`)
      .join(' ')} node ${args.join(' ')}`;
  return { proc, port, pid, adminPort };
}

async function startHaraka(bin: string, sinkPort: number, nodes: number): Promise<{ proc: Managed; port: number }> {
  const port = await freePort();
  const name = `haraka-${nodes}w`;
  const dir = join(work, name);
  await writeHarakaConfig(bin, dir, port, sinkPort, DOMAIN, nodes);
  const proc = startManaged(name, process.execPath, [bin, '-c', dir], { maxSeconds: 1800, cwd: dir, env: childEnv({}) });
  await waitForPort(port, 30_000, proc);
  commands[`haraka, ${nodes} worker(s)`] = `node ${bin} -c $WORK/${name}   # config/: ${['smtp.ini', 'plugins', 'host_list', 'smtp_forward.ini', 'log.ini']
    .map((f) => `${f}=${JSON.stringify(readFileSync(join(dir, 'config', f), 'utf8').trim())}`)
    .join(' ')}`;
  return { proc, port };
}

// ---- load --------------------------------------------------------------------------------------

const commands: Record<string, string> = {};

/** smtp-source: `-d` keeps each session's connection for the next message; without it every message opens a new one. */
async function smtpSource(
  port: number,
  sessions: number,
  messages: number,
  mode: ConnMode,
  label?: string,
): Promise<{ seconds: number; sent: number; code: number | null; stderr: string }> {
  const args = [
    ...(mode === 'reused' ? ['-d'] : []),
    '-c',
    '-s',
    String(sessions),
    '-m',
    String(messages),
    '-l',
    String(BODY),
    '-M',
    'bench.example.test',
    '-f',
    FROM,
    '-t',
    RCPT,
    `127.0.0.1:${port}`,
  ];
  if (label) commands[label] = `${SMTP_SOURCE} ${args.join(' ')}`;
  const t0 = performance.now();
  // Bounded: at worst 20 msg/s plus start-up, never more than 5 minutes.
  const r = await runCommand(SMTP_SOURCE, args, { maxSeconds: Math.min(300, 30 + messages / 20) });
  const seconds = (performance.now() - t0) / 1000;
  const counts = r.stdout.split(/[\r\n]+/).filter((s) => /^\d+$/.test(s.trim()));
  const sent = counts.length ? Number(counts[counts.length - 1]) : 0;
  return { seconds, sent, code: r.code, stderr: r.stderr.trim().slice(-500) };
}

interface System {
  system: ThroughputRun['system'];
  ucwiLatencyMs: number | null;
  port: number;
  /** Processes whose CPU time is charged to this system, by label. */
  cpu: () => Record<string, number>;
}

async function throughputRun(sys: System, mode: ConnMode, sessions: number, messages: number, sink: Sink, label?: string): Promise<ThroughputRun> {
  const cpu0 = sys.cpu();
  const sink0 = sink.count();
  const loadAvg = loadAvg1();
  const m0 = machineTicks();
  const r = await smtpSource(sys.port, sessions, messages, mode, label);
  const m1 = machineTicks();
  await sleep(300); // let the sink's counter reach us through the pty
  const cpu1 = sys.cpu();
  const sinkReceived = sink.count() - sink0;
  const cpuMsPerMsg: Record<string, number> = {};
  for (const k of Object.keys(cpu1)) cpuMsPerMsg[k] = Math.round((((cpu1[k] ?? 0) - (cpu0[k] ?? 0)) * 1000 * 100) / Math.max(1, r.sent)) / 100;
  const ok = r.code === 0 && r.sent === messages && sinkReceived >= messages;
  const run: ThroughputRun = {
    system: sys.system,
    ucwiLatencyMs: sys.ucwiLatencyMs,
    mode,
    sessions,
    messages,
    sent: r.sent,
    sinkReceived,
    seconds: Math.round(r.seconds * 1000) / 1000,
    msgPerSec: Math.round((r.sent / r.seconds) * 10) / 10,
    ok,
    cpuMsPerMsg,
    loadAvg,
    machineIdlePct: Math.round(((m1.idle - m0.idle) / Math.max(1, m1.total - m0.total)) * 1000) / 10,
  };
  if (!ok) run.error = `smtp-source exit ${r.code}, sent ${r.sent}/${messages}, sink got ${sinkReceived}: ${r.stderr}`;
  log(
    `  ${sys.system}${sys.ucwiLatencyMs !== null ? ` (UCWI ${sys.ucwiLatencyMs} ms)` : ''} ${mode} s=${sessions}: ${run.sent} msgs in ${run.seconds.toFixed(2)} s = ${run.msgPerSec} msg/s${ok ? '' : `  FAILED: ${run.error}`}`,
  );
  return run;
}

function cell(runs: ThroughputRun[]): ThroughputCell {
  const rates = runs.map((r) => r.msgPerSec);
  return {
    system: runs[0]!.system,
    ucwiLatencyMs: runs[0]!.ucwiLatencyMs,
    mode: runs[0]!.mode,
    sessions: runs[0]!.sessions,
    msgPerSec: median(rates),
    min: Math.min(...rates),
    max: Math.max(...rates),
    runs,
  };
}

/**
 * Messages for a run of about SECONDS at `rate` msg/s, in hundreds, bounded. With a new connection per message the
 * bound is lower: each connection leaves a TIME_WAIT socket on loopback, and the ceiling row would otherwise open
 * some 100,000 of them in one run.
 */
const countFor = (rate: number, mode: ConnMode = 'reused') =>
  Math.min(mode === 'new-connection' ? 30_000 : 200_000, Math.max(500, Math.round((rate * SECONDS) / 100) * 100));

/**
 * Warm-up run, then `reps` measured runs of a message count that takes about SECONDS at the warm-up's rate,
 * interleaved across systems so that a burst of outside load hits every system alike.
 */
async function throughputMatrix(
  systems: System[],
  sink: Sink,
  modes: readonly ConnMode[],
  ideal?: (s: System, sessions: number) => number,
): Promise<ThroughputCell[]> {
  return throughputMatrixFor(systems, sink, modes, SESSIONS, ideal);
}

async function throughputMatrixFor(
  systems: System[],
  sink: Sink,
  modes: readonly ConnMode[],
  sessionCounts: readonly number[],
  ideal?: (s: System, sessions: number) => number,
): Promise<ThroughputCell[]> {
  const counts = new Map<string, number>();
  const key = (s: System, mode: ConnMode, n: number) => `${s.system}/${s.ucwiLatencyMs}/${mode}/${n}`;
  for (const mode of modes) {
    for (const sessions of sessionCounts) {
      for (const s of systems) {
        const warm = ideal ? Math.max(sessions * 3, 200) : Math.max(500, sessions * 5);
        const w = await throughputRun(s, mode, sessions, warm, sink);
        counts.set(key(s, mode, sessions), countFor(ideal ? ideal(s, sessions) : w.msgPerSec, mode));
      }
    }
  }
  const runs = new Map<string, ThroughputRun[]>();
  for (let rep = 0; rep < REPS; rep++) {
    for (const mode of modes) {
      for (const sessions of sessionCounts) {
        for (const s of systems) {
          const k = key(s, mode, sessions);
          const label = `smtp-source → ${s.system}${s.ucwiLatencyMs !== null ? ` (UCWI ${s.ucwiLatencyMs} ms)` : ''}, ${mode}, ${sessions} sessions`;
          const r = await throughputRun(s, mode, sessions, counts.get(k)!, sink, label);
          runs.set(k, [...(runs.get(k) ?? []), r]);
          // A short warm-up underestimates the rate (session start-up dominates); size later runs from this one.
          if (!ideal && r.ok) counts.set(k, countFor(r.msgPerSec, mode));
        }
      }
    }
  }
  return [...runs.values()].map(cell);
}

// ---- latency -----------------------------------------------------------------------------------

interface LogLine {
  queryId: string;
  /** The Message-ID header value as the relay logs it (relays from issue 9 on). */
  messageId?: string | null;
  dlpMs: number | null;
  relayMs: number | null;
  totalMs: number;
}

/** The id inside a Message-ID value, without angle brackets or spaces, so `<a@b>` and ` <a@b> ` compare equal. */
const msgIdKey = (v: string): string => v.trim().replace(/^<(.*)>$/, '$1');

interface Sent {
  dotMs: number;
  /** Key of the Message-ID header we wrote (see makeMessage). */
  messageId: string;
  /** "(ref <queryId>)" from the reply, which only relays before issue 9 give; with lockstep the next hop's reply passes through. */
  ref: string | null;
}

/** Sequential messages over one session; returns each final-dot → reply time with the message's Message-ID. */
async function sequential(port: number, n: number, warm: number): Promise<Sent[]> {
  const s = await SmtpSession.open('127.0.0.1', port, { timeoutMs: 30_000 });
  const out: Sent[] = [];
  const deadline = Date.now() + 120_000;
  try {
    for (let i = 0; i < warm + n && Date.now() < deadline; i++) {
      const id = `lat-${i}-${randomBytes(4).toString('hex')}`;
      const msg = makeMessage(BODY, { from: FROM, to: RCPT, subject: `latency ${i}`, id });
      const r = await s.send(FROM, [RCPT], msg);
      if (r.reply.code !== 250) throw new Error(`message ${i}: ${r.reply.code} ${r.reply.text}`);
      if (i >= warm) out.push({ dotMs: r.dotMs, messageId: msgIdKey(messageIdOf(id)), ref: /ref ([0-9a-f-]{36})/i.exec(r.reply.text)?.[1] ?? null });
    }
  } finally {
    await s.quit();
  }
  if (out.length < n) throw new Error(`only ${out.length} of ${n} messages within the time bound`);
  return out;
}

async function latencyScenario(sink: Sink, simUrl: string): Promise<LatencyResult> {
  const byMessageId = new Map<string, LogLine>();
  const byQueryId = new Map<string, LogLine>();
  let partial = '';
  const onStdout = (b: Buffer) => {
    const text = partial + b.toString('utf8');
    const parts = text.split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      if (!line.includes('"event":"message"')) continue;
      try {
        const o = JSON.parse(line) as LogLine;
        if (typeof o.messageId === 'string') byMessageId.set(msgIdKey(o.messageId), o);
        if (typeof o.queryId === 'string') byQueryId.set(o.queryId, o);
      } catch {
        // not a JSON line
      }
    }
  };
  const relay = await startRelay('relay-latency', { ucwiUrl: simUrl, sinkPort: sink.port, logLevel: 'info', onStdout });
  let viaRelay: Sent[];
  try {
    viaRelay = await sequential(relay.port, LAT_N, 100);
    await sleep(500);
  } finally {
    await relay.proc.stop();
  }
  const direct = await sequential(sink.port, LAT_N, 100);
  // messageId first (the log line of issue 9's relay carries it); the reply's ref only for relays that still give one.
  const matchedBy = { messageId: 0, ref: 0 };
  const matched = viaRelay.flatMap((m) => {
    let l = byMessageId.get(m.messageId);
    if (l) matchedBy.messageId++;
    else if (m.ref && (l = byQueryId.get(m.ref))) matchedBy.ref++;
    return l && l.dlpMs !== null ? [{ ...m, log: l }] : [];
  });
  const relayDot = percentiles(viaRelay.map((m) => m.dotMs));
  const relayMinusDlp = percentiles(matched.map((m) => m.dotMs - (m.log.dlpMs ?? 0)));
  const directDot = percentiles(direct.map((m) => m.dotMs));
  const r3 = (v: number) => Math.round(v * 1000) / 1000;
  return {
    messages: LAT_N,
    bodyBytes: BODY,
    relayDot,
    dlpMs: percentiles(matched.map((m) => m.log.dlpMs ?? 0)),
    relayMinusDlp,
    serverTotalMinusDlp: percentiles(matched.map((m) => m.log.totalMs - (m.log.dlpMs ?? 0))),
    relayMs: percentiles(matched.map((m) => m.log.relayMs ?? NaN).filter(Number.isFinite)),
    directDot,
    addedP50: r3(relayMinusDlp.p50 - directDot.p50),
    addedP99: r3(relayMinusDlp.p99 - directDot.p99),
    addedInclUcwiP50: r3(relayDot.p50 - directDot.p50),
    addedInclUcwiP99: r3(relayDot.p99 - directDot.p99),
    matchedLogLines: matched.length,
    matchedBy,
  };
}

// ---- memory ------------------------------------------------------------------------------------

async function rssScenario(sink: Sink, sim0Url: string, sim200Url: string): Promise<RssResult> {
  const big = join(work, 'big.eml');
  log(`writing a ${(BIG_BYTES / 1e6).toFixed(0)} MB message`);
  await writeBigMessage(big, BIG_BYTES, FROM, RCPT);
  const relay = await startRelay('relay-rss-big', { ucwiUrl: sim0Url, sinkPort: sink.port, logLevel: 'warn' });
  let result: Omit<RssResult, 'sessions200'>;
  try {
    const s = await SmtpSession.open('127.0.0.1', relay.port, { timeoutMs: 180_000 });
    try {
      await s.send(FROM, [RCPT], makeMessage(BODY, { from: FROM, to: RCPT, subject: 'warm', id: 'warm' }));
      const rssBefore = statusKb(relay.pid, 'VmRSS') ?? 0;
      const poll = pollRss(relay.pid);
      const t0 = performance.now();
      const r = await s.sendFile(FROM, [RCPT], big);
      const seconds = (performance.now() - t0) / 1000;
      const polled = poll.stop();
      const hwm = statusKb(relay.pid, 'VmHWM') ?? 0;
      result = {
        bigMessageBytes: BIG_BYTES,
        bigMessageReply: `${r.reply.code} ${r.reply.text.split('\n')[0]!.slice(0, 80)}`,
        bigMessageSeconds: Math.round(seconds * 100) / 100,
        rssBeforeMiB: rssBefore / 1024,
        peakBigMiB: hwm / 1024,
        polledBigMiB: polled / 1024,
      };
      log(`  ${BIG_BYTES} bytes: ${result.bigMessageReply} in ${seconds.toFixed(1)} s, VmHWM ${(hwm / 1024).toFixed(1)} MiB`);
    } finally {
      await s.quit();
    }
  } finally {
    await relay.proc.stop();
    rmSync(big, { force: true });
  }
  const sessions200: RssResult['sessions200'] = [];
  for (const [latency, url] of [
    [0, sim0Url],
    [200, sim200Url],
  ] as const) {
    const r200 = await startRelay(`relay-rss-200-${latency}`, { ucwiUrl: url, sinkPort: sink.port, logLevel: 'warn', poolMax: 200 });
    try {
      const messages = 2000;
      const r = await smtpSource(r200.port, 200, messages, 'reused', `smtp-source -d, 200 sessions (RSS, UCWI ${latency} ms)`);
      const peak = (statusKb(r200.pid, 'VmHWM') ?? 0) / 1024;
      sessions200.push({
        ucwiLatencyMs: latency,
        messages,
        sent: r.sent,
        seconds: Math.round(r.seconds * 100) / 100,
        peakMiB: peak,
        ok: r.code === 0 && r.sent === messages,
      });
      log(`  200 sessions, UCWI ${latency} ms: ${r.sent}/${messages} in ${r.seconds.toFixed(1)} s, VmHWM ${peak.toFixed(1)} MiB`);
    } finally {
      await r200.proc.stop();
    }
  }
  return { ...result, sessions200 };
}

// ---- profile -----------------------------------------------------------------------------------

/**
 * The 2-worker relay under --cpu-prof with a new connection per message (the mode where issue 9 found the fixed
 * delay). Cluster workers inherit the supervisor's execArgv, so every process writes its own profile on exit.
 */
async function profileScenario(sink: Sink, sim0Url: string, results: Results): Promise<void> {
  const dir = join(work, 'cpuprof');
  mkdirSync(dir, { recursive: true });
  const mode: ConnMode = 'new-connection';
  const sessions = SESSIONS[0]!;
  const workers = 2;
  const measured = cellOf(results, RELAY, mode, sessions);
  // About SECONDS of load at the rate measured without the profiler, when there is one.
  const messages = measured ? countFor(measured.msgPerSec, mode) : 2000;
  const relay = await startRelay('relay-profile', { ucwiUrl: sim0Url, sinkPort: sink.port, logLevel: 'warn', cpuProfDir: dir, workers });
  let rate = NaN;
  let split: { userMsPerMsg: number; systemMsPerMsg: number } | null = null;
  const window = { fromUs: 0, toUs: Infinity };
  try {
    await smtpSource(relay.port, sessions, 300, mode);
    // Only the samples of the measured run count: start-up (module compilation) and the warm-up are left out.
    window.fromUs = monotonicUs();
    const cpu0 = treeCpuSplit(relay.pid);
    const r = await smtpSource(relay.port, sessions, messages, mode, `smtp-source → dlp-relay (2 workers) under --cpu-prof, ${mode}`);
    const cpu1 = treeCpuSplit(relay.pid);
    window.toUs = monotonicUs();
    // Read from /proc, not sampled: what the processes really spent in user space and in the kernel.
    split = { userMsPerMsg: ((cpu1.user - cpu0.user) * 1000) / messages, systemMsPerMsg: ((cpu1.system - cpu0.system) * 1000) / messages };
    if (r.code !== 0 || r.sent !== messages) throw new Error(`profiled run: smtp-source exit ${r.code}, sent ${r.sent}/${messages}: ${r.stderr}`);
    rate = r.sent / r.seconds;
    log(`  profiled run: ${r.sent} msgs in ${r.seconds.toFixed(2)} s = ${rate.toFixed(0)} msg/s (profiler on)`);
  } finally {
    await relay.proc.stop();
  }
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .sort();
  if (!files.length) throw new Error('the relay wrote no .cpuprofile');
  const saved: string[] = [];
  files.forEach((f, i) => {
    const dest = join(RESULTS_DIR, `relay-profile-${i + 1}.cpuprofile`);
    copyFileSync(join(dir, f), dest);
    saved.push(dest);
  });
  const summary = summarizeProfiles(saved, ROOT, messages, window);
  results.profile = {
    ...summary,
    files: saved.map((f) => f.slice(ROOT.length + 1)),
    sessions,
    mode,
    workers,
    msgPerSec: Math.round(rate),
    ...(split ? { cpuSplit: split } : {}),
  };
}

// ---- main --------------------------------------------------------------------------------------

function machine(): Results['machine'] {
  const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? 'unknown';
  const osRelease = existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '';
  return {
    nproc: availableParallelism(),
    cpuModel: model.trim(),
    memTotalGiB: totalmem() / 1024 ** 3,
    node: process.version,
    os: /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(osRelease)?.[1] ?? process.platform,
    kernel: release(),
    loadAvgAtStart: loadAvg1(),
  };
}

async function main(): Promise<void> {
  const started = new Date();
  mkdirSync(RESULTS_DIR, { recursive: true });
  work = mkdtempSync(join(tmpdir(), 'dlp-relay-bench-run-'));
  const results: Results = {
    startedAt: started.toISOString(),
    finishedAt: '',
    durationSeconds: 0,
    machine: machine(),
    versions: { haraka: '', relayBuild: '', smtpSource: '' },
    settings: { bodyBytes: BODY, seconds: SECONDS, reps: REPS, sessions: SESSIONS, modes: [...CONN_MODES] },
    commands,
    throughput: [],
    latency200: [],
    latency: null,
    rss: null,
    strip: null,
    peakRssDuringThroughputMiB: {},
    profile: null,
    targets: [],
    analysis: [],
    errors: [],
  };
  const step = async (name: string, fn: () => Promise<void>) => {
    log(name);
    try {
      await fn();
    } catch (err) {
      const msg = `${name}: ${(err as Error).stack ?? String(err)}`;
      results.errors.push(msg.slice(0, 2000));
      log(`FAILED ${msg}`);
    }
  };
  try {
    await ensurePostfixTools(log);
    ensureScript();
    const pf = await runCommand('dpkg-query', ['-W', '-f', '${Version}', 'postfix'], { maxSeconds: 10 });
    results.versions.smtpSource = pf.code === 0 ? `postfix ${pf.stdout.trim()}` : 'unknown';
    let haraka: { bin: string; version: string } | null = null;
    if (ONLY.has('throughput')) {
      try {
        haraka = await ensureHaraka(log);
      } catch (err) {
        // Without Haraka the other rows still mean something; the comparison targets then read n/a.
        results.errors.push(`Haraka: ${(err as Error).message}`.slice(0, 2000));
        log(`Haraka unavailable, continuing without it: ${(err as Error).message}`);
      }
    }
    results.versions.haraka = haraka ? `Haraka ${haraka.version} (npm, in ${dirname(dirname(dirname(dirname(haraka.bin))))})` : 'not run';
    const build = await buildRelay(ROOT, log);
    relayEntry = build.ok ? ['dist/cli/main.js'] : ['--import', 'tsx', 'src/cli/main.ts'];
    results.versions.relayBuild = build.ok ? 'dist/ from npm run build' : 'src/ through tsx (npm run build failed)';
    if (!build.ok) {
      results.errors.push(`npm run build failed, ran src/ through tsx instead:\n${build.detail}`);
      log('npm run build failed; falling back to tsx');
    }

    const sink = await startSink();
    const sim0 = await startSim(0);
    const sim200 = ONLY.has('latency200') || ONLY.has('rss') ? await startSim(200) : null;

    if (ONLY.has('throughput')) {
      await step(
        `throughput at 0 ms UCWI: direct, Haraka and dlp-relay with 2 workers each, ${CONN_MODES.join(' and ')} × ${SESSIONS.join('/')} sessions × ${REPS} runs of ~${SECONDS} s`,
        async () => {
          // Issue 9 compares both systems with 2 worker processes: relay smtp.workers: 2, Haraka nodes=2.
          const relay2 = await startRelay('relay-2w-0ms', { ucwiUrl: sim0.url, sinkPort: sink.port, logLevel: 'warn', workers: 2 });
          const h2 = haraka ? await startHaraka(haraka.bin, sink.port, 2) : null;
          const stub = argv['no-stub'] ? null : await startStub(0);
          // Diagnostic: the DLP engine's CPU off the relay's cores, as with a UCWI appliance on its own hardware.
          const relayStub2 = stub ? await startRelay('relay-stub-2w-0ms', { ucwiUrl: stub.url, sinkPort: sink.port, logLevel: 'warn', workers: 2 }) : null;
          const relay1 = argv.single ? await startRelay('relay-1p-0ms', { ucwiUrl: sim0.url, sinkPort: sink.port, logLevel: 'warn' }) : null;
          const h1 = argv.single && haraka ? await startHaraka(haraka.bin, sink.port, 1) : null;
          const simPid = sim0.proc.mainPid()!;
          // CPU of whole process trees: the relay's supervisor and workers, Haraka's master and workers.
          const harakaTree = (m: Managed) => () => ({ haraka: treeCpuSeconds(m.child.pid!) });
          try {
            const systems: System[] = [{ system: 'direct', ucwiLatencyMs: null, port: sink.port, cpu: () => ({}) }];
            if (h2) systems.push({ system: 'haraka-2w', ucwiLatencyMs: null, port: h2.port, cpu: harakaTree(h2.proc) });
            systems.push({
              system: 'dlp-relay-2w',
              ucwiLatencyMs: 0,
              port: relay2.port,
              cpu: () => ({ relay: treeCpuSeconds(relay2.pid), sim: cpuSeconds(simPid) }),
            });
            if (stub && relayStub2) {
              const stubPid = stub.proc.mainPid()!;
              systems.push({
                system: 'dlp-relay-stub-2w',
                ucwiLatencyMs: 0,
                port: relayStub2.port,
                cpu: () => ({ relay: treeCpuSeconds(relayStub2.pid), stub: cpuSeconds(stubPid) }),
              });
            }
            if (h1) systems.push({ system: 'haraka', ucwiLatencyMs: null, port: h1.port, cpu: harakaTree(h1.proc) });
            if (relay1)
              systems.push({
                system: 'dlp-relay',
                ucwiLatencyMs: 0,
                port: relay1.port,
                cpu: () => ({ relay: treeCpuSeconds(relay1.pid), sim: cpuSeconds(simPid) }),
              });
            results.throughput = await throughputMatrix(systems, sink, CONN_MODES);
            const peak = (pid: number) => Math.max(...treeOf(pid).map((p) => statusKb(p, 'VmHWM') ?? 0)) / 1024;
            results.peakRssDuringThroughputMiB['dlp-relay, 2 workers (largest of its processes), throughput runs'] = peak(relay2.pid);
            if (h2) results.peakRssDuringThroughputMiB['Haraka, 2 workers (largest of its processes), throughput runs'] = peak(h2.proc.child.pid!);
          } finally {
            await Promise.all([relay2.proc.stop(), h2?.proc.stop(), relayStub2?.proc.stop(), stub?.proc.stop(), relay1?.proc.stop(), h1?.proc.stop()]);
          }
        },
      );
    }
    if (ONLY.has('latency200') && sim200) {
      await step(`throughput at 200 ms UCWI: dlp-relay × ${SESSIONS.join('/')} sessions`, async () => {
        const relay = await startRelay('relay-200ms', { ucwiUrl: sim200.url, sinkPort: sink.port, logLevel: 'warn', poolMax: Math.max(...SESSIONS) });
        const simPid = sim200.proc.mainPid()!;
        try {
          const sys: System = {
            system: 'dlp-relay',
            ucwiLatencyMs: 200,
            port: relay.port,
            cpu: () => ({ relay: cpuSeconds(relay.pid), sim: cpuSeconds(simPid) }),
          };
          results.latency200 = await throughputMatrix([sys], sink, ['reused'], (_s, n) => n / 0.2);
        } finally {
          await relay.proc.stop();
        }
      });
    }
    if (ONLY.has('latency')) {
      await step(`added latency: ${LAT_N} sequential messages through the relay and straight to the sink`, async () => {
        results.latency = await latencyScenario(sink, sim0.url);
      });
    }
    if (ONLY.has('rss') && sim200) {
      await step('peak RSS: one big message, then 200 sessions', async () => {
        results.rss = await rssScenario(sink, sim0.url, sim200.url);
      });
    }
    if (ONLY.has('strip')) {
      await step(`attachment removal: ${STRIP_N} messages of ~1 MB (a PDF and a ZIP) answered actionCode 4`, async () => {
        // The stub answers 4 without scanning, so the row measures the relay's dry run, evidence copy and rewrite.
        const stub4 = await startStub(0, 4);
        const relay = await startRelay('relay-strip', { ucwiUrl: stub4.url, sinkPort: sink.port, logLevel: 'warn' });
        try {
          results.strip = await stripRun(relay.port, relay.pid, FROM, RCPT, STRIP_N);
          log(
            `  ${results.strip.relayed}/${STRIP_N} relayed in ${results.strip.seconds} s (${results.strip.msgPerSec} msg/s, ${results.strip.mbPerSec} MB/s), VmHWM ${results.strip.peakMiB.toFixed(1)} MiB`,
          );
        } finally {
          await Promise.all([relay.proc.stop(), stub4.proc.stop()]);
        }
      });
    }
    if (RUN_SCALE_OUT) {
      const sessions = Math.max(...SESSIONS);
      await step(`scale-out: one relay against three behind HAProxy, ${sessions} sessions, both connection modes × ${REPS} runs of ~${SECONDS} s`, async () => {
        results.scaleOut = await scaleOutScenario({
          work,
          sessions,
          nproc: availableParallelism(),
          simUrl: sim0.url,
          simPid: sim0.proc.mainPid()!,
          sinkPort: sink.port,
          commands,
          log,
          startRelay,
          throughputMatrix: (systems, modes) => throughputMatrixFor(systems, sink, modes, [sessions]),
        });
      });
    }
    if (argv.profile) {
      await step(`CPU profile of the 2-worker relay, new connection per message, ${SESSIONS[0]} sessions`, async () => {
        await profileScenario(sink, sim0.url, results);
      });
    }
  } catch (err) {
    results.errors.push(`setup: ${(err as Error).stack ?? String(err)}`.slice(0, 2000));
    log(`FAILED setup: ${(err as Error).stack ?? String(err)}`);
  } finally {
    await stopAll();
    rmSync(work, { recursive: true, force: true });
  }
  const finished = new Date();
  results.finishedAt = finished.toISOString();
  results.durationSeconds = Math.round((finished.getTime() - started.getTime()) / 1000);
  results.targets = computeTargets(results);
  results.analysis = analyse(results);
  writeFileSync(join(RESULTS_DIR, 'latest.json'), JSON.stringify(results, null, 2) + '\n');
  process.stdout.write('\n' + printTables(results) + '\n');
  if (!argv['no-md']) writeBenchmarksMd(join(ROOT, 'BENCHMARKS.md'), results);
  log(`wrote bench/results/latest.json${argv['no-md'] ? '' : ' and BENCHMARKS.md'} (${results.durationSeconds} s)`);
  process.exitCode = results.errors.length ? 1 : 0;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: stopping child processes`);
    void stopAll().finally(() => {
      if (work) rmSync(work, { recursive: true, force: true });
      process.exit(130);
    });
  });
}

await main();
