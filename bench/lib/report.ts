// Benchmark results: their shape, percentiles, the stdout table, and BENCHMARKS.md (regenerated, keeping the hand-written analysis block).
import type { StripResult } from './strip.js';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { ProfileSummary } from './cpuprofile.js';
import { scaleOutMarkdown, scaleOutPlain, type ScaleOutResult } from './scale-out.js';

export interface Machine {
  nproc: number;
  cpuModel: string;
  memTotalGiB: number;
  node: string;
  os: string;
  kernel: string;
  loadAvgAtStart: number;
}

/** How smtp-source uses its sessions: a new TCP connection (greeting, EHLO, QUIT) per message, or `-d` (keep it). */
export type ConnMode = 'new-connection' | 'reused';
export const CONN_MODES: readonly ConnMode[] = ['new-connection', 'reused'];

export interface ThroughputRun {
  system: 'direct' | 'haraka' | 'haraka-2w' | 'dlp-relay' | 'dlp-relay-2w' | 'dlp-relay-stub-2w' | 'dlp-relay-haproxy-1' | 'dlp-relay-haproxy-3';
  ucwiLatencyMs: number | null;
  mode: ConnMode;
  sessions: number;
  messages: number;
  /** Messages smtp-source counted as done (DATA completed). */
  sent: number;
  /** Messages the sink received during the run. */
  sinkReceived: number;
  seconds: number;
  msgPerSec: number;
  ok: boolean;
  /** CPU milliseconds per message by process group (relay tree, Haraka tree, simulator or stub), when measured. */
  cpuMsPerMsg: Record<string, number>;
  loadAvg: number;
  /** Share of the whole machine's CPU time that was idle during the run (all processes, ours and others'), in %. */
  machineIdlePct: number;
  error?: string;
}

export interface ThroughputCell {
  system: ThroughputRun['system'];
  ucwiLatencyMs: number | null;
  mode: ConnMode;
  sessions: number;
  /** Median over the repetitions. */
  msgPerSec: number;
  min: number;
  max: number;
  runs: ThroughputRun[];
}

export interface Percentiles {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface LatencyResult {
  messages: number;
  bodyBytes: number;
  /** Client-side final-dot → 250 through the relay (UCWI simulator at 0 ms). */
  relayDot: Percentiles;
  /** dlpMs from the relay's per-message log line (integer ms: ±0.5 ms each). */
  dlpMs: Percentiles;
  /** relayDot − dlpMs, per message. */
  relayMinusDlp: Percentiles;
  /** Server-side totalMs − dlpMs from the log line (spool + UCWI client overhead excluded from neither; integer ms). */
  serverTotalMinusDlp: Percentiles;
  /** relayMs (next-hop delivery) from the log line. */
  relayMs: Percentiles;
  /** Client-side final-dot → 250 straight to the sink. */
  directDot: Percentiles;
  /** The target metric: percentile of (relayDot − dlpMs) minus the same percentile of directDot. */
  addedP50: number;
  addedP99: number;
  /** Same without removing UCWI time: relayDot − directDot (the whole cost of inline DLP at 0 ms). */
  addedInclUcwiP50: number;
  addedInclUcwiP99: number;
  matchedLogLines: number;
  /** How the replies were matched to log lines: by the log line's messageId, or (older relays) by the reply's "(ref <queryId>)". */
  matchedBy: { messageId: number; ref: number };
}

export interface RssResult {
  bigMessageBytes: number;
  bigMessageReply: string;
  bigMessageSeconds: number;
  rssBeforeMiB: number;
  /** VmHWM of the relay process after relaying the big message (peak RSS over its whole life). */
  peakBigMiB: number;
  /** Same, polled VmRSS maximum (cross-check). */
  polledBigMiB: number;
  sessions200: Array<{ ucwiLatencyMs: number; messages: number; sent: number; seconds: number; peakMiB: number; ok: boolean }>;
}

export interface Target {
  /** Which issue set the goal: issue 9's targets are the point of this harness; issue 5's are kept for regressions. */
  issue: 5 | 9;
  name: string;
  goal: string;
  measured: string;
  pass: boolean | null;
}

export interface Results {
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  machine: Machine;
  versions: { haraka: string; relayBuild: string; smtpSource: string };
  settings: { bodyBytes: number; seconds: number; reps: number; sessions: number[]; modes: ConnMode[] };
  commands: Record<string, string>;
  throughput: ThroughputCell[];
  latency200: ThroughputCell[];
  latency: LatencyResult | null;
  rss: RssResult | null;
  /** Attachment removal (actionCode 4) on ~1 MB messages; absent in results written before it existed. */
  strip?: StripResult | null;
  peakRssDuringThroughputMiB: Record<string, number>;
  profile:
    | (ProfileSummary & {
        files: string[];
        sessions: number;
        mode: ConnMode;
        workers: number;
        msgPerSec: number;
        /** CPU per message of the relay's process tree during the profiled run, from /proc (absent in older results). */
        cpuSplit?: { userMsPerMsg: number; systemMsPerMsg: number };
      })
    | null;
  /** `--scale-out` only; absent in results of runs without it. */
  scaleOut?: ScaleOutResult | null;
  targets: Target[];
  /** Sentences derived from the numbers (bench/lib/analysis.ts). */
  analysis: string[];
  errors: string[];
}

export function percentiles(values: number[]): Percentiles {
  const s = [...values].sort((a, b) => a - b);
  // Nearest-rank percentile: the smallest value with at least p% of the samples at or below it.
  const at = (p: number) => (s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]! : NaN);
  const r = (v: number) => Math.round(v * 1000) / 1000;
  return { n: s.length, p50: r(at(50)), p90: r(at(90)), p99: r(at(99)), max: r(s[s.length - 1] ?? NaN) };
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : 'n/a');
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : 'n/a');
const f0 = (v: number) => (Number.isFinite(v) ? Math.round(v).toString() : 'n/a');

function mdTable(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function plainTable(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join('  ');
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...rows.map(line)].join('\n');
}

const systemLabel = (c: { system: string; ucwiLatencyMs: number | null }): string => {
  switch (c.system) {
    case 'dlp-relay':
      return `dlp-relay, 1 process (UCWI sim ${c.ucwiLatencyMs} ms)${c.ucwiLatencyMs === 0 ? '*' : ''}`;
    case 'dlp-relay-2w':
      return `dlp-relay, 2 workers (UCWI sim ${c.ucwiLatencyMs} ms)`;
    case 'dlp-relay-stub-2w':
      return `dlp-relay, 2 workers (UCWI stub ${c.ucwiLatencyMs} ms, no scan)*`;
    case 'haraka':
      return 'Haraka smtp_forward, 1 worker (nodes=1)*';
    case 'haraka-2w':
      return 'Haraka smtp_forward, 2 workers (nodes=2)';
    default:
      return 'direct → sink (ceiling)';
  }
};

export const modeTitle = (m: ConnMode): string =>
  m === 'new-connection' ? 'a new connection per message (smtp-source without -d)' : 'reused connections (smtp-source -d)';

/** Median CPU ms per message of one process group over a cell's runs (NaN when not measured). */
export function cpuOf(c: ThroughputCell, group: string): number {
  return median(c.runs.map((r) => r.cpuMsPerMsg[group] ?? NaN).filter(Number.isFinite));
}

function cpuCell(c: ThroughputCell): string {
  const keys = new Set(c.runs.flatMap((r) => Object.keys(r.cpuMsPerMsg)));
  return [...keys].map((k) => `${k} ${f2(cpuOf(c, k))}`).join(', ') || '—';
}

function throughputRows(cells: ThroughputCell[], withExpected: boolean): { head: string[]; rows: string[][] } {
  const head = [
    'system',
    'sessions',
    'msg/s (median)',
    'min–max',
    'runs',
    'msgs/run (median)',
    'CPU ms/msg',
    ...(withExpected ? ['sessions ÷ latency', 'efficiency'] : []),
    'machine idle',
    'load avg',
    'all delivered',
  ];
  const rows = cells.map((c) => {
    const expected = c.ucwiLatencyMs ? c.sessions / (c.ucwiLatencyMs / 1000) : NaN;
    return [
      systemLabel(c),
      String(c.sessions),
      f0(c.msgPerSec),
      `${f0(c.min)}–${f0(c.max)}`,
      String(c.runs.length),
      f0(median(c.runs.map((r) => r.messages))),
      cpuCell(c),
      ...(withExpected ? [f0(expected), `${f1((c.msgPerSec / expected) * 100)} %`] : []),
      `${f0(median(c.runs.map((r) => r.machineIdlePct).filter(Number.isFinite)))} %`,
      f1(median(c.runs.map((r) => r.loadAvg))),
      c.runs.every((r) => r.ok) ? 'yes' : `NO (${c.runs.filter((r) => !r.ok).length} failed)`,
    ];
  });
  return { head, rows };
}

function latencyRows(l: LatencyResult): { head: string[]; rows: string[][] } {
  const row = (name: string, p: Percentiles) => [name, f2(p.p50), f2(p.p90), f2(p.p99), f2(p.max), String(p.n)];
  return {
    head: ['measure (ms)', 'p50', 'p90', 'p99', 'max', 'n'],
    rows: [
      row('relay: final dot → 250 (client)', l.relayDot),
      row('relay: dlpMs (log, integer)', l.dlpMs),
      row('relay: dot→250 − dlpMs (per msg)', l.relayMinusDlp),
      row('relay: totalMs − dlpMs (log)', l.serverTotalMinusDlp),
      row('relay: relayMs (next hop, log)', l.relayMs),
      row('direct: final dot → 250 (client)', l.directDot),
    ],
  };
}

const targetRows = (ts: Target[], bold: boolean): string[][] =>
  ts.map((t) => [t.name, t.goal, t.measured, t.pass === null ? 'n/a' : bold ? (t.pass ? '**PASS**' : '**FAIL**') : t.pass ? 'PASS' : 'FAIL']);

type Profile = NonNullable<Results['profile']>;

function profileTables(p: Profile): { head: string[]; rows: string[][] }[] {
  const ms = (v: number | null) => (v === null ? 'n/a' : v.toFixed(3));
  return [
    { head: ['who', '% of busy time', 'ms/msg'], rows: p.byKind.map((x) => [x.name, f1(x.pct), ms(x.msPerMsg)]) },
    { head: ['area (self time)', 'kind', '% of busy time', 'ms/msg'], rows: p.byArea.slice(0, 12).map((x) => [x.name, x.kind, f1(x.pct), ms(x.msPerMsg)]) },
    { head: ['top functions (self time)', 'kind', '% of busy time'], rows: p.topSelf.slice(0, 12).map((x) => [x.name, x.kind, f1(x.pct)]) },
  ];
}

/** The /proc user/system split, which the sampled shares must be read against. */
export const cpuSplitText = (p: Profile): string => {
  const c = p.cpuSplit;
  if (!c) return '';
  const total = c.userMsPerMsg + c.systemMsPerMsg;
  const userPct = total > 0 ? (100 * c.userMsPerMsg) / total : 0;
  return ` Read from /proc over the same run (not sampled), the relay's processes spent ${c.userMsPerMsg.toFixed(2)} ms per message in user space and ${c.systemMsPerMsg.toFixed(2)} ms in the kernel (${userPct.toFixed(0)} % user): a sample that lands in a native socket write (\`writeUtf8String\`, \`writev\`) also counts the time the thread sat preempted after the write woke the receiving process on this 2-core machine, so those rows overstate what the writes cost, and the user-space work (JavaScript, V8 and Node's C++) is the bulk of the CPU.`;
};

const profileIntro = (p: Profile): string =>
  `${p.processes} process(es) (supervisor and ${p.workers} worker(s)), ${modeTitle(p.mode)}, ${p.sessions} sessions, UCWI sim 0 ms, ${p.messages ?? '?'} messages at ${f0(p.msgPerSec)} msg/s with the profiler on; ${f0(p.totalMs)} ms sampled ${p.windowed ? 'during the measured run only (start-up and warm-up left out)' : "over the processes' whole lives (the run window could not be applied)"}, ${f1(p.idlePct)} % idle. Shares are of busy (non-idle) time; ms/msg is busy sampled time per message over all processes (main threads only: GC helper and libuv threads are not sampled).${cpuSplitText(p)}`;

export function printTables(r: Results): string {
  const out: string[] = [];
  for (const mode of CONN_MODES) {
    const cells = r.throughput.filter((c) => c.mode === mode);
    if (!cells.length) continue;
    const t = throughputRows(cells, false);
    out.push(`Throughput, ${modeTitle(mode)}, ${r.settings.bodyBytes}-byte bodies, UCWI at 0 ms`, plainTable(t.head, t.rows), '');
  }
  if (r.latency200.length) {
    const t = throughputRows(r.latency200, true);
    out.push('Throughput, UCWI simulator at 200 ms (reused connections)', plainTable(t.head, t.rows), '');
  }
  if (r.latency) {
    const t = latencyRows(r.latency);
    out.push(`Latency, ${r.latency.messages} sequential messages, one session`, plainTable(t.head, t.rows));
    out.push(
      `added (excl. UCWI): p50 ${f2(r.latency.addedP50)} ms, p99 ${f2(r.latency.addedP99)} ms; incl. the UCWI round trip at 0 ms: p50 ${f2(r.latency.addedInclUcwiP50)} ms, p99 ${f2(r.latency.addedInclUcwiP99)} ms`,
    );
    out.push(
      `log lines matched: ${r.latency.matchedLogLines} of ${r.latency.messages} (by messageId ${r.latency.matchedBy.messageId}, by reply ref ${r.latency.matchedBy.ref})`,
      '',
    );
  }
  if (r.rss) {
    out.push(
      `Peak RSS: ${f1(r.rss.peakBigMiB)} MiB relaying one ${(r.rss.bigMessageBytes / 1e6).toFixed(0)} MB message (reply ${r.rss.bigMessageReply}, ${f1(r.rss.bigMessageSeconds)} s; idle ${f1(r.rss.rssBeforeMiB)} MiB)`,
      ...r.rss.sessions200.map(
        (s) => `Peak RSS: ${f1(s.peakMiB)} MiB with 200 sessions, UCWI ${s.ucwiLatencyMs} ms (${s.sent}/${s.messages} messages in ${f1(s.seconds)} s)`,
      ),
      '',
    );
  }
  if (r.strip) {
    const x = r.strip;
    out.push(
      `Attachment removal (actionCode 4): ${x.relayed}/${x.messages} messages of ${(x.messageBytes / 1e6).toFixed(1)} MB in ${f1(x.seconds)} s = ${x.msgPerSec} msg/s, ${x.mbPerSec} MB/s; peak RSS ${f1(x.peakMiB)} MiB (first reply ${x.firstReply})`,
      '',
    );
  }
  if (r.profile) {
    out.push('Where the time goes (relay CPU profile)', profileIntro(r.profile));
    for (const t of profileTables(r.profile)) out.push(plainTable(t.head, t.rows), '');
  }
  if (r.scaleOut) out.push(...scaleOutPlain(r.scaleOut, plainTable));
  for (const issue of [9, 5] as const) {
    const ts = r.targets.filter((t) => t.issue === issue);
    if (ts.length) out.push(`Targets (issue ${issue})`, plainTable(['target', 'goal', 'measured', 'result'], targetRows(ts, false)), '');
  }
  if (r.analysis.length) out.push('Analysis', ...r.analysis.map((a) => `- ${a}`), '');
  if (r.errors.length) out.push('Errors:', ...r.errors.map((e) => `  - ${e}`), '');
  return out.join('\n');
}

const NOTES_START = '<!-- analysis:start (kept by bench/run.ts when it rewrites this file) -->';
const NOTES_END = '<!-- analysis:end -->';

export function writeBenchmarksMd(file: string, r: Results): void {
  // Hand-written notes between the markers survive a rewrite; everything else, the analysis included, is generated.
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const a = old.indexOf(NOTES_START);
  const b = old.indexOf(NOTES_END);
  const notes = a >= 0 && b > a ? old.slice(a, b + NOTES_END.length) : `${NOTES_START}\n_None._\n${NOTES_END}`;
  const m = r.machine;
  const parts: string[] = [];
  const i9 = r.targets.filter((t) => t.issue === 9);
  const i5 = r.targets.filter((t) => t.issue === 5);
  parts.push(
    '# Benchmarks',
    '',
    `Generated by \`npm run bench\` (bench/run.ts) on ${r.finishedAt.slice(0, 10)}; the run took ${f0(r.durationSeconds)} s. Raw numbers: \`bench/results/latest.json\` (not committed).`,
    'Everything runs on one machine over 127.0.0.1: load generator, relay, UCWI simulator, Haraka and the sink share its cores, so the numbers compare systems on the same box, not what each would do alone.',
    '',
    '## Targets (issue 9: both systems with 2 worker processes, same run)',
    '',
    i9.length
      ? mdTable(['target', 'goal', 'measured', 'result'], targetRows(i9, true))
      : '_Not measured in this run (the throughput scenario did not run or Haraka was unavailable)._',
    '',
  );
  if (i5.length)
    parts.push('### Earlier targets (issue 5), kept to catch regressions', '', mdTable(['target', 'goal', 'measured', 'result'], targetRows(i5, true)), '');
  if (r.analysis.length) parts.push('## Analysis (generated from the numbers above)', '', ...r.analysis.map((s) => `- ${s}`), '');
  parts.push(
    '## Machine',
    '',
    mdTable(
      ['', ''],
      [
        ['CPU', `${m.cpuModel}, ${m.nproc} cores (nproc)`],
        ['memory', `${m.memTotalGiB.toFixed(1)} GiB`],
        ['OS', `${m.os}, kernel ${m.kernel}`],
        ['Node.js', m.node],
        ['load average at start (1 min)', m.loadAvgAtStart.toFixed(2)],
        ['Haraka', r.versions.haraka],
        ['smtp-source / smtp-sink', r.versions.smtpSource],
        ['relay build', r.versions.relayBuild],
      ],
    ),
    '',
  );
  for (const mode of CONN_MODES) {
    const cells = r.throughput.filter((c) => c.mode === mode);
    if (!cells.length) continue;
    const t = throughputRows(cells, false);
    parts.push(`## Throughput, ${modeTitle(mode)}: ${r.settings.bodyBytes / 1024} KiB messages, UCWI at 0 ms`, '', mdTable(t.head, t.rows), '');
  }
  if (r.throughput.length) {
    parts.push(
      `Each cell is the median of ${r.settings.reps} runs of about ${r.settings.seconds} s each (the first sized from a warm-up run, the others from the run before). "CPU ms/msg" is user+system CPU divided by messages: \`relay\` is the relay's whole process tree (supervisor and workers), \`haraka\` Haraka's (master and workers), \`sim\`/\`stub\` the UCWI server. "machine idle" is the share of all cores' time that was idle during the run (every process on the machine counted); "load avg" is the 1-minute load average when the runs started: the machine has ${m.nproc} cores; anything well above the load this benchmark makes itself means other work shared the CPU.`,
      '',
      '\\* Diagnostic row, not used for the targets: single-process rows (`--single`) and the relay against a stub UCWI server (bench/ucwi-stub.ts) that checks the signature and discards the upload without scanning, as if the DLP engine ran on its own hardware.',
      '',
    );
  }
  if (r.profile) {
    parts.push('## Where the time goes (CPU profile of the relay, `--profile`)', '', profileIntro(r.profile), '');
    for (const t of profileTables(r.profile))
      parts.push(
        mdTable(
          t.head,
          t.rows.map((row) => row.map((c, i) => (i === 0 && /:\d+$/.test(c) ? '`' + c + '`' : c))),
        ),
        '',
      );
    parts.push(`Profiles: ${r.profile.files.map((f) => `\`${f}\``).join(', ')} (not committed; open in Chrome DevTools or speedscope).`, '');
  }
  if (r.latency200.length) {
    const t = throughputRows(r.latency200, true);
    parts.push(
      '## Throughput with the UCWI simulator at 200 ms (reused connections)',
      '',
      "By Little's law a session can complete at most one message per 200 ms, so the ideal is sessions ÷ 0.2 s.",
      '',
      mdTable(t.head, t.rows),
      '',
    );
  }
  if (r.latency) {
    const t = latencyRows(r.latency);
    parts.push(
      '## Added latency (UCWI simulator at 0 ms)',
      '',
      `${r.latency.messages} sequential ${r.latency.bodyBytes}-byte messages over one SMTP session (after a warm-up), timed by our own client from the write of the last body bytes plus the final "." to the complete reply. The same client sends the same messages straight to the sink.`,
      '',
      mdTable(t.head, t.rows),
      '',
      `- **Added latency excluding UCWI** = percentile of (relay dot→250 − that message's \`dlpMs\`) − the same percentile of direct dot→250: **p50 ${f2(r.latency.addedP50)} ms, p99 ${f2(r.latency.addedP99)} ms**.`,
      `- Including the UCWI round trip to the simulator at 0 ms (relay dot→250 − direct dot→250): p50 ${f2(r.latency.addedInclUcwiP50)} ms, p99 ${f2(r.latency.addedInclUcwiP99)} ms.`,
      `- \`dlpMs\` is the relay's own timing of the whole UCWI call, rounded to whole ms, so each per-message difference carries ±0.5 ms. ${r.latency.matchedLogLines} of ${r.latency.messages} replies were matched to the relay's "message" log line (${r.latency.matchedBy.messageId} by its \`messageId\`, the Message-ID our client wrote; ${r.latency.matchedBy.ref} by a "(ref <queryId>)" in the reply, which only relays before issue 9 give).`,
      '',
    );
  }
  if (r.rss) {
    parts.push(
      '## Memory',
      '',
      mdTable(
        ['case', 'peak RSS (VmHWM)', 'notes'],
        [
          [
            `one ${(r.rss.bigMessageBytes / 1e6).toFixed(0)} MB message`,
            `${f1(r.rss.peakBigMiB)} MiB`,
            `fresh relay, idle ${f1(r.rss.rssBeforeMiB)} MiB; polled max ${f1(r.rss.polledBigMiB)} MiB; reply ${r.rss.bigMessageReply}; ${f1(r.rss.bigMessageSeconds)} s`,
          ],
          ...r.rss.sessions200.map((s) => [
            `200 sessions, UCWI ${s.ucwiLatencyMs} ms`,
            `${f1(s.peakMiB)} MiB`,
            `fresh relay; ${s.sent}/${s.messages} messages of ${r.settings.bodyBytes} bytes in ${f1(s.seconds)} s`,
          ]),
          ...Object.entries(r.peakRssDuringThroughputMiB).map(([k, v]) => [k, `${f1(v)} MiB`, 'peak over the throughput runs (information only)']),
        ],
      ),
      '',
    );
  }
  if (r.strip) {
    const x = r.strip;
    parts.push(
      '## Attachment removal (actionCode 4)',
      '',
      mdTable(
        ['case', 'messages', 'throughput', 'peak RSS (VmHWM)', 'notes'],
        [
          [
            `~${(x.messageBytes / 1e6).toFixed(1)} MB, text + PDF + ZIP, one session`,
            `${x.relayed}/${x.messages}`,
            `${x.msgPerSec} msg/s, ${x.mbPerSec} MB/s`,
            `${f1(x.peakMiB)} MiB`,
            `UCWI stub answering 4 (no scan); dry run, evidence copy in the quarantine, rewrite streamed to the sink; ${f1(x.seconds)} s; first reply ${x.firstReply}`,
          ],
        ],
      ),
      '',
    );
  }
  if (r.scaleOut) parts.push(...scaleOutMarkdown(r.scaleOut, mdTable));
  parts.push(
    '## How it was run',
    '',
    '`npm run bench` runs everything below and installs what is missing (Debian `postfix` for smtp-source/smtp-sink, with the daemon left stopped; Haraka with npm into a temp dir). `npm run bench -- --help` lists the options: `--profile` adds a `node --cpu-prof` run of the 2-worker relay with a new connection per message and summarises it, `--sessions 20` limits the session counts, `--single` adds single-process rows, `--only latency,rss` runs some scenarios, `--scale-out` adds one relay against three behind HAProxy (`--only scale-out` runs only that), `--quick` is a short smoke run, `--md-only` rewrites this file from `bench/results/latest.json`.',
    '',
    'Exact commands (ports differ per run):',
    '',
    '```',
    ...Object.entries(r.commands).map(([k, v]) => `# ${k}\n${v}`),
    '```',
    '',
  );
  if (r.errors.length) parts.push('## Errors during the run', '', ...r.errors.map((e) => `- ${e}`), '');
  parts.push('## Hand-written notes (kept between runs; they may describe earlier runs)', '', notes, '');
  writeFileSync(file, parts.join('\n'));
}
