// Summarises V8 .cpuprofile files (node --cpu-prof, one per process of a cluster) into "where the time goes": self time by area (our src/ folders, node internals, dependencies) and the top functions.
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  /** Microseconds on the monotonic clock (the one process.hrtime reads on Linux). */
  startTime: number;
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Who owns the code a sample was in: us (a src/ folder), Node.js and V8, or an npm dependency. */
export type AreaKind = 'ours' | 'node' | 'dependency';

export interface ProfileRow {
  name: string;
  kind: AreaKind;
  /** Share of busy (non-idle) sampled time, in %. */
  pct: number;
  /** Sampled busy milliseconds per message over all profiled processes (when the message count is known). */
  msPerMsg: number | null;
}

export interface ProfileSummary {
  processes: number;
  /** Sampled time over all processes, idle included (ms). */
  totalMs: number;
  /** Sampled time in which a process's main thread was not idle (ms); the percentages are shares of this. */
  busyMs: number;
  /** Share of samples in which the main thread was idle (waiting for I/O). */
  idlePct: number;
  messages: number | null;
  /** False when no sample fell inside the requested window (clocks not comparable): then every sample was counted. */
  windowed: boolean;
  byArea: ProfileRow[];
  byKind: ProfileRow[];
  topSelf: ProfileRow[];
}

function shortUrl(url: string, root: string): string {
  return url
    .replace(/^file:\/\//, '')
    .replace(/^.*\/node_modules\//, '')
    .replace(`${root}/`, '');
}

/**
 * The area of a frame. Our code runs from dist/ (the build mirrors src/) or from src/ through tsx; either way it is
 * charged to its src/ folder so a reader can find it. Frames without a URL are V8 and native code (syscalls, GC).
 */
export function areaOf(cf: CallFrame, root: string): { name: string; kind: AreaKind } {
  const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(cf.url);
  if (m) return { name: m[1]!, kind: 'dependency' };
  for (const dir of ['dist', 'src']) {
    const prefix = `${root}/${dir}/`;
    const at = cf.url.indexOf(prefix);
    if (at >= 0) {
      const rest = cf.url.slice(at + prefix.length);
      const slash = rest.indexOf('/');
      return { name: slash >= 0 ? `src/${rest.slice(0, slash)}/` : `src/${rest.replace(/\.js$/, '.ts')}`, kind: 'ours' };
    }
  }
  if (cf.url.startsWith('node:')) return { name: 'node internals (JS)', kind: 'node' };
  if (!cf.url) {
    if (cf.functionName === '(garbage collector)') return { name: 'V8 garbage collector', kind: 'node' };
    if (cf.functionName === '(program)') return { name: 'V8 (program: compiler, runtime)', kind: 'node' };
    return { name: 'native (syscalls: socket and file I/O, crypto, ...)', kind: 'node' };
  }
  return { name: `other (${shortUrl(cf.url, root).slice(0, 60)})`, kind: 'dependency' };
}

function frameKey(cf: CallFrame, root: string): string {
  const where = cf.url ? ` ${shortUrl(cf.url, root)}:${cf.lineNumber + 1}` : '';
  return `${cf.functionName || '(anonymous)'}${where}`;
}

/** Self time over several profiles (the supervisor and each worker write their own), idle excluded from the shares. */
export function summarizeProfiles(files: string[], root: string, messages: number | null, window?: { fromUs: number; toUs: number }): ProfileSummary {
  const profiles = files.map((f) => JSON.parse(readFileSync(f, 'utf8')) as CpuProfile);
  const inWindow = (t: number) => !window || (t >= window.fromUs && t <= window.toUs);
  // Sample i is taken at startTime + timeDeltas[0..i]; keep the window only if some sample lies in it.
  let windowed = false;
  if (window) {
    for (const p of profiles) {
      let t = p.startTime;
      for (let i = 0; i < p.samples.length && !windowed; i++) if (inWindow((t += p.timeDeltas[i] ?? 0))) windowed = true;
    }
  }
  const self = new Map<string, { ms: number; kind: AreaKind }>();
  const area = new Map<string, { ms: number; kind: AreaKind }>();
  const kind = new Map<string, { ms: number; kind: AreaKind }>();
  const add = (m: Map<string, { ms: number; kind: AreaKind }>, k: string, kd: AreaKind, ms: number) => {
    const cur = m.get(k);
    if (cur) cur.ms += ms;
    else m.set(k, { ms, kind: kd });
  };
  let total = 0;
  let idle = 0;
  for (const p of profiles) {
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    let t = p.startTime;
    for (let i = 0; i < p.samples.length; i++) {
      t += p.timeDeltas[i] ?? 0;
      if (windowed && !inWindow(t)) continue;
      const node = byId.get(p.samples[i]!);
      if (!node) continue;
      const ms = (p.timeDeltas[i] ?? 0) / 1000;
      total += ms;
      if (node.callFrame.functionName === '(idle)') {
        idle += ms;
        continue;
      }
      const a = areaOf(node.callFrame, root);
      add(area, a.name, a.kind, ms);
      add(kind, a.kind === 'ours' ? 'our code (src/)' : a.kind === 'node' ? 'Node.js and V8 (incl. native, GC)' : 'dependencies (node_modules)', a.kind, ms);
      add(self, frameKey(node.callFrame, root), a.kind, ms);
    }
  }
  const busy = total - idle;
  const rows = (m: Map<string, { ms: number; kind: AreaKind }>, n: number): ProfileRow[] =>
    [...m]
      .sort((a, b) => b[1].ms - a[1].ms)
      .slice(0, n)
      .map(([name, v]) => ({
        name,
        kind: v.kind,
        pct: busy > 0 ? Math.round((v.ms / busy) * 1000) / 10 : 0,
        msPerMsg: messages ? Math.round((v.ms / messages) * 1000) / 1000 : null,
      }));
  return {
    processes: files.length,
    totalMs: Math.round(total),
    busyMs: Math.round(busy),
    idlePct: total > 0 ? Math.round((idle / total) * 1000) / 10 : 0,
    messages: windowed || !window ? messages : null,
    windowed,
    byArea: rows(area, 20),
    byKind: rows(kind, 3),
    topSelf: rows(self, 20),
  };
}
