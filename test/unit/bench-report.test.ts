// The benchmark's arithmetic: profile areas and the run window, and issue 9's targets from throughput cells (a wrong grouping or ratio would misstate BENCHMARKS.md).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { summarizeProfiles } from '../../bench/lib/cpuprofile.js';
import { computeTargets } from '../../bench/lib/analysis.js';
import type { ConnMode, Results, ThroughputCell } from '../../bench/lib/report.js';

const ROOT = '/repo';
const dir = mkdtempSync(join(tmpdir(), 'bench-report-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A profile whose samples hit: our src/smtp (dist build), smtp-server, node core, idle; 1 ms apart from startTime 1000 µs. */
function writeProfile(name: string, samples: number[]): string {
  const frame = (id: number, functionName: string, url: string) => ({ id, callFrame: { functionName, url, lineNumber: 0 } });
  const p = {
    startTime: 1000,
    endTime: 1000 + samples.length * 1000,
    nodes: [
      { ...frame(1, '(root)', ''), children: [2, 3, 4, 5] },
      frame(2, 'parse', `file://${ROOT}/dist/smtp/server.js`),
      frame(3, 'onData', `file:///x/node_modules/smtp-server/lib/smtp-connection.js`),
      frame(4, 'write', 'node:net'),
      frame(5, '(idle)', ''),
    ],
    samples,
    timeDeltas: samples.map(() => 1000),
  };
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(p));
  return file;
}

describe('summarizeProfiles', () => {
  it('charges our dist/ code to its src/ folder, separates node and dependencies, and leaves idle out of the shares', () => {
    const a = writeProfile('a.cpuprofile', [2, 2, 3, 4, 5, 5]);
    const b = writeProfile('b.cpuprofile', [2, 5]);
    const s = summarizeProfiles([a, b], ROOT, 4);
    expect(s.processes).toBe(2);
    expect(s.busyMs).toBe(5);
    expect(s.idlePct).toBe(37.5);
    expect(s.byArea.map((r) => [r.name, r.kind, r.pct])).toEqual([
      ['src/smtp/', 'ours', 60],
      ['smtp-server', 'dependency', 20],
      ['node internals (JS)', 'node', 20],
    ]);
    expect(s.byArea[0]!.msPerMsg).toBe(0.75);
  });

  it('counts only samples inside the run window when one is given', () => {
    // Sample i is at 1000 + (i + 1) * 1000 µs: the window 4500..6500 holds samples 3 and 4 (node:net, idle).
    const f = writeProfile('c.cpuprofile', [2, 2, 3, 4, 5, 5]);
    const s = summarizeProfiles([f], ROOT, 1, { fromUs: 4500, toUs: 6500 });
    expect(s.windowed).toBe(true);
    expect(s.byArea.map((r) => r.name)).toEqual(['node internals (JS)']);
    expect(s.idlePct).toBe(50);
  });
});

function cellFor(system: ThroughputCell['system'], mode: ConnMode, msgPerSec: number, cpu: Record<string, number>, ok = true): ThroughputCell {
  const run = {
    system,
    ucwiLatencyMs: null,
    mode,
    sessions: 20,
    messages: 100,
    sent: 100,
    sinkReceived: 100,
    seconds: 1,
    msgPerSec,
    ok,
    cpuMsPerMsg: cpu,
    loadAvg: 1,
    machineIdlePct: 50,
  };
  return { system, ucwiLatencyMs: null, mode, sessions: 20, msgPerSec, min: msgPerSec, max: msgPerSec, runs: [run] };
}

describe('computeTargets (issue 9)', () => {
  it('compares the 2-worker rows per mode: ratio ≥ 2 passes, CPU ratio ≤ ⅓ passes, undelivered fails', () => {
    const r = {
      settings: { bodyBytes: 10240, seconds: 1, reps: 1, sessions: [20], modes: ['new-connection', 'reused'] },
      throughput: [
        cellFor('dlp-relay-2w', 'new-connection', 1000, { relay: 0.3, sim: 0.5 }),
        cellFor('haraka-2w', 'new-connection', 400, { haraka: 1.0 }),
        cellFor('dlp-relay-2w', 'reused', 700, { relay: 0.5 }, false),
        cellFor('haraka-2w', 'reused', 300, { haraka: 1.0 }),
      ],
      latency200: [],
      latency: null,
      rss: null,
    } as unknown as Results;
    const t = computeTargets(r).map((x) => [x.issue, x.name.split(',')[0], x.pass, x.measured.split(' ')[0]]);
    expect(t).toEqual([
      [9, 'throughput', true, '2.50×'],
      [9, 'CPU per message', true, '0.30'],
      [9, 'throughput', false, '2.33×'],
      [9, 'CPU per message', false, '0.50'],
    ]);
  });
});
