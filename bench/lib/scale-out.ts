// `npm run bench -- --scale-out`: one relay against three behind a real HAProxy (mode tcp, PROXY v2, /readyz checks), and the capacity per core it implies.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, runCommand, startManaged, treeCpuSeconds, waitForPort, type Managed } from './proc.js';
import { cpuOf, median, modeTitle, type ConnMode, type ThroughputCell, type ThroughputRun } from './report.js';

/** The systems of this scenario, as they appear in ThroughputRun.system. */
export const SCALE_SYSTEMS = {
  single: 'dlp-relay',
  lb1: 'dlp-relay-haproxy-1',
  lb3: 'dlp-relay-haproxy-3',
} as const;

export interface ScaleOutResult {
  haproxyVersion: string;
  sessions: number;
  /** Cores of the machine every process (load generator, HAProxy, relays, UCWI simulator, sink) shares. */
  nproc: number;
  cells: ThroughputCell[];
  /** Per connection mode: the single relay's CPU ms per message and the messages one core carries at that cost. */
  capacity: Array<{ mode: ConnMode; relayCpuMsPerMsg: number; msgPerSecPerCore: number }>;
}

interface BenchSystem {
  system: ThroughputRun['system'];
  ucwiLatencyMs: number | null;
  port: number;
  cpu: () => Record<string, number>;
}

interface BenchRelay {
  proc: Managed;
  port: number;
  pid: number;
  adminPort: number;
}

export interface ScaleOutDeps {
  work: string;
  sessions: number;
  nproc: number;
  simUrl: string;
  simPid: number;
  sinkPort: number;
  commands: Record<string, string>;
  log: (msg: string) => void;
  /** bench/run.ts's relay starter; `proxyFrom` makes the relay take PROXY v2 headers from 127.0.0.1 (HAProxy). */
  startRelay(name: string, opts: { ucwiUrl: string; sinkPort: number; logLevel: string; proxyFrom?: boolean }): Promise<BenchRelay>;
  throughputMatrix(systems: BenchSystem[], modes: readonly ConnMode[]): Promise<ThroughputCell[]>;
}

/** The configuration README "Running several relays" documents, with limits sized for a load test. */
export function benchHaproxyConfig(frontPort: number, relays: ReadonlyArray<{ name: string; port: number; adminPort: number }>): string {
  return [
    '# HAProxy for the scale-out benchmark (written by bench/lib/scale-out.ts)',
    'global',
    '  maxconn 4000',
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  retries 3',
    '  option redispatch 1',
    'frontend smtp',
    `  bind 127.0.0.1:${frontPort}`,
    '  maxconn 4000',
    '  default_backend relays',
    'backend relays',
    // leastconn suits long SMTP sessions better than roundrobin when connections are reused.
    '  balance leastconn',
    '  option httpchk GET /readyz',
    '  http-check expect status 200',
    ...relays.map((r) => `  server ${r.name} 127.0.0.1:${r.port} send-proxy-v2 check port ${r.adminPort} inter 500 fall 2 rise 2`),
    '',
  ].join('\n');
}

async function startHaproxy(d: ScaleOutDeps, name: string, relays: BenchRelay[]): Promise<{ proc: Managed; port: number }> {
  const port = await freePort();
  const file = join(d.work, `${name}.cfg`);
  const cfg = benchHaproxyConfig(
    port,
    relays.map((r, i) => ({ name: `r${i + 1}`, port: r.port, adminPort: r.adminPort })),
  );
  writeFileSync(file, cfg);
  const check = await runCommand('haproxy', ['-c', '-f', file], { maxSeconds: 20 });
  if (check.code !== 0) throw new Error(`haproxy rejects its configuration: ${check.stdout}${check.stderr}`);
  const proc = startManaged(name, 'haproxy', ['-db', '-f', file], { maxSeconds: 1800, cwd: d.work });
  await waitForPort(port, 10_000, proc);
  // Servers start UP; give the first /readyz checks (inter 500 ms) time to run before measuring.
  await sleep(1_500);
  d.commands[`HAProxy in front of ${relays.length} relay(s) (${name}.cfg)`] =
    `haproxy -db -f ${name}.cfg   # ${JSON.stringify(cfg.replace(/127\.0\.0\.1:\d+/g, '127.0.0.1:PORT').replace(/port \d+/g, 'port ADMIN'))}`;
  return { proc, port };
}

/**
 * Three rows, all single-process relays with the same UCWI simulator and sink: one relay reached
 * directly, one behind HAProxy (the balancer's own cost), three behind HAProxy. On a two-core machine
 * the three relays, the balancer, the load generator, the simulator and the sink share the same
 * cores, so the third row shows the cost of the extra hop and processes, not the gain of three
 * machines; the capacity per core comes from the single relay's CPU per message instead.
 */
export async function scaleOutScenario(d: ScaleOutDeps): Promise<ScaleOutResult> {
  const modes: readonly ConnMode[] = ['new-connection', 'reused'];
  const v = await runCommand('haproxy', ['-v'], { maxSeconds: 10 });
  if (v.code !== 0) throw new Error('haproxy is not installed (Debian package `haproxy`)');
  const haproxyVersion = /version (\S+)/i.exec(v.stdout)?.[1] ?? 'unknown';
  const started: Managed[] = [];
  try {
    const single = await d.startRelay('relay-scale-single', { ucwiUrl: d.simUrl, sinkPort: d.sinkPort, logLevel: 'warn' });
    started.push(single.proc);
    const behind1 = await d.startRelay('relay-scale-lb1', { ucwiUrl: d.simUrl, sinkPort: d.sinkPort, logLevel: 'warn', proxyFrom: true });
    started.push(behind1.proc);
    const three: BenchRelay[] = [];
    for (let i = 1; i <= 3; i++) {
      const r = await d.startRelay(`relay-scale-lb3-${i}`, { ucwiUrl: d.simUrl, sinkPort: d.sinkPort, logLevel: 'warn', proxyFrom: true });
      started.push(r.proc);
      three.push(r);
    }
    const lb1 = await startHaproxy(d, 'haproxy-1', [behind1]);
    started.push(lb1.proc);
    const lb3 = await startHaproxy(d, 'haproxy-3', three);
    started.push(lb3.proc);
    const hp = (m: Managed) => treeCpuSeconds(m.mainPid()!);
    const systems: BenchSystem[] = [
      { system: SCALE_SYSTEMS.single, ucwiLatencyMs: 0, port: single.port, cpu: () => ({ relay: treeCpuSeconds(single.pid), sim: treeCpuSeconds(d.simPid) }) },
      {
        system: SCALE_SYSTEMS.lb1,
        ucwiLatencyMs: 0,
        port: lb1.port,
        cpu: () => ({ relay: treeCpuSeconds(behind1.pid), haproxy: hp(lb1.proc), sim: treeCpuSeconds(d.simPid) }),
      },
      {
        system: SCALE_SYSTEMS.lb3,
        ucwiLatencyMs: 0,
        port: lb3.port,
        cpu: () => ({ relay: three.reduce((s, r) => s + treeCpuSeconds(r.pid), 0), haproxy: hp(lb3.proc), sim: treeCpuSeconds(d.simPid) }),
      },
    ];
    const cells = await d.throughputMatrix(systems, modes);
    const capacity = modes.map((mode) => {
      const c = cells.find((x) => x.system === SCALE_SYSTEMS.single && x.mode === mode);
      const cpu = c ? cpuOf(c, 'relay') : NaN;
      return { mode, relayCpuMsPerMsg: cpu, msgPerSecPerCore: cpu > 0 ? Math.round(1000 / cpu) : NaN };
    });
    return { haproxyVersion, sessions: d.sessions, nproc: d.nproc, cells, capacity };
  } finally {
    await Promise.all(started.map((p) => p.stop()));
  }
}

// ---- report --------------------------------------------------------------------------------------

const f0 = (v: number) => (Number.isFinite(v) ? Math.round(v).toString() : 'n/a');
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : 'n/a');

const label: Record<string, string> = {
  [SCALE_SYSTEMS.single]: 'one relay, direct',
  [SCALE_SYSTEMS.lb1]: 'one relay behind HAProxy',
  [SCALE_SYSTEMS.lb3]: 'three relays behind HAProxy',
};

function rows(s: ScaleOutResult): { head: string[]; rows: string[][] } {
  const head = ['connections', 'system', 'msg/s (median)', 'min–max', 'relay CPU ms/msg (all relays)', 'HAProxy CPU ms/msg', 'machine idle', 'all delivered'];
  const out = s.cells.map((c) => [
    c.mode === 'reused' ? 'reused' : 'new per message',
    label[c.system] ?? c.system,
    f0(c.msgPerSec),
    `${f0(c.min)}–${f0(c.max)}`,
    f2(cpuOf(c, 'relay')),
    c.system === SCALE_SYSTEMS.single ? '—' : f2(cpuOf(c, 'haproxy')),
    `${f0(median(c.runs.map((r) => r.machineIdlePct).filter(Number.isFinite)))} %`,
    c.runs.every((r) => r.ok) ? 'yes' : `NO (${c.runs.filter((r) => !r.ok).length} failed)`,
  ]);
  return { head, rows: out };
}

const caveat = (s: ScaleOutResult): string =>
  `All of it runs on one machine with ${s.nproc} cores: the three relays, HAProxy, smtp-source, the UCWI simulator and smtp-sink share them. Three relays should therefore not be expected to beat one here; the rows show what the extra hop and processes cost, not what three machines would carry. Capacity is estimated from the CPU one relay spends per message instead.`;

const capacityLines = (s: ScaleOutResult): string[] =>
  s.capacity.map(
    (c) =>
      `${modeTitle(c.mode)}: one relay spends ${f2(c.relayCpuMsPerMsg)} ms CPU per message, so one core carries about **${f0(c.msgPerSecPerCore)} msg/s** at 100 % (UCWI on other machines; plan at about half for larger messages, TLS and failover headroom).`,
  );

/** Lines for the stdout summary. */
export function scaleOutPlain(s: ScaleOutResult, table: (head: string[], rows: string[][]) => string): string[] {
  const t = rows(s);
  return [
    `Scale-out: one relay vs three behind HAProxy ${s.haproxyVersion}, ${s.sessions} sessions`,
    table(t.head, t.rows),
    caveat(s),
    ...capacityLines(s).map((l) => l.replace(/\*\*/g, '')),
    '',
  ];
}

/** The BENCHMARKS.md section. */
export function scaleOutMarkdown(s: ScaleOutResult, table: (head: string[], rows: string[][]) => string): string[] {
  const t = rows(s);
  return [
    '## Scale-out: one relay against three behind HAProxy (`--scale-out`)',
    '',
    `Single-process relays, UCWI simulator at 0 ms, ${s.sessions} smtp-source sessions; HAProxy ${s.haproxyVersion} in \`mode tcp\` with \`send-proxy-v2\` and \`/readyz\` health checks (the README's configuration).`,
    '',
    `**Caveat:** ${caveat(s)}`,
    '',
    table(t.head, t.rows),
    '',
    '**Capacity per core** (from the measured CPU per message of the single relay):',
    '',
    ...capacityLines(s).map((l) => `- ${l}`),
    '',
  ];
}
