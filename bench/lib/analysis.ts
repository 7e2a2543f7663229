// Targets (issue 9's, and issue 5's kept for regressions) and the analysis sentences of BENCHMARKS.md, both computed from the measured numbers so the text never claims what the run did not show.
import { cpuOf, median, modeTitle, type ConnMode, type Results, type Target, type ThroughputCell } from './report.js';

/** The rows the issue 9 targets compare: both systems with 2 worker processes. */
export const RELAY = 'dlp-relay-2w';
export const HARAKA = 'haraka-2w';
/** Issue 9: relay ≥ 2× Haraka's throughput in both connection modes; relay CPU per message ≤ ⅓ of Haraka's. */
export const THROUGHPUT_GOAL = 2;
export const CPU_GOAL = 1 / 3;

const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : 'n/a');
const f0 = (v: number) => (Number.isFinite(v) ? Math.round(v).toString() : 'n/a');

export function cellOf(r: Results, system: string, mode: ConnMode, sessions: number): ThroughputCell | undefined {
  return r.throughput.find((c) => c.system === system && c.mode === mode && c.sessions === sessions);
}

const delivered = (c: ThroughputCell) => c.runs.every((x) => x.ok);

export function computeTargets(r: Results): Target[] {
  const out: Target[] = [];
  for (const mode of r.settings.modes) {
    for (const n of r.settings.sessions) {
      const ours = cellOf(r, RELAY, mode, n);
      const h = cellOf(r, HARAKA, mode, n);
      if (!ours || !h) continue;
      const ok = delivered(ours) && delivered(h);
      const ratio = ours.msgPerSec / h.msgPerSec;
      out.push({
        issue: 9,
        name: `throughput, ${mode === 'new-connection' ? 'new connection per message' : 'reused connections'}, ${n} sessions (relay ÷ Haraka)`,
        goal: `≥ ${THROUGHPUT_GOAL.toFixed(1)}×`,
        measured: `${f2(ratio)}× (${f0(ours.msgPerSec)} vs ${f0(h.msgPerSec)} msg/s)${ok ? '' : '; not all messages delivered'}`,
        pass: ok && ratio >= THROUGHPUT_GOAL,
      });
      const mine = cpuOf(ours, 'relay');
      const theirs = cpuOf(h, 'haraka');
      const cpuRatio = mine / theirs;
      out.push({
        issue: 9,
        name: `CPU per message, ${mode === 'new-connection' ? 'new connection per message' : 'reused connections'}, ${n} sessions (relay tree ÷ Haraka tree)`,
        goal: '≤ 0.33 (one third)',
        measured: `${f2(cpuRatio)} (relay ${f2(mine)} ms vs Haraka ${f2(theirs)} ms)`,
        pass: Number.isFinite(cpuRatio) ? ok && cpuRatio <= CPU_GOAL : null,
      });
    }
  }
  if (r.latency) {
    out.push({
      issue: 5,
      name: 'added latency p50 (excl. UCWI)',
      goal: '≤ 3 ms',
      measured: `${r.latency.addedP50.toFixed(2)} ms`,
      pass: r.latency.addedP50 <= 3,
    });
    out.push({
      issue: 5,
      name: 'added latency p99 (excl. UCWI)',
      goal: '≤ 15 ms',
      measured: `${r.latency.addedP99.toFixed(2)} ms`,
      pass: r.latency.addedP99 <= 15,
    });
  }
  if (r.rss) {
    const okReply = r.rss.bigMessageReply.startsWith('250');
    out.push({
      issue: 5,
      name: `peak RSS, one ${(r.rss.bigMessageBytes / 1e6).toFixed(0)} MB message`,
      goal: '≤ 200 MB (190.7 MiB)',
      measured: `${r.rss.peakBigMiB.toFixed(1)} MiB${okReply ? '' : ` (reply ${r.rss.bigMessageReply})`}`,
      pass: okReply && r.rss.peakBigMiB * 1024 * 1024 <= 200e6,
    });
  }
  for (const c of r.latency200) {
    const ideal = c.sessions / ((c.ucwiLatencyMs ?? 200) / 1000);
    const eff = c.msgPerSec / ideal;
    out.push({
      issue: 5,
      name: `throughput at UCWI 200 ms, ${c.sessions} sessions`,
      goal: `≥ 90 % of ${Math.round(ideal)} msg/s`,
      measured: `${(eff * 100).toFixed(1)} % (${Math.round(c.msgPerSec)} msg/s)`,
      pass: eff >= 0.9,
    });
  }
  return out;
}

/** Sentences for BENCHMARKS.md, each one a reading of numbers in this run's tables. */
export function analyse(r: Results): string[] {
  const out: string[] = [];
  const cores = r.machine.nproc;
  const i9 = r.targets.filter((t) => t.issue === 9 && t.pass !== null);
  if (i9.length) out.push(`${i9.filter((t) => t.pass).length} of ${i9.length} issue 9 targets pass in this run.`);
  for (const mode of r.settings.modes) {
    for (const n of r.settings.sessions) {
      const ours = cellOf(r, RELAY, mode, n);
      const h = cellOf(r, HARAKA, mode, n);
      if (!ours || !h) continue;
      const direct = cellOf(r, 'direct', mode, n);
      const mine = cpuOf(ours, 'relay');
      const theirs = cpuOf(h, 'haraka');
      const sim = cpuOf(ours, 'sim');
      let s = `With ${modeTitle(mode)} and ${n} sessions the relay did ${f0(ours.msgPerSec)} msg/s and Haraka ${f0(h.msgPerSec)} msg/s (${f2(ours.msgPerSec / h.msgPerSec)}×, goal ≥ ${THROUGHPUT_GOAL}×)`;
      s += direct ? `; smtp-source straight to smtp-sink did ${f0(direct.msgPerSec)} msg/s.` : '.';
      // Little's law: each session has one message in flight, so n / rate is the time a message occupies a session.
      const perMsgMs = (c: ThroughputCell) => (n / c.msgPerSec) * 1000;
      s += ` A message occupied a session for ${f2(perMsgMs(ours))} ms through the relay and ${f2(perMsgMs(h))} ms through Haraka.`;
      out.push(s);
      if (Number.isFinite(mine) && Number.isFinite(theirs)) {
        const busyCores = ((mine + (Number.isFinite(sim) ? sim : 0)) * ours.msgPerSec) / 1000;
        const idle = median(ours.runs.map((x) => x.machineIdlePct).filter(Number.isFinite));
        let c = `CPU per message: relay ${f2(mine)} ms (all its processes) vs Haraka ${f2(theirs)} ms, ratio ${f2(mine / theirs)} (goal ≤ 0.33)`;
        if (Number.isFinite(sim)) c += `; the UCWI simulator added ${f2(sim)} ms per message on the same cores, which Haraka does not pay`;
        c += `. The relay${Number.isFinite(sim) ? ' and the simulator' : ''} kept ${f2(busyCores)} of ${cores} cores busy while the machine as a whole was ${Number.isFinite(idle) ? idle.toFixed(0) : 'n/a'} % idle`;
        // With idle cores left the sessions were waiting, not queued for CPU: the limit is a delay, not computation.
        // With none left (ours or other work), part of every wait is for a core, and nothing more can be said.
        c +=
          Number.isFinite(idle) && idle >= 25
            ? `, so the relay was not CPU-bound: of the ${f2(perMsgMs(ours))} ms a message held a session, about ${f2(perMsgMs(ours) - mine)} ms were waiting (on a delay, the UCWI server, the next hop or the client), not computing.`
            : `, so the cores were saturated${busyCores < cores / 2 ? ', mostly by processes outside the relay' : ''}: throughput here is bounded by CPU, and waits include waiting for a core.`;
        out.push(c);
      }
    }
  }
  // A new connection per message costs a greeting, EHLO and QUIT more than a reused one; the CPU difference is that cost.
  for (const n of r.settings.sessions) {
    const parts: string[] = [];
    for (const [sys, group, name] of [
      [RELAY, 'relay', 'the relay'],
      [HARAKA, 'haraka', 'Haraka'],
    ] as const) {
      const nc = cellOf(r, sys, 'new-connection', n);
      const re = cellOf(r, sys, 'reused', n);
      if (!nc || !re) continue;
      parts.push(
        `${name} ${f2(cpuOf(nc, group) - cpuOf(re, group))} ms of CPU per connection and ran at ${f0((nc.msgPerSec / re.msgPerSec) * 100)} % of its reused-connection rate`,
      );
    }
    if (parts.length) out.push(`At ${n} sessions a new connection per message cost ${parts.join('; ')}.`);
  }
  for (const mode of r.settings.modes) {
    for (const n of r.settings.sessions) {
      const stub = cellOf(r, 'dlp-relay-stub-2w', mode, n);
      const h = cellOf(r, HARAKA, mode, n);
      if (stub && h)
        out.push(
          `Diagnostic, ${modeTitle(mode)}, ${n} sessions: with a no-scan UCWI stub instead of the simulator (the DLP engine's CPU off this machine) the relay did ${f0(stub.msgPerSec)} msg/s, ${f2(stub.msgPerSec / h.msgPerSec)}× Haraka, at ${f2(cpuOf(stub, 'relay'))} ms CPU per message.`,
        );
    }
  }
  const p = r.profile;
  if (p && p.byKind.length) {
    const share = (name: string) => p.byKind.find((k) => k.name.startsWith(name))?.pct ?? 0;
    const top = p.byArea[0];
    const fn = p.topSelf[0];
    out.push(
      `Profile (${modeTitle(p.mode)}, ${p.sessions} sessions): our code took ${share('our code').toFixed(1)} % of the relay's busy time, Node.js and V8 ${share('Node.js').toFixed(1)} %, dependencies ${share('dependencies').toFixed(1)} %.` +
        (top ? ` The largest area is ${top.name} (${top.pct.toFixed(1)} %)` : '') +
        (fn ? `, the largest single function \`${fn.name}\` (${fn.pct.toFixed(1)} %).` : '.') +
        ` The main threads were idle ${p.idlePct.toFixed(1)} % of the sampled time.` +
        (p.cpuSplit
          ? ` From /proc over the same run: ${p.cpuSplit.userMsPerMsg.toFixed(2)} ms user and ${p.cpuSplit.systemMsPerMsg.toFixed(2)} ms system CPU per message, so the kernel's share is ${((100 * p.cpuSplit.systemMsPerMsg) / (p.cpuSplit.userMsPerMsg + p.cpuSplit.systemMsPerMsg || 1)).toFixed(0)} %: sampled time in socket writes includes preemption, not only system calls.`
          : ''),
    );
  }
  const loads = r.throughput.flatMap((c) => c.runs.map((x) => x.loadAvg)).filter(Number.isFinite);
  if (loads.length) {
    const load = median(loads);
    out.push(
      load > cores + 1
        ? `The median 1-minute load average at the start of the runs was ${load.toFixed(1)} on ${cores} cores: other work shared the CPU, so absolute rates are noisy; the ratios compare systems measured in alternation within the same minutes.`
        : `The median 1-minute load average at the start of the runs was ${load.toFixed(1)} on ${cores} cores (this benchmark's own load included).`,
    );
  }
  const failed = [...r.throughput, ...r.latency200].filter((c) => !delivered(c));
  if (failed.length)
    out.push(
      `Runs that did not deliver every message: ${failed.map((c) => `${c.system} ${c.mode} ${c.sessions} sessions`).join(', ')} (see the errors in latest.json); their rates are not comparable.`,
    );
  return out;
}
