// Summarises a V8 .cpuprofile (from node --cpu-prof): top functions by self time, and self time grouped by package.
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
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileRow {
  name: string;
  pct: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** Share of samples in which the main thread was idle (waiting for I/O). */
  idlePct: number;
  topSelf: ProfileRow[];
  byPackage: ProfileRow[];
  /** Inclusive share of a few relay entry points (time spent in them and everything they call synchronously). */
  inclusive: ProfileRow[];
}

function shortUrl(url: string, root: string): string {
  return url
    .replace(/^file:\/\//, '')
    .replace(/^.*\/node_modules\//, '')
    .replace(`${root}/`, '');
}

function frameKey(cf: CallFrame, root: string): string {
  const where = cf.url ? ` ${shortUrl(cf.url, root)}:${cf.lineNumber + 1}` : '';
  return `${cf.functionName || '(anonymous)'}${where}`;
}

/** Which bucket a frame's time belongs to: an npm package, our own code, node core, or a V8/native pseudo-frame. */
function packageOf(cf: CallFrame, root: string): string {
  const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(cf.url);
  if (m) return m[1]!;
  if (cf.url.includes(`${root}/dist/`) || cf.url.includes(`${root}/src/`)) return 'dlp-relay (own code)';
  if (cf.url.startsWith('node:')) return 'node core (JS)';
  if (!cf.url) {
    if (['(idle)', '(garbage collector)', '(program)'].includes(cf.functionName)) return cf.functionName;
    return 'native (syscalls: socket/fs writes, opens, ...)';
  }
  return 'other';
}

export function summarizeProfile(file: string, root: string, inclusiveOf: RegExp[] = []): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<string, number>();
  const pkg = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i]!);
    if (!node) continue;
    const d = p.timeDeltas[i] ?? 0;
    total += d;
    if (node.callFrame.functionName === '(idle)') idle += d;
    const k = frameKey(node.callFrame, root);
    self.set(k, (self.get(k) ?? 0) + d);
    const pk = packageOf(node.callFrame, root);
    pkg.set(pk, (pkg.get(pk) ?? 0) + d);
    if (inclusiveOf.length) {
      const seen = new Set<string>();
      for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
        const key = frameKey(byId.get(id)!.callFrame, root);
        if (!seen.has(key) && inclusiveOf.some((r) => r.test(key))) {
          seen.add(key);
          incl.set(key, (incl.get(key) ?? 0) + d);
        }
      }
    }
  }
  const rows = (m: Map<string, number>, n: number): ProfileRow[] =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, v]) => ({ name, pct: Math.round((v / total) * 1000) / 10 }));
  return { totalMs: Math.round(total / 1000), idlePct: Math.round((idle / total) * 1000) / 10, topSelf: rows(self, 30), byPackage: rows(pkg, 15), inclusive: rows(incl, 20) };
}
