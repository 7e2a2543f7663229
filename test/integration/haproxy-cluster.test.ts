// Three relays behind a real HAProxy (tcp, send-proxy-v2, httpchk /readyz) with one shared PostgreSQL quarantine: an MTA-like client sends while each relay is restarted in turn and one is SIGKILLed; nothing is lost, duplicates only after the final dot, counted.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startSink, SIM_KEYS } from '../helpers/chain.js';
import { relayEnv, spawnRelay, type CliRelay } from '../helpers/cli-relay.js';
import { freePort, haproxyAvailable, haproxyConfig, mtaAttempt, startHaproxy, type Attempt, type Backend } from '../helpers/haproxy.js';
import { dropSchemas, freshSchema, pgAdmin, schemaUrl } from '../helpers/pg.js';
import { startUcwiSim } from '../../src/engine/server.js';

/** Bounded in count and time: at least MIN messages, more while the restarts are still going, never above MAX. */
const MIN = Number(process.env['DLP_TEST_HAPROXY_MESSAGES'] ?? 1000);
const MAX = 3000;
const CONCURRENCY = 6;
/** The client's own address: a loopback alias, so HAProxy's socket address (127.0.0.1) is not it. */
const CLIENT_ADDR = '127.0.0.2';
const VERDICTS = ['relay', 'quarantine', 'reject'] as const;
const TRIGGER = { relay: 'nothing sensitive here', quarantine: 'DLPTEST-ACTION-6', reject: 'DLPTEST-ACTION-2' } as const;

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('three relays behind HAProxy', () => {
  it('rolling restarts and a SIGKILL lose nothing; duplicates only in the post-dot window', { timeout: 300_000 }, async () => {
    expect(haproxyAvailable(), 'haproxy must be installed (Debian package haproxy; .ci/run installs it)').toBe(true);
    const root = mkdtempSync(join(tmpdir(), 'dlp-haproxy-'));
    cleanups.push(() => rmSync(root, { recursive: true, force: true }));
    const schema = await freshSchema('q_haproxy');
    cleanups.push(() => dropSchemas([schema]));
    const sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    cleanups.push(() => sim.close());
    const sink = await startSink();
    cleanups.push(() => sink.close());

    const backends: Backend[] = [];
    for (let i = 1; i <= 3; i++) backends.push({ name: `r${i}`, smtpPort: await freePort(), adminPort: await freePort() });
    // PROXY headers are accepted from HAProxy only; the allowed client is the address inside them.
    const cfgFile = join(root, 'relay.yaml');
    writeFileSync(cfgFile, 'smtp:\n  proxyProtocolFrom: ["127.0.0.1/32"]\n');
    const all: CliRelay[] = [];
    const current = new Map<string, CliRelay>();
    const start = async (b: Backend): Promise<void> => {
      const dir = join(root, b.name);
      mkdirSync(dir, { recursive: true });
      const env = relayEnv(dir, sink.port, sim.url, {
        DLP_RELAY_LISTEN: `127.0.0.1:${b.smtpPort}`,
        DLP_RELAY_ADMIN_LISTEN: `127.0.0.1:${b.adminPort}`,
        DLP_RELAY_ALLOWED_CLIENTS: `${CLIENT_ADDR}/32`,
        DLP_RELAY_QUARANTINE_URL: schemaUrl(schema),
        // Longer than HAProxy's inter x fall (300 ms x 2): it stops sending before the drain starts.
        DLP_RELAY_DRAIN_DELAY_MS: '1500',
        DLP_RELAY_LOG_LEVEL: 'info',
      });
      const r = await spawnRelay(env, ['--config', cfgFile], 60_000);
      all.push(r);
      current.set(b.name, r);
    };
    // One at a time: the first applies the quarantine schema migration.
    for (const b of backends) await start(b);
    cleanups.push(() => all.forEach((r) => r.kill()));
    const frontPort = await freePort();
    const haproxy = await startHaproxy(root, haproxyConfig(frontPort, backends));
    cleanups.push(() => haproxy.close());

    // --- the sending MTA: every message retried on 4xx/timeouts until accepted or rejected (bounded) ---
    let next = 0;
    let chaosDone = false;
    const attempts = new Map<number, Attempt[]>();
    const finals = new Map<number, Attempt>();
    const deadline = Date.now() + 240_000;
    const worker = async (): Promise<void> => {
      for (;;) {
        if (next >= MAX || (chaosDone && next >= MIN) || Date.now() > deadline) return;
        const seq = next++;
        const verdict = VERDICTS[seq % 3]!;
        const data = `From: <s${seq}@example.test>\r\nTo: <rcpt@example.test>\r\nSubject: seq ${seq}\r\nMessage-ID: <seq-${seq}@example.test>\r\n\r\nmessage ${seq}: ${TRIGGER[verdict]}\r\n`;
        const list: Attempt[] = [];
        attempts.set(seq, list);
        for (let n = 0; n < 60 && Date.now() < deadline; n++) {
          const a = await mtaAttempt(frontPort, CLIENT_ADDR, `s${seq}@example.test`, 'rcpt@example.test', data);
          list.push(a);
          if (a.kind !== 'deferred') {
            finals.set(seq, a);
            break;
          }
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    };
    const sent = (): number => finals.size;
    const waitSent = async (n: number): Promise<void> => {
      while (sent() < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    };
    const restart = async (b: Backend, signal: 'SIGTERM' | 'SIGKILL'): Promise<void> => {
      const r = current.get(b.name)!;
      r.kill(signal);
      const exit = await Promise.race([r.exited, new Promise<'hung'>((res) => setTimeout(() => res('hung'), 30_000))]);
      expect(exit, `${b.name} after ${signal}`).toEqual(signal === 'SIGTERM' ? { code: 0, signal: null } : { code: null, signal: 'SIGKILL' });
      await start(b);
    };
    const chaos = (async () => {
      try {
        await waitSent(50);
        await restart(backends[0]!, 'SIGTERM');
        await waitSent(sent() + 50);
        await restart(backends[1]!, 'SIGTERM');
        await waitSent(sent() + 50);
        await restart(backends[2]!, 'SIGTERM');
        await waitSent(sent() + 50);
        await restart(backends[1]!, 'SIGKILL');
        await waitSent(sent() + 50);
      } finally {
        chaosDone = true;
      }
    })();
    await Promise.all([chaos, ...Array.from({ length: CONCURRENCY }, worker)]);

    // --- accounting ---
    const total = attempts.size;
    expect(total).toBeGreaterThanOrEqual(MIN);
    const quarantined = await pgAdmin((c) =>
      c.query<{ sender: string; client_address: string }>(`SELECT sender, client_address FROM ${schema}.quarantine_messages`),
    );
    const copies = (rows: string[]): Map<number, number> => {
      const m = new Map<number, number>();
      for (const s of rows) {
        const seq = Number(/^s(\d+)@/.exec(s)?.[1] ?? -1);
        m.set(seq, (m.get(seq) ?? 0) + 1);
      }
      return m;
    };
    const inSink = copies(sink.messages.map((m) => m.from));
    const inQuarantine = copies(quarantined.rows.map((r) => r.sender));
    let duplicates = 0;
    let ambiguous = 0;
    const problems: string[] = [];
    for (const [seq, list] of attempts) {
      const verdict = VERDICTS[seq % 3]!;
      const final = finals.get(seq);
      const amb = list.filter((a) => a.ambiguous).length;
      ambiguous += amb;
      const s = inSink.get(seq) ?? 0;
      const q = inQuarantine.get(seq) ?? 0;
      if (!final) problems.push(`seq ${seq}: never accepted or rejected (${list.length} attempts, last ${list.at(-1)?.reply})`);
      else if (verdict === 'reject' && (final.kind !== 'rejected' || !/^550 /.test(final.reply))) problems.push(`seq ${seq}: expected 550, got ${final.reply}`);
      else if (verdict !== 'reject' && final.kind !== 'accepted') problems.push(`seq ${seq}: expected 250, got ${final.reply}`);
      const want = verdict === 'relay' ? [s, q] : verdict === 'quarantine' ? [q, s] : [0, s + q];
      if (verdict !== 'reject' && want[0]! < 1) problems.push(`seq ${seq} (${verdict}): lost`);
      if (want[1]! > 0) problems.push(`seq ${seq} (${verdict}): ended up in the wrong place (sink ${s}, quarantine ${q})`);
      const extra = Math.max(0, s + q - 1);
      // A second copy is only possible where an attempt was deferred after its final dot (SMTP's window).
      if (extra > amb) problems.push(`seq ${seq}: ${extra} duplicate(s) with ${amb} attempt(s) deferred after the dot`);
      duplicates += extra;
    }
    expect(problems.slice(0, 20)).toEqual([]);
    // Counted and reported; bounded by the post-dot deferrals.
    console.info(
      `haproxy-cluster: ${total} messages, ${sink.messages.length} relayed, ${quarantined.rowCount} quarantined, ${duplicates} duplicates, ${ambiguous} post-dot deferrals, ${[...attempts.values()].flat().filter((a) => a.kind === 'deferred').length} deferred attempts retried, ${all.length} relay processes`,
    );
    expect(duplicates).toBeLessThanOrEqual(ambiguous);
    expect(all.length).toBe(7); // three, three SIGTERM restarts, one SIGKILL restart

    // The client address checked and logged is the one from the PROXY header, not HAProxy's.
    const summaries = all.flatMap((r) => r.logs()).filter((l) => l['event'] === 'message');
    expect(summaries.length).toBeGreaterThanOrEqual(total);
    expect(new Set(summaries.map((l) => l['client']))).toEqual(new Set([CLIENT_ADDR]));
    expect(new Set(quarantined.rows.map((r) => r.client_address))).toEqual(new Set([CLIENT_ADDR]));
  });
});
