// Cluster mode (smtp.workers: 2) as a real process tree: both workers take sessions, /metrics sums them, a killed worker comes back, SIGTERM ends cleanly with an empty spool.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { startRawSink, type RawSink } from '../helpers/raw-sink.js';
import { relayEnv, spawnRelay, type CliRelay } from '../helpers/cli-relay.js';
import { eventually, message, sendMessage, SIM_KEYS } from '../helpers/chain.js';
import { SmtpSession } from '../helpers/raw-smtp.js';
import { testTempDir } from '../helpers/tmp.js';

const TOKEN = 'cluster-test-admin-token-0123';

/**
 * The client gets the next hop's own final reply, passed through verbatim: the raw sink's "queued as RAW<n>"
 * for the n-th message it committed, which must be the message this client sent (not another worker's).
 */
function expectQueuedReply(sink: RawSink, reply: string, body: string): void {
  const m = /^250 2\.0\.0 Ok: queued as RAW(\d+)$/.exec(reply);
  expect(m, reply).not.toBeNull();
  expect(sink.committed[Number(m![1]) - 1]?.data.toString('latin1')).toContain(body);
}

describe('cluster mode: two SMTP workers under one supervisor', () => {
  let sim: UcwiSim;
  let sink: RawSink;
  let root: string;
  let relay: CliRelay;
  let adminUrl: string;

  const metricsText = async (): Promise<string> => {
    const r = await fetch(`${adminUrl}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(200);
    return r.text();
  };
  /** Sum of one metric's samples whose labels contain `labels`. */
  const sample = (text: string, name: string, labels = ''): number =>
    text
      .split('\n')
      .filter((l) => l.startsWith(name) && l.includes(labels) && !l.startsWith('#'))
      .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
  const workerLines = () => relay.logs().filter((l) => l['event'] === 'message');
  const startedWorkers = (): Record<string, number> => (relay.logs().find((l) => l['event'] === 'started')?.['workers'] ?? {}) as Record<string, number>;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-cluster-'));
    sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    sink = await startRawSink();
    relay = await spawnRelay(
      relayEnv(root, sink.port, sim.url, {
        DLP_RELAY_WORKERS: '2',
        DLP_RELAY_WORKER_BALANCING: 'round-robin',
        DLP_RELAY_ADMIN_TOKEN: TOKEN,
        DLP_RELAY_LOG_LEVEL: 'info',
      }),
      ['--grace', '2000'],
    );
    const m = /admin: +(http:\/\/127\.0\.0\.1:\d+) \(metrics summed over the workers\)/.exec(relay.stderr());
    expect(m).not.toBeNull();
    adminUrl = m![1]!;
  }, 60_000);

  afterAll(async () => {
    relay?.kill();
    await sink?.close();
    await sim?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('the banner names the worker count and the started line the pid of each worker', async () => {
    expect(relay.stderr()).toContain('(SMTP, 2 worker processes)');
    await eventually(() => Object.keys(startedWorkers()).length === 2, 5000);
    const w = startedWorkers();
    expect(Object.keys(w).sort()).toEqual(['1', '2']);
    expect(w['1']).not.toBe(w['2']);
    expect(w['1']).not.toBe(relay.proc.pid);
  });

  it('sessions spread over both workers; every reply is the policy answer; /metrics sums the workers', async () => {
    const bodies = Array.from({ length: 8 }, (_, i) => (i === 3 ? 'please block DLPTEST-ACTION-2 now' : `clean message ${i}`));
    const replies = await Promise.all(bodies.map((b) => sendMessage(relay.port, message(b))));
    expect(sink.committed).toHaveLength(7);
    replies.forEach((r, i) => {
      if (i === 3) expect(r.data).toMatch(/^550 5\.7\.1 /);
      else expectQueuedReply(sink, r.data, bodies[i]!);
    });
    await eventually(() => workerLines().length === 8, 5000);
    const byWorker = new Set(workerLines().map((l) => l['worker']));
    expect(byWorker).toEqual(new Set([1, 2]));
    const text = await metricsText();
    expect(sample(text, 'dlp_relay_messages_total', 'reply_class="2xx"')).toBe(7);
    expect(sample(text, 'dlp_relay_messages_total', 'reply_class="5xx"')).toBe(1);
    // The supervisor's own store gauge appears once, not once per worker.
    expect(text.match(/^dlp_relay_quarantine_messages /gm)).toHaveLength(1);
    const ready = await fetch(`${adminUrl}/readyz`);
    expect(ready.status).toBe(200);
  });

  it('a worker killed with SIGKILL is started again and the relay keeps answering', async () => {
    const pid = startedWorkers()['1']!;
    process.kill(pid, 'SIGKILL');
    await eventually(() => relay.logs().some((l) => typeof l['msg'] === 'string' && l['msg'].startsWith('SMTP worker 1 died')), 5000);
    // Meanwhile worker 2 takes every session.
    const before = sink.committed.length;
    const during = await Promise.all(Array.from({ length: 3 }, (_, i) => sendMessage(relay.port, message(`while worker 1 is down ${i}`))));
    for (const r of during) expect(r.data).toMatch(/^250 2\.0\.0 /);
    const readyAgain = () => relay.logs().find((l) => l['event'] === 'worker-ready' && l['worker'] === 1 && l['pid'] !== pid);
    await eventually(() => readyAgain() !== undefined, 10_000);
    const linesBefore = workerLines().length;
    const after = await Promise.all(Array.from({ length: 6 }, (_, i) => sendMessage(relay.port, message(`after the restart ${i}`))));
    for (const r of after) expect(r.data).toMatch(/^250 2\.0\.0 /);
    expect(sink.committed.length - before).toBe(9);
    // The new worker 1 takes sessions again.
    await eventually(() => workerLines().length === linesBefore + 6, 5000);
    expect(
      new Set(
        workerLines()
          .slice(linesBefore)
          .map((l) => l['worker']),
      ),
    ).toEqual(new Set([1, 2]));
  });

  it('SIGTERM stops the workers and the supervisor: exit 0, no spool file left', async () => {
    relay.kill('SIGTERM');
    expect((await relay.exited).code).toBe(0);
    const spool = join(root, 'spool');
    const left = readdirSync(spool, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
    expect(left.map((e) => e.name)).toEqual([]);
    expect(readdirSync(spool).sort()).toEqual(['w1', 'w2']);
  });
});

describe('cluster mode: the supervisor killed', () => {
  it('its workers exit too (Node ends a worker whose IPC channel drops) instead of lingering as orphans', async () => {
    const root = mkdtempSync(join(tmpdir(), 'dlp-cluster-orphan-'));
    const sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    const sink = await startRawSink();
    const relay = await spawnRelay(
      relayEnv(root, sink.port, sim.url, { DLP_RELAY_WORKERS: '2', DLP_RELAY_WORKER_BALANCING: 'round-robin', DLP_RELAY_LOG_LEVEL: 'info' }),
      ['--grace', '2000'],
    );
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    try {
      await eventually(() => relay.logs().some((l) => l['event'] === 'started'), 5000);
      const pids = Object.values(relay.logs().find((l) => l['event'] === 'started')!['workers'] as Record<string, number>);
      expect(pids).toHaveLength(2);
      expect(pids.every(alive)).toBe(true);
      relay.kill('SIGKILL');
      await relay.exited;
      await eventually(() => !pids.some(alive), 15_000);
    } finally {
      relay.kill();
      await sink.close();
      await sim.close();
      rmSync(root, { recursive: true, force: true });
    }
  }, 30_000);
});

describe('cluster mode with the embedded DLP engine', () => {
  it('each worker talks to its own engine (a shared port would mix up their made-up keys and answer 401)', async () => {
    const root = mkdtempSync(join(tmpdir(), 'dlp-cluster-embedded-'));
    const sink = await startRawSink();
    const env = relayEnv(root, sink.port, 'unused', { DLP_RELAY_WORKERS: '2', DLP_RELAY_WORKER_BALANCING: 'round-robin', DLP_RELAY_LOG_LEVEL: 'info' });
    // No UCWI URL and no keys: every process starts its embedded engine on a port of its own.
    delete env['DLP_RELAY_UCWI_URL'];
    delete env['DLP_RELAY_UCWI_ACCESS_KEY'];
    delete env['DLP_RELAY_UCWI_SECRET_KEY'];
    const relay = await spawnRelay(env, ['--grace', '2000']);
    try {
      expect(relay.stderr()).toContain('embedded engine');
      const replies = await Promise.all(Array.from({ length: 6 }, (_, i) => sendMessage(relay.port, message(`embedded ${i}`))));
      expect(sink.committed).toHaveLength(6);
      replies.forEach((r, i) => expectQueuedReply(sink, r.data, `embedded ${i}`));
      await eventually(() => relay.logs().filter((l) => l['event'] === 'message').length === 6, 5000);
      expect(
        new Set(
          relay
            .logs()
            .filter((l) => l['event'] === 'message')
            .map((l) => l['worker']),
        ),
      ).toEqual(new Set([1, 2]));
      relay.kill('SIGTERM');
      expect((await relay.exited).code).toBe(0);
    } finally {
      relay.kill();
      await sink.close();
      rmSync(root, { recursive: true, force: true });
    }
  }, 30_000);
});

describe("cluster mode: reload and status through the supervisor's admin API", () => {
  it('POST /api/v1/reload validates once and reloads every worker; a bad file is refused with 422; status sums sessions', async () => {
    const root = testTempDir('dlp-cluster-reload-');
    const sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    const sink = await startRawSink();
    const confFile = join(root, 'dlp-relay.yaml');
    const reject6 = 'policy:\n  actions:\n    "6": { action: reject, code: 550, enhanced: "5.7.1" }\n';
    writeFileSync(confFile, '# cluster reload test\n');
    const relay = await spawnRelay(
      relayEnv(root, sink.port, sim.url, {
        DLP_RELAY_WORKERS: '2',
        DLP_RELAY_WORKER_BALANCING: 'round-robin',
        DLP_RELAY_ADMIN_TOKEN: TOKEN,
        DLP_RELAY_LOG_LEVEL: 'info',
      }),
      ['--config', confFile, '--grace', '2000'],
    );
    const session = await SmtpSession.connect(relay.port).catch(() => null);
    try {
      const adminUrl = /admin: +(http:\/\/127\.0\.0\.1:\d+) \(metrics summed over the workers\)/.exec(relay.stderr())![1]!;
      const api = (method: string, path: string) => fetch(`${adminUrl}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}` } });
      const iban = readFileSync('fixtures/quoted-printable.eml', 'utf8');
      const reloadedWorkers = () =>
        new Set(
          relay
            .logs()
            .filter((l) => l['event'] === 'reloaded' && l['worker'] !== undefined)
            .map((l) => l['worker']),
        );

      // Status: the open session above is counted, summed over the workers.
      expect(session).not.toBeNull();
      let status: Record<string, unknown> = {};
      for (const until = Date.now() + 10_000; status['sessions'] !== 1 && Date.now() < until; await new Promise((r) => setTimeout(r, 100))) {
        status = (await (await api('GET', '/api/v1/status')).json()) as Record<string, unknown>;
      }
      expect(status).toMatchObject({ sessions: 1, configFile: confFile });

      expect((await sendMessage(relay.port, iban)).data).toMatch(/^250 .*held for review/);
      writeFileSync(confFile, reject6);
      const ok = await api('POST', '/api/v1/reload');
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({ ok: true, trigger: 'admin-api', applied: ['policy.actions.6'], problems: [] });
      // Each worker re-reads the file on the SIGHUP the supervisor sent it.
      await eventually(() => reloadedWorkers().size === 2, 15_000);
      const after = await Promise.all(Array.from({ length: 4 }, () => sendMessage(relay.port, iban)));
      for (const r of after) expect(r.data).toMatch(/^550 5\.7\.1 /);

      const forwarded = () => relay.logs().filter((l) => l['event'] === 'reload-forwarded').length;
      const before = forwarded();
      writeFileSync(confFile, 'policy:\n  onDlpError: explode\n');
      const bad = await api('POST', '/api/v1/reload');
      expect(bad.status).toBe(422);
      const report = (await bad.json()) as { ok: boolean; problems: Array<{ path: string }> };
      expect(report.ok).toBe(false);
      expect(report.problems.map((p) => p.path)).toContain('policy.onDlpError');
      expect(forwarded()).toBe(before); // the workers were not bothered with a bad file
      expect((await sendMessage(relay.port, iban)).data).toMatch(/^550 5\.7\.1 /);
      expect(((await (await api('GET', '/api/v1/status')).json()) as { lastReload: { ok: boolean } }).lastReload.ok).toBe(false);
    } finally {
      session?.close();
      relay.kill('SIGTERM');
      await relay.exited;
      await sink.close();
      await sim.close();
    }
  }, 90_000);
});
