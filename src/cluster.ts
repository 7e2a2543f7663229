// Cluster mode (smtp.workers > 1): the supervisor forks SMTP workers that share the listen port, restarts a worker that dies, and on shutdown stops the workers before its own parts.
import cluster, { type Worker } from 'node:cluster';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { FrozenConfig } from './config/load.js';
import { startRelay, startSupervisor, type RunningRelay, type RunningSupervisor, type StartOptions } from './app.js';
import { Reloader, type ReloadReport, cannotReload } from './reload.js';

/** Environment variable that tells a forked process which worker slot it fills. */
export const WORKER_INDEX_ENV = 'DLP_RELAY_WORKER_INDEX';
/** A worker that dies is started again after this pause, so a crash loop cannot spin the CPU. */
const RESTART_DELAY_MS = 1_000;
/** A worker must be listening within this time at start-up. */
const START_TIMEOUT_MS = 30_000;

interface ReadyMessage {
  type: 'dlp-relay:ready';
  index: number;
  smtp: { host: string; port: number };
}

function isReady(m: unknown): m is ReadyMessage {
  return typeof m === 'object' && m !== null && (m as { type?: unknown }).type === 'dlp-relay:ready';
}

/** The worker's index when this process is a cluster worker, else null. */
export function workerIndex(): number | null {
  if (!cluster.isWorker) return null;
  const n = Number(process.env[WORKER_INDEX_ENV]);
  return Number.isInteger(n) && n >= 1 ? n : null;
}

/** Worker side: the SMTP relay in its own spool subdirectory; tells the supervisor once it listens. */
export async function startWorker(
  c: FrozenConfig,
  logger: Logger,
  index: number,
  reload: Pick<StartOptions, 'reloadConfig' | 'configFile'> = {},
): Promise<RunningRelay> {
  const relay = await startRelay(c, logger.child({ worker: index }), { ...reload, worker: { index } });
  // No handler for a dead supervisor: Node's cluster code exits a worker whose IPC channel drops. Its
  // clients lose the connection without a reply and retry; nothing unanswered was acknowledged.
  process.send?.({ type: 'dlp-relay:ready', index, smtp: relay.smtp } satisfies ReadyMessage);
  return relay;
}

export interface RunningCluster {
  supervisor: RunningSupervisor;
  smtp: { host: string; port: number };
  /** Pids of the workers now running, by slot. */
  workers(): Map<number, number>;
  /**
   * SIGHUP and `POST /api/v1/reload`: the supervisor re-reads and validates the file (a bad one is refused here,
   * once, and reported), then sends SIGHUP to every worker, which re-reads and applies it for its new sessions.
   */
  reload(trigger: string): Promise<ReloadReport>;
  /** SIGTERM to every worker (each finishes its messages within `graceMs`), then the supervisor's parts. */
  stop(graceMs: number): Promise<void>;
}

/** Supervisor side: its own parts first (admin, retention, CAS pusher), then `smtp.workers` workers. */
export async function startCluster(c: FrozenConfig, logger: Logger, opts: Pick<StartOptions, 'reloadConfig' | 'configFile'> = {}): Promise<RunningCluster> {
  const slots = new Map<number, Worker>();
  let stopping = false;
  const alive = (w: Worker): boolean => w.process.exitCode === null && w.process.signalCode === null;
  // The supervisor's Reloader validates and reports (applied, restart needed, problems) exactly as a single
  // relay's; "applying" is signalling the workers, each of which re-reads the same file.
  const reloader = opts.reloadConfig
    ? new Reloader(
        c,
        opts.reloadConfig,
        {
          async apply() {
            const running = [...slots.values()].filter(alive);
            for (const w of running) w.process.kill('SIGHUP');
            logger.info({ event: 'reload-forwarded', workers: running.length }, 'SIGHUP forwarded to the SMTP workers');
            return [];
          },
        },
        logger,
      )
    : null;
  const reload = (trigger: string): Promise<ReloadReport> => (reloader ? reloader.reload(trigger) : cannotReload(trigger));
  const supervisor = await startSupervisor(c, logger, { reload, lastReport: () => reloader?.lastReport ?? null, configFile: opts.configFile });

  // The workers must share one loop header key, or a copy relayed by one worker and reflected to another
  // is scanned twice: without a configured key the supervisor makes one for all of them (same warning).
  const loopKeyEnv: Record<string, string> = {};
  if (!c.secrets.loopKey) {
    loopKeyEnv['DLP_RELAY_LOOP_KEY'] = randomBytes(32).toString('base64');
    logger.warn(
      { setting: 'policy.loop.keyFile' },
      "no loop header key configured (policy.loop.keyFile or DLP_RELAY_LOOP_KEY): using a random key shared by this cluster's workers; other relays, and this one after a restart, will scan reflected mail again",
    );
  }

  /** Starts worker `index`; settles when it listens (or fails to start). A worker that dies later is started again. */
  // `kernel`: workers accept on the shared listening socket themselves. Node's default on Linux (round robin)
  // has the supervisor accept every connection and pass its handle to a worker over IPC, which cost about
  // 0.4 ms of CPU per connection in the benchmark profile, a fifth of the relay's CPU with a new connection per
  // message. The kernel spreads many connections well, a handful not always.
  cluster.schedulingPolicy = c.smtp.workerBalancing === 'kernel' ? cluster.SCHED_NONE : cluster.SCHED_RR;
  const fork = (index: number): Promise<ReadyMessage> => {
    const w = cluster.fork({ [WORKER_INDEX_ENV]: String(index), ...loopKeyEnv });
    slots.set(index, w);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`SMTP worker did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      timer.unref();
      w.on('message', (m: unknown) => {
        if (!isReady(m)) return;
        clearTimeout(timer);
        logger.info({ event: 'worker-ready', worker: index, pid: w.process.pid }, `SMTP worker ${index} ready`);
        resolve(m);
      });
      w.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`SMTP worker exited during start-up (code ${code}); see its log lines above`));
        if (slots.get(index) === w) slots.delete(index);
        if (stopping) return;
        // Its sessions were cut; their clients retry (nothing was acknowledged that was not delivered or stored).
        logger.error({ worker: index, pid: w.process.pid, code, signal }, `SMTP worker ${index} died; starting it again in ${RESTART_DELAY_MS} ms`);
        setTimeout(() => {
          // A restart that fails to start exits too, and this handler schedules the next attempt.
          if (!stopping) fork(index).catch(() => {});
        }, RESTART_DELAY_MS).unref();
      });
    });
  };

  const stopWorkers = async (graceMs: number): Promise<void> => {
    stopping = true;
    supervisor.drain();
    // /readyz now fails while the workers still serve: the balancer stops sending before they drain.
    if (graceMs > 0 && c.limits.drainDelayMs > 0) {
      logger.info({ event: 'unready', drainDelayMs: c.limits.drainDelayMs }, `readiness off, still serving for ${c.limits.drainDelayMs} ms before the drain`);
      await new Promise((r) => setTimeout(r, c.limits.drainDelayMs));
    }
    const running = [...slots.values()].filter(alive);
    for (const w of running) w.process.kill('SIGTERM');
    // Each worker bounds its own shutdown (grace + a hard exit); this bound only guards against a hung one.
    const hard = setTimeout(() => {
      for (const w of running) if (alive(w)) w.process.kill('SIGKILL');
    }, graceMs + 20_000);
    hard.unref();
    await Promise.all(running.filter(alive).map((w) => once(w, 'exit')));
    clearTimeout(hard);
  };

  try {
    const first = await Promise.all(Array.from({ length: c.smtp.workers }, (_, i) => fork(i + 1)));
    return {
      supervisor,
      smtp: first[0]!.smtp,
      workers: () => new Map([...slots].map(([i, w]) => [i, w.process.pid ?? -1])),
      reload,
      async stop(graceMs: number) {
        await stopWorkers(graceMs);
        await supervisor.stop();
      },
    };
  } catch (err) {
    await stopWorkers(0);
    await supervisor.stop();
    throw err;
  }
}
