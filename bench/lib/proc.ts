// Child-process helpers for the benchmark: bounded spawns (every one under `timeout`), stop by pid with TERM then KILL, readiness probes, and /proc readers for CPU time and memory.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Clock ticks per second for /proc/<pid>/stat utime and stime (Linux on x86_64 and arm64: 100). */
const CLK_TCK = 100;

export interface Managed {
  name: string;
  /** Pid of the `timeout` wrapper; the real program is its child (see `mainPid`). */
  child: ChildProcess;
  /** Everything the program wrote to stdout and stderr (capped), for error messages. */
  output(): string;
  /** Resolves with the exit code once the wrapper has exited. */
  exited: Promise<number | null>;
  /** Pid of the program itself (the wrapper's first child), once it has been forked. */
  mainPid(): number | undefined;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const all = new Set<Managed>();

export interface RunOptions extends SpawnOptions {
  /** Hard upper bound for the program's life, enforced by coreutils `timeout`. */
  maxSeconds: number;
  /** Called with every stdout chunk (the output is still captured). */
  onStdout?: (chunk: Buffer) => void;
  /** Keep at most this much output for diagnostics (default 64 KiB, the tail is kept). */
  keepBytes?: number;
}

/**
 * Starts `cmd args` under `timeout -k 5 <maxSeconds>` so it can never outlive the bound, even when this
 * process dies. The returned handle stops it (and every descendant) by pid.
 */
export function startManaged(name: string, cmd: string, args: string[], opts: RunOptions): Managed {
  const { maxSeconds, onStdout, keepBytes = 64 * 1024, ...spawnOpts } = opts;
  const child = spawn('timeout', ['-k', '5', String(Math.ceil(maxSeconds)), cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...spawnOpts });
  let out = '';
  const keep = (b: Buffer) => {
    out += b.toString('utf8');
    if (out.length > keepBytes) out = out.slice(out.length - keepBytes);
  };
  child.stdout?.on('data', (b: Buffer) => {
    keep(b);
    onStdout?.(b);
  });
  child.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  let stopped = false;
  const m: Managed = {
    name,
    child,
    output: () => out,
    exited,
    mainPid: () => (child.pid ? childrenOf(child.pid)[0] : undefined),
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (stopped) return exited.then(() => undefined);
      stopped = true;
      all.delete(m);
      await stopTree(child.pid, exited, signal);
    },
  };
  all.add(m);
  return m;
}

/** Stops every process started by startManaged that is still running (used in `finally` and on signals). */
export async function stopAll(): Promise<void> {
  await Promise.allSettled([...all].map((m) => m.stop()));
}

/** Direct children of a pid, from /proc/<pid>/task/<tid>/children. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const txt = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
        if (txt) out.push(...txt.split(/\s+/).map(Number));
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    // the process ended
  }
  return out;
}

/** The pid and all its descendants, parents first. */
export function treeOf(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length && out.length < 10_000; i++) out.push(...childrenOf(out[i]!));
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** TERM to the whole tree (by pid), up to 8 s for it to exit, then KILL to whatever is left. */
async function stopTree(pid: number | undefined, exited: Promise<unknown>, signal: NodeJS.Signals): Promise<void> {
  if (!pid) return;
  const pids = treeOf(pid);
  // Children first: the wrapper would otherwise forward the signal as well, harmless but noisy.
  for (const p of [...pids].reverse()) {
    try {
      process.kill(p, signal);
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + 8_000;
  while (Date.now() < deadline && pids.some(alive)) await sleep(50);
  for (const p of pids) {
    if (!alive(p)) continue;
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await Promise.race([exited, sleep(2_000)]);
}

/** Runs a command to completion under `timeout`, capturing output. Never throws for a non-zero exit. */
export async function runCommand(
  cmd: string,
  args: string[],
  opts: { maxSeconds: number; cwd?: string; env?: NodeJS.ProcessEnv; input?: string },
): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now();
  const child = spawn('timeout', ['-k', '5', String(Math.ceil(opts.maxSeconds)), cmd, ...args], {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  if (opts.input !== undefined) child.stdin?.end(opts.input);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (b: Buffer) => {
    stdout += b.toString('utf8');
    if (stdout.length > 1_000_000) stdout = stdout.slice(-500_000);
  });
  child.stderr?.on('data', (b: Buffer) => {
    stderr += b.toString('utf8');
    if (stderr.length > 1_000_000) stderr = stderr.slice(-500_000);
  });
  const code = await new Promise<number | null>((resolve) => {
    child.once('close', (c) => resolve(c));
    child.once('error', () => resolve(null));
  });
  return { code, stdout, stderr, ms: performance.now() - t0 };
}

/** A free TCP port on 127.0.0.1 (bind to 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = addr && typeof addr === 'object' ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Waits until 127.0.0.1:port accepts a connection (and, if given, the managed process is still alive). */
export async function waitForPort(port: number, timeoutMs: number, proc?: Managed): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let dead = false;
  void proc?.exited.then(() => (dead = true));
  while (Date.now() < deadline) {
    if (dead) throw new Error(`${proc!.name} exited before listening on ${port}:\n${proc!.output().slice(-3000)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms${proc ? `; ${proc.name} said:\n${proc.output().slice(-3000)}` : ''}`);
}

/** User + system CPU seconds of one process (0 when it is gone). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** User and system CPU seconds of a process and all its live descendants, apart. */
export function treeCpuSplit(pid: number): { user: number; system: number } {
  let user = 0;
  let system = 0;
  for (const p of treeOf(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      user += Number(f[11]) / CLK_TCK;
      system += Number(f[12]) / CLK_TCK;
    } catch {
      /* gone */
    }
  }
  return { user, system };
}

/** CPU seconds of a process and all its live descendants. */
export function treeCpuSeconds(pid: number): number {
  return treeOf(pid).reduce((s, p) => s + cpuSeconds(p), 0);
}

/** A field of /proc/<pid>/status in kB (VmRSS, VmHWM, ...), or undefined. */
export function statusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Polls VmRSS every `everyMs` until stopped; returns the largest value seen (kB). */
export function pollRss(pid: number, everyMs = 20): { stop(): number } {
  let max = statusKb(pid, 'VmRSS') ?? 0;
  const t = setInterval(() => {
    const v = statusKb(pid, 'VmRSS');
    if (v !== undefined && v > max) max = v;
  }, everyMs);
  return {
    stop() {
      clearInterval(t);
      return max;
    },
  };
}

/** 1-minute load average, to flag a busy machine next to the numbers. */
export function loadAvg1(): number {
  try {
    return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  } catch {
    return NaN;
  }
}

/** Machine-wide CPU ticks from /proc/stat (all cores): idle (idle + iowait) and total, to tell waiting from a full machine. */
export function machineTicks(): { idle: number; total: number } {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already inside user and nice)
    const total = f.slice(0, 8).reduce((s, v) => s + (Number.isFinite(v) ? v : 0), 0);
    return { idle: (f[3] ?? 0) + (f[4] ?? 0), total };
  } catch {
    return { idle: NaN, total: NaN };
  }
}

/** Microseconds on the monotonic clock that V8's CPU profiles stamp their samples with (both CLOCK_MONOTONIC on Linux). */
export const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);
