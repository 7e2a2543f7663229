// Fault matrix of issue 5 §1: every UCWI, next-hop, quarantine, CAS and process fault, each with a retrying client and the accounting delivered + quarantined + rejected + deferred = sent.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChain, eventually, spoolFiles, SIM_KEYS, type Chain } from '../helpers/chain.js';
import { startRawSink, type RawSink } from '../helpers/raw-sink.js';
import { startTcpGate, type TcpGate } from '../helpers/tcp-gate.js';
import { relayEnv, spawnRelay, type CliRelay } from '../helpers/cli-relay.js';
import { SmtpSession, replyCode } from '../helpers/raw-smtp.js';
import {
  makeBatch,
  attemptOnce,
  sendWithRetries,
  tally,
  countMarkers,
  quarantineCounts,
  needsRetry,
  type Kind,
  type Stage,
  type Tracked,
} from '../helpers/accounting.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { createQuarantineStore, type QuarantineStore } from '../../src/quarantine/index.js';
import { silentLogger } from '../../src/observability/logger.js';

const REF = '\\(ref [0-9a-f-]{36}\\)';
/** Before DATA there is no queryId yet: replies we make at MAIL FROM or RCPT carry the session id (the log's cid). */
const CID_REF = '\\(ref ([0-9a-f]{10})\\)';
const R = {
  // The next hop's own final reply, verbatim (the chain's smtp-server sink).
  relayed: new RegExp(`^250 2\\.6\\.0 Ok: queued as SINK\\d+$`),
  held: new RegExp(`^250 2\\.0\\.0 Ok: message held for review ${REF}$`),
  policy: new RegExp(`^550 5\\.7\\.1 Message rejected by data-loss-prevention policy ${REF}$`),
  dlpDown: new RegExp(`^451 4\\.7\\.1 Content inspection unavailable, try again later ${REF}$`),
  hopDownAtMail: new RegExp(`^451 4\\.4\\.1 Next hop unavailable, try again later ${CID_REF}$`),
  hopLost: new RegExp(`^451 4\\.4\\.2 Connection to next hop lost, try again later ${REF}$`),
  deadline: new RegExp(`^451 4\\.4\\.7 Processing deadline exceeded, try again later ${REF}$`),
  storeDown: new RegExp(`^451 4\\.3\\.0 Quarantine storage unavailable, try again later ${REF}$`),
};

/** One running set-up for a case: the relay chain plus whatever stands in for the faulty part. */
interface Harness {
  chain: Chain;
  inject(): Promise<void> | void;
  clear(): Promise<void> | void;
  /** Bodies the next hop committed, in order. */
  delivered(): Array<Buffer | null>;
  /** The scripted next hop, when the case uses one. */
  raw?: RawSink;
  /** Where quarantined copies are counted (default: the chain's quarantine directory). */
  quarantineDir?: string;
  /** Waits for work that outlives the replies (late writes) before the tally. */
  settle?(): Promise<void>;
  cleanup(): Promise<void>;
}

interface Case {
  name: string;
  kinds?: Kind[];
  /** Expected reply to the first attempt, per kind (the fault is active then). */
  first: Partial<Record<Kind, RegExp>>;
  /** Where the first attempt ends (default 'data': the DATA command or the final dot). */
  firstStage?: Stage;
  start(): Promise<Harness | string>;
  /**
   * The SMTP window (README, Design notes, "Never a late 250"): the next hop accepted the final dot but
   * its 250 was lost or came after our deadline, so the client retries and the next hop gets the message
   * twice. Only these cases may produce a duplicate, and at most one per message.
   */
  window?: boolean;
  /** A 5xx that is the next hop's own, passed back on purpose. */
  nextHop5xx?: RegExp;
  /** Clean messages end up rejected (by the next hop) rather than delivered. */
  cleanRejected?: boolean;
  /** Extra checks once the batch is done. */
  after?(h: Harness, batch: Tracked[]): Promise<void> | void;
}

const DEFAULT_KINDS: Kind[] = ['clean', 'clean', 'block', 'quarantine'];

/** The usual harness: the chain's own smtp-server sink, faults switched by `inject`/`clear`. */
async function chainHarness(
  config: Record<string, unknown>,
  inject: (c: Chain) => Promise<void> | void,
  clear: (c: Chain) => Promise<void> | void,
  extra: { cleanup?: () => Promise<void> } = {},
): Promise<Harness> {
  const chain = await startChain({ config });
  return {
    chain,
    inject: () => inject(chain),
    clear: () => clear(chain),
    delivered: () => chain.sink.messages.map((m) => m.data),
    async cleanup() {
      await chain.close();
      await extra.cleanup?.();
    },
  };
}

/** A harness whose next hop is the scripted raw sink. */
async function rawSinkHarness(config: Record<string, unknown>, inject: (s: RawSink) => void, clear: (s: RawSink) => void): Promise<Harness> {
  const raw = await startRawSink();
  const chain = await startChain({ config: { ...config, nextHop: { port: raw.port, pool: { maxMessagesPerConnection: 1 } } } });
  return {
    chain,
    inject: () => inject(raw),
    clear: () => clear(raw),
    delivered: () => raw.committed.map((m) => m.data),
    raw,
    async cleanup() {
      await chain.close();
      await raw.close();
    },
  };
}

/** The quarantine directory on a tiny tmpfs, so a write fails with ENOSPC like a full disk. */
async function fullStoreHarness(): Promise<Harness | string> {
  if (process.getuid?.() !== 0) return 'not root: cannot mount a tmpfs to fill';
  const chain = await startChain();
  const dir = chain.dirs.quarantine;
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', dir], { stdio: 'pipe' });
  } catch (e) {
    await chain.close();
    return `mount -t tmpfs failed: ${(e as Error).message.split('\n')[0]}`;
  }
  const filler = join(dir, 'filler');
  const unmount = (): void => {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' });
    } catch {
      // Busy (a write still open): detach it so the temp dir can go; the kernel frees it once idle.
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
    }
  };
  return {
    chain,
    inject() {
      try {
        writeFileSync(filler, Buffer.alloc(1024 * 1024));
      } catch (e) {
        // ENOSPC is the point: the filler now holds every free page of the tmpfs.
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      }
      expect(statSync(filler).size).toBeGreaterThan(200 * 1024);
    },
    clear: () => rmSync(filler, { force: true }),
    delivered: () => chain.sink.messages.map((m) => m.data),
    async cleanup() {
      // The tally has read the held copies already; they go with the tmpfs.
      unmount();
      await chain.close();
    },
  };
}

/**
 * A filesystem quarantine whose put() can be made slow (a saturated disk): while `delay.ms` is set,
 * each put waits that long and then stores the message as usual.
 */
async function slowStoreHarness(): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'dlp-slow-store-'));
  const inner = createQuarantineStore({ dir, url: null }, silentLogger());
  const delay = { ms: 0 };
  let pendingPuts = 0;
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'put') {
        return async (...args: Parameters<QuarantineStore['put']>) => {
          pendingPuts++;
          try {
            if (delay.ms) await new Promise((r) => setTimeout(r, delay.ms));
            return await target.put(...args);
          } finally {
            pendingPuts--;
          }
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const chain = await startChain({ config: { limits: { dataDeadlineMs: 1000 } }, start: { quarantine: store } });
  return {
    chain,
    inject: () => void (delay.ms = 2000),
    clear: () => void (delay.ms = 0),
    delivered: () => chain.sink.messages.map((m) => m.data),
    quarantineDir: dir,
    // The slow puts of the first round finish after their clients were answered 451: wait for them.
    settle: () => eventually(() => pendingPuts === 0 && spoolFiles(chain).length === 0, 5000),
    async cleanup() {
      await chain.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let gates: TcpGate[] = [];

const CASES: Case[] = [
  // ---- UCWI ----
  {
    name: 'UCWI refused (connection refused, open connections cut)',
    first: { clean: R.dlpDown, block: R.dlpDown, quarantine: R.dlpDown },
    async start() {
      const sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
      const gate = await startTcpGate(sim.port);
      gates.push(gate);
      const chain = await startChain({ sim, config: { ucwi: { url: `http://127.0.0.1:${gate.port}` } } });
      return {
        chain,
        inject: () => gate.refuse(),
        clear: () => gate.open(),
        delivered: () => chain.sink.messages.map((m) => m.data),
        async cleanup() {
          await chain.close();
          await gate.close();
          await sim.close();
        },
      };
    },
  },
  {
    name: 'UCWI slow past its deadline',
    first: { clean: R.dlpDown, block: R.dlpDown, quarantine: R.dlpDown },
    start: () =>
      chainHarness(
        { ucwi: { timeouts: { deadlineMs: 500 } } },
        (c) => c.sim.setFaults({ latencyMs: 1500 }),
        (c) => c.sim.resetFaults(),
      ),
  },
  ...(
    [
      ['UCWI HTTP 500', { status: 500 }],
      ['UCWI HTTP 401', { status: 401 }],
      ['UCWI garbage body', { body: 'garbage' }],
      ['UCWI truncated body', { body: 'truncated' }],
    ] as const
  ).map(([name, faults]): Case => ({
    name,
    first: { clean: R.dlpDown, block: R.dlpDown, quarantine: R.dlpDown },
    start: () =>
      chainHarness(
        {},
        (c) => c.sim.setFaults(faults),
        (c) => c.sim.resetFaults(),
      ),
  })),
  // ---- next hop ----
  {
    name: 'next hop refused (connection refused)',
    // Lockstep opens the next-hop transaction at MAIL FROM, before any verdict: every kind is deferred there.
    first: { clean: R.hopDownAtMail, block: R.hopDownAtMail, quarantine: R.hopDownAtMail },
    firstStage: 'mail',
    async start() {
      const gate = await startTcpGate(0);
      gates.push(gate);
      const chain = await startChain({ config: { nextHop: { port: gate.port } } });
      gate.target = chain.sink.port;
      return {
        chain,
        inject: () => gate.refuse(),
        clear: () => gate.open(),
        delivered: () => chain.sink.messages.map((m) => m.data),
        async cleanup() {
          await chain.close();
          await gate.close();
        },
      };
    },
    after(h, batch) {
      // The refused transactions never reached DATA, so UCWI saw each message once: on its retry.
      expect(h.chain.sim.stats().requests).toBe(batch.length);
      for (const m of batch)
        expect(
          h.chain.summaries().filter((l) => l['messageId'] === `<${m.marker}@example.test>`),
          m.marker,
        ).toHaveLength(1);
      // The ref in each MAIL FROM refusal is the session's cid, the key to its log lines.
      const cids = new Set(h.chain.logs.filter((l) => l['command'] === 'MAIL FROM').map((l) => l['cid']));
      for (const m of batch) {
        const ref = new RegExp(CID_REF).exec(m.attempts[0]!.reply ?? '')?.[1];
        expect(cids.has(ref), `ref ${ref} of ${m.marker} names a logged session`).toBe(true);
      }
    },
  },
  {
    // smtp-server puts its own enhanced code in front of the text, so the texts here carry none.
    name: 'next hop 4xx at the final dot (passed back verbatim)',
    first: { clean: /^452 4\.2\.2 Insufficient system storage$/, block: R.policy, quarantine: R.held },
    start: () =>
      chainHarness(
        {},
        (c) => void (c.sink.behaviour.data = () => [452, 'Insufficient system storage']),
        (c) => void (c.sink.behaviour.data = undefined),
      ),
  },
  {
    name: 'next hop 5xx at the final dot (its own 5xx is passed back)',
    first: { clean: /^554 5\.6\.0 Content refused downstream$/, block: R.policy, quarantine: R.held },
    nextHop5xx: /^554 5\.6\.0 Content refused downstream$/,
    cleanRejected: true,
    start: () =>
      chainHarness(
        {},
        (c) => void (c.sink.behaviour.data = () => [554, 'Content refused downstream']),
        (c) => void (c.sink.behaviour.data = undefined),
      ),
  },
  {
    // A 421 becomes 451 with the next hop's enhanced code and text: we keep the client's session.
    name: 'next hop answers DATA with 421 and closes',
    first: { clean: /^451 4\.3\.2 rawsink: service not available, closing transmission channel$/, block: R.policy, quarantine: R.held },
    start: () =>
      rawSinkHarness(
        {},
        (s) => void (s.behaviour.dataCommand421 = true),
        (s) => void (s.behaviour.dataCommand421 = false),
      ),
    after(h) {
      // The 421 came before any message byte: only the retries started DATA.
      expect(h.raw!.dataStarted).toBe(2);
      expect(h.raw!.partial).toBe(0);
    },
  },
  {
    name: 'next hop sends 421 in the middle of DATA and closes',
    // Its 421 becomes 451 (same code and text) if we read it before the socket goes, else the connection is lost.
    first: {
      clean: new RegExp(`^451 4\\.4\\.2 (rawsink: closing connection in the middle of DATA|Connection to next hop lost, try again later ${REF})$`),
      block: R.policy,
      quarantine: R.held,
    },
    start: () =>
      rawSinkHarness(
        {},
        (s) => void (s.behaviour.abortAfterBytes = 64),
        (s) => void (s.behaviour.abortAfterBytes = null),
      ),
    after(h) {
      // Both first attempts were cut mid-DATA; only the retries reached a final dot.
      expect(h.raw!.partial).toBe(2);
      expect(h.raw!.dots).toBe(2);
    },
  },
  {
    name: 'next hop slow at the final dot, past the end-of-DATA deadline',
    first: { clean: R.deadline, block: R.policy, quarantine: R.held },
    window: true,
    start: () =>
      rawSinkHarness(
        { limits: { dataDeadlineMs: 1000 } },
        (s) => void (s.behaviour.dot = 'hold'),
        (s) => {
          // The slow next hop finally commits what it held (after we answered 451), then is fast again.
          s.release();
          s.behaviour.dot = 'accept';
        },
      ),
  },
  {
    name: 'next hop drops the connection after the final dot (its 250 is lost)',
    first: { clean: R.hopLost, block: R.policy, quarantine: R.held },
    window: true,
    start: () =>
      rawSinkHarness(
        {},
        (s) => void (s.behaviour.dot = 'drop'),
        (s) => void (s.behaviour.dot = 'accept'),
      ),
    after(h) {
      // The first copies were committed without an acknowledgement: that is the window, not a relay bug.
      expect(h.raw!.committed.filter((m) => !m.acknowledged)).toHaveLength(2);
    },
  },
  // ---- quarantine store ----
  {
    name: 'quarantine store unwritable (directory replaced by a file)',
    kinds: ['clean', 'block', 'quarantine', 'quarantine'],
    first: { clean: R.relayed, block: R.policy, quarantine: R.storeDown },
    start: () =>
      chainHarness(
        {},
        (c) => {
          rmSync(c.dirs.quarantine, { recursive: true, force: true });
          writeFileSync(c.dirs.quarantine, 'not a directory');
        },
        (c) => {
          rmSync(c.dirs.quarantine, { force: true });
          mkdirSync(c.dirs.quarantine, { mode: 0o700 });
        },
      ),
  },
  {
    name: 'quarantine store full (ENOSPC on a 256 KiB tmpfs)',
    kinds: ['clean', 'block', 'quarantine', 'quarantine'],
    first: { clean: R.relayed, block: R.policy, quarantine: R.storeDown },
    start: fullStoreHarness,
    after(h) {
      // A failed durable write leaves no temp file behind in the store.
      expect(readdirSync(h.chain.dirs.quarantine).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    },
  },
  {
    name: 'quarantine store slow past the end-of-DATA deadline',
    kinds: ['clean', 'block', 'quarantine', 'quarantine'],
    first: { clean: R.relayed, block: R.policy, quarantine: R.deadline },
    start: slowStoreHarness,
  },
  // ---- CAS ----
  {
    name: 'CAS down (mail flow unaffected, pushes wait in the outbox)',
    first: { clean: R.relayed, block: R.policy, quarantine: R.held },
    start() {
      const outboxDir = mkdtempSync(join(tmpdir(), 'dlp-cas-outbox-'));
      return chainHarness(
        {
          cas: {
            enabled: true,
            url: 'http://127.0.0.1:1',
            exemptDomains: ['ourcorp.test'],
            outbox: { dir: outboxDir, intervalMs: 100, baseMs: 100 },
            retry: { maxAttempts: 1, baseMs: 10, maxMs: 10, totalMs: 500 },
          },
          secrets: { casToken: 'x'.repeat(40) },
        },
        () => {},
        () => {},
        { cleanup: async () => rmSync(outboxDir, { recursive: true, force: true }) },
      );
    },
    async after(h, batch) {
      // Nothing was retried: CAS is never in the reply path.
      for (const m of batch) expect(m.attempts).toHaveLength(1);
      const cas = h.chain.relay.cas!;
      expect(cas).not.toBeNull();
      // The block verdict queued a push that cannot go anywhere; it waits (pending), it is not lost.
      let stats = await cas.outbox.stats();
      for (let i = 0; i < 100 && stats.pending + stats.failed === 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
        stats = await cas.outbox.stats();
      }
      expect(stats.pending + stats.failed).toBeGreaterThan(0);
      expect(stats.done).toBe(0);
    },
  },
];

describe('fault matrix: every fault, reply class and accounting', () => {
  afterAll(async () => {
    for (const g of gates) await g.close();
    gates = [];
  });

  it.for(CASES)('$name', async (c, ctx) => {
    const h = await c.start();
    if (typeof h === 'string') {
      console.warn(`SKIPPED fault case "${c.name}": ${h}`);
      ctx.skip();
      return;
    }
    const kinds = c.kinds ?? DEFAULT_KINDS;
    const batch = makeBatch(c.name.replace(/\W+/g, '').slice(0, 20), kinds);
    try {
      await h.inject();
      await sendWithRetries(h.chain.port, batch, () => h.clear(), 3);

      // (a) The first attempt, under the fault, got the reply the README's table promises, at the step it promises.
      for (const m of batch) {
        const first = m.attempts[0]!;
        const want = c.first[m.kind]!;
        expect(first.reply, `${m.kind} first attempt (${first.dropped ?? ''})`).toMatch(want);
        expect(first.stage, `${m.kind} first attempt ended at`).toBe(c.firstStage ?? 'data');
      }
      // Every message has a final answer: nobody is left retrying.
      for (const m of batch) expect(needsRetry(m), `${m.marker} still needs a retry: ${JSON.stringify(m.attempts)}`).toBe(false);

      // The window cases: the next hop committed the first copies although we answered 4xx; let them land.
      const clean = kinds.filter((k) => k === 'clean').length;
      if (c.window) await eventually(() => countNonEmpty(h.delivered()) >= clean * 2, 5000);
      await h.settle?.();

      // (b) + (c) accounting and duplicates.
      const t = tally(batch, countMarkers(batch, h.delivered()), quarantineCounts(batch, h.quarantineDir ?? h.chain.dirs.quarantine), {
        maxCopies: c.window ? 2 : 1,
        ...(c.nextHop5xx ? { nextHop5xx: c.nextHop5xx } : {}),
      });
      expect(t.problems).toEqual([]);
      expect(t.delivered + t.quarantined + t.rejected + t.deferred).toBe(t.sent);
      expect({ delivered: t.delivered, quarantined: t.quarantined, rejected: t.rejected, deferred: t.deferred }).toEqual({
        delivered: c.cleanRejected ? 0 : clean,
        quarantined: kinds.filter((k) => k === 'quarantine').length,
        rejected: kinds.filter((k) => k === 'block').length + (c.cleanRejected ? clean : 0),
        deferred: 0,
      });
      // Exactly the messages whose first reply was a 4xx (or a drop) were retried.
      expect(t.retried).toBe(batch.filter((m) => needsRetry({ ...m, attempts: m.attempts.slice(0, 1) })).length);
      // Outside the SMTP window nothing arrives twice; inside it, exactly one extra copy per message that was in it.
      expect(t.duplicates).toBe(c.window ? clean : 0);

      await c.after?.(h, batch);
      // Every transaction is over, so no spool file may be left.
      await eventually(() => spoolFiles(h.chain).length === 0);
    } finally {
      await h.cleanup();
    }
  });
});

function countNonEmpty(list: Array<Buffer | null>): number {
  return list.filter((b) => b !== null).length;
}

// ---- the relay process killed ------------------------------------------------------------------

describe('fault matrix: the relay process SIGKILLed', () => {
  let sim: UcwiSim;
  let sink: RawSink;
  let root: string;
  const relays: CliRelay[] = [];

  const env = (): Record<string, string> => relayEnv(root, sink.port, sim.url, { DLP_RELAY_DATA_DEADLINE_MS: '15000', DLP_RELAY_LOG_LEVEL: 'info' });
  const start = async (): Promise<CliRelay> => {
    const r = await spawnRelay(env(), ['--grace', '2000']);
    relays.push(r);
    return r;
  };
  const spool = (): string[] => (existsSync(join(root, 'spool')) ? readdirSync(join(root, 'spool')) : []);
  /**
   * Spool files holding one of these messages. Recycled files wait in the relay's pool with their last
   * message's bytes (readers stop at each message's size), so what a file holds is told by content.
   */
  const holding = (batch: Tracked[]): string[] =>
    spool().filter((f) => {
      const bytes = readFileSync(join(root, 'spool', f), 'latin1');
      return batch.some((m) => bytes.includes(m.marker));
    });

  beforeAll(async () => {
    sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    sink = await startRawSink();
  });
  afterAll(async () => {
    for (const r of relays) r.kill();
    await Promise.all(relays.map((r) => r.exited));
    await sink.close();
    await sim.close();
  });

  it('in the middle of DATA: clients see a dropped connection, the restart sweeps the spool, the retries deliver once', async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-kill-data-'));
    sink.committed.length = 0;
    sink.behaviour = {};
    const batch = makeBatch('killdata', ['clean', 'clean', 'block']);
    try {
      const first = await start();
      // Three sessions stop half way through their message: DATA accepted, no final dot yet.
      const sessions = await Promise.all(
        batch.map(async (m) => {
          const s = await SmtpSession.connect(first.port);
          await s.cmd('EHLO client.example.test');
          expect(replyCode(await s.cmd('MAIL FROM:<alice@example.test>'))).toBe(250);
          expect(replyCode(await s.cmd('RCPT TO:<bob@example.test>'))).toBe(250);
          expect(replyCode(await s.cmd('DATA'))).toBe(354);
          s.send(m.body.slice(0, Math.floor(m.body.length / 2)));
          return s;
        }),
      );
      // The relay has started spooling all three (the files exist and hold bytes) when it dies.
      await eventually(() => holding(batch).length === 3, 10_000);
      first.kill('SIGKILL');
      expect((await first.exited).signal).toBe('SIGKILL');
      for (const [i, s] of sessions.entries()) {
        const r = await s.read('reply after the kill').then(
          (reply) => ({ reply }),
          (e: Error) => ({ reply: null, dropped: e.message }),
        );
        // Never a reply from a dead relay: the client keeps the message (its MTA queues it).
        expect(r.reply).toBeNull();
        batch[i]!.attempts.push(r);
        s.close();
      }
      // Nothing reached the next hop: the message was never complete.
      expect(sink.dots).toBe(0);
      expect(sink.committed).toHaveLength(0);
      // The files of the killed transactions are still there until a restart sweeps them.
      expect(holding(batch)).toHaveLength(3);

      const second = await start();
      expect(spool()).toEqual([]);
      await sendWithRetries(second.port, batch, () => {}, 2);
      const t = tally(
        batch,
        countMarkers(
          batch,
          sink.committed.map((m) => m.data),
        ),
        quarantineCounts(batch, join(root, 'quarantine')),
      );
      expect(t.problems).toEqual([]);
      expect(t).toMatchObject({ sent: 3, delivered: 2, quarantined: 0, rejected: 1, duplicates: 0 });
      // Nothing half-delivered: every committed message is whole (our headers + exactly what the client sent).
      expect(sink.partial).toBe(0);
      for (const m of sink.committed) {
        const src = batch.find((b) => m.data.toString('latin1').includes(b.marker))!;
        // Our trace header first, then the X-DLP headers, then the client's bytes untouched.
        expect(m.data.toString('latin1')).toMatch(
          /^Received: from client\.example\.test \(\[127\.0\.0\.1\]\)\r\n\tby [^ ]+ \(dlp-relay\) with ESMTP id [0-9a-f-]{36};\r\n\t[^\r\n]+\r\nX-DLP-Relay-Scanned: /,
        );
        expect(m.data.toString('latin1').endsWith(src.body)).toBe(true);
      }
      second.kill('SIGTERM');
      expect((await second.exited).code).toBe(0);
      expect(spool()).toEqual([]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('after the verdict, while the next hop holds the final dot: at most one duplicate per message (the documented SMTP window)', async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-kill-verdict-'));
    sink.committed.length = 0;
    sink.behaviour = { dot: 'hold' };
    const dotsBefore = sink.dots;
    const partialBefore = sink.partial;
    const batch = makeBatch('killverdict', ['clean', 'clean', 'block', 'quarantine']);
    try {
      const first = await start();
      const round1 = batch.map((m) => attemptOnce(first.port, m));
      // The block and quarantine verdicts complete; the clean messages sit at the next hop's final dot.
      await Promise.all([round1[2]!, round1[3]!]);
      await eventually(() => sink.held === 2, 10_000);
      expect(sink.dots - dotsBefore).toBe(2);
      // The two held transactions keep their spool files (the finished ones went back to the pool).
      await eventually(() => holding(batch.slice(0, 2)).length === 2, 5000);
      first.kill('SIGKILL');
      expect((await first.exited).signal).toBe('SIGKILL');
      const results = await Promise.all(round1);
      results.forEach((r, i) => batch[i]!.attempts.push(r));
      expect(batch[0]!.attempts[0]!.reply).toBeNull();
      expect(batch[1]!.attempts[0]!.reply).toBeNull();
      expect(batch[2]!.attempts[0]!.reply).toMatch(R.policy);
      expect(batch[3]!.attempts[0]!.reply).toMatch(R.held);
      // The relay died holding two transactions in the spool.
      expect(holding(batch.slice(0, 2))).toHaveLength(2);
      // The next hop finishes its work: it commits what it had, though the 250 has nobody to go to.
      sink.release();
      expect(sink.committed.filter((m) => !m.acknowledged)).toHaveLength(2);
      sink.behaviour = { dot: 'accept' };

      const second = await start();
      expect(spool()).toEqual([]);
      await sendWithRetries(second.port, batch, () => {}, 2);
      const t = tally(
        batch,
        countMarkers(
          batch,
          sink.committed.map((m) => m.data),
        ),
        quarantineCounts(batch, join(root, 'quarantine')),
        { maxCopies: 2 },
      );
      expect(t.problems).toEqual([]);
      // The two clean messages arrived twice: the window README "Design notes" documents; never more, never lost.
      expect(t).toMatchObject({ sent: 4, delivered: 2, quarantined: 1, rejected: 1, duplicates: 2 });
      // Nothing half-delivered: no transaction at the next hop ended without its final dot.
      expect(sink.partial - partialBefore).toBe(0);
      for (const m of sink.committed) {
        const src = batch.find((b) => m.data.toString('latin1').includes(b.marker))!;
        expect(m.data.toString('latin1').endsWith(src.body)).toBe(true);
      }
      second.kill('SIGTERM');
      expect((await second.exited).code).toBe(0);
      expect(spool()).toEqual([]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
