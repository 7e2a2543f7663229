// Issue 5 §2: the one end-of-DATA budget shared by UCWI and the next hop, the session and UCWI caps, and graceful shutdown of the real process on SIGTERM.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChain, eventually, spoolFiles, SIM_KEYS, type Chain } from '../helpers/chain.js';
import { startRawSink, type RawSink } from '../helpers/raw-sink.js';
import { relayEnv, spawnRelay, type CliRelay } from '../helpers/cli-relay.js';
import { SmtpSession, replyCode } from '../helpers/raw-smtp.js';
import { makeBatch, attemptOnce } from '../helpers/accounting.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';

const REF = '\\(ref [0-9a-f-]{36}\\)';

describe('one end-of-DATA budget for UCWI and the next hop', () => {
  let chain: Chain;
  let sink: RawSink;
  // Each half alone fits in the 1500 ms budget with room to spare; together (2 × 900 ms) they cannot.
  const SLOW = 900;
  // The next hop's own final reply comes back verbatim since lockstep: the raw sink's queue id.
  const RELAYED = /^250 2\.0\.0 Ok: queued as RAW\d+$/;
  beforeAll(async () => {
    sink = await startRawSink();
    chain = await startChain({
      config: {
        limits: { dataDeadlineMs: 1500 },
        ucwi: { timeouts: { deadlineMs: 5000 } },
        // One message per connection, so every message meets the slow greeting of a fresh connection.
        nextHop: { port: sink.port, pool: { maxMessagesPerConnection: 1 }, timeouts: { connectMs: 5000, greetingMs: 5000, socketMs: 5000 } },
      },
    });
  });
  afterAll(async () => {
    await chain.close();
    await sink.close();
  });

  it('UCWI slow alone fits: 250', async () => {
    chain.sim.setFaults({ latencyMs: SLOW });
    sink.behaviour = {};
    const [m] = makeBatch('ucwislow', ['clean']);
    const a = await attemptOnce(chain.port, m!);
    expect(a.reply).toMatch(RELAYED);
    expect(sink.committed.filter((c) => c.data.toString('latin1').includes(m!.marker))).toHaveLength(1);
  });

  it('next hop slow alone fits: 250', async () => {
    chain.sim.resetFaults();
    // With lockstep the first next-hop step after the final dot is DATA: slow there, inside the budget.
    sink.behaviour = { dataCommandDelayMs: SLOW };
    const [m] = makeBatch('hopslow', ['clean']);
    const a = await attemptOnce(chain.port, m!);
    expect(a.reply).toMatch(RELAYED);
    expect(sink.committed.filter((c) => c.data.toString('latin1').includes(m!.marker))).toHaveLength(1);
  });

  it('a slow next-hop greeting is paid at MAIL FROM, outside the end-of-DATA budget: 250', async () => {
    // Lockstep opens the next-hop transaction at MAIL FROM, so UCWI slow + a slow greeting do not add up.
    chain.sim.setFaults({ latencyMs: SLOW });
    sink.behaviour = { greetingDelayMs: SLOW };
    const [m] = makeBatch('greetslow', ['clean']);
    const a = await attemptOnce(chain.port, m!);
    expect(a.reply).toMatch(RELAYED);
    expect(sink.committed.filter((c) => c.data.toString('latin1').includes(m!.marker))).toHaveLength(1);
  });

  it('both slow exceed the shared budget: 451 4.4.7, and the next hop never gets the message afterwards', async () => {
    chain.sim.setFaults({ latencyMs: SLOW });
    sink.behaviour = { dataCommandDelayMs: SLOW };
    const before = { dots: sink.dots, committed: sink.committed.length, dataStarted: sink.dataStarted };
    const [m] = makeBatch('bothslow', ['clean']);
    const a = await attemptOnce(chain.port, m!);
    expect(a.reply).toMatch(new RegExp(`^451 4\\.4\\.7 Processing deadline exceeded, try again later ${REF}$`));
    // The relay abandoned the next-hop connection when the budget ran out (before the slow 354 came),
    // so no message byte can follow: wait until that connection is gone, then look.
    await eventually(() => sink.closedConnections === sink.connections, 5000);
    expect({ dots: sink.dots, committed: sink.committed.length, dataStarted: sink.dataStarted }).toEqual(before);
    const line = chain.summaries().find((s) => String(s['reply']).includes('4.4.7'));
    expect(line).toMatchObject({ action: 'tempfail-deadline', errorClass: 'deadline', replyClass: '4xx' });
    await eventually(() => spoolFiles(chain).length === 0);
    // (When the next hop is slow only after it has the final dot, it may still accept the message after
    // our 451: that is the one SMTP duplicate window, covered in fault-matrix.test.ts.)
  });
});

/** Runs `work` while sampling the relay's UCWI calls in flight (bounded: at most 2000 looks, 5 ms apart). */
async function whileSampling<T>(chain: Chain, work: () => Promise<T>): Promise<{ results: T; maxInFlight: number }> {
  let maxInFlight = 0;
  let sampling = true;
  const sampler = (async () => {
    for (let i = 0; i < 2000 && sampling; i++) {
      maxInFlight = Math.max(maxInFlight, chain.relay.ucwi.inFlight);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    return { results: await work(), maxInFlight };
  } finally {
    sampling = false;
    await sampler;
  }
}

describe('caps', () => {
  it('smtp.maxClients 5: the 6th session gets 421 4.3.2 at greeting, the 5 in flight still complete with 250', async () => {
    const chain = await startChain({ config: { smtp: { maxClients: 5 } } });
    const sessions: SmtpSession[] = [];
    try {
      const batch = makeBatch('maxclients', ['clean', 'clean', 'clean', 'clean', 'clean']);
      for (let i = 0; i < 5; i++) {
        const s = await SmtpSession.connect(chain.port);
        sessions.push(s);
        expect(s.greeting).toMatch(/^220 /);
        await s.cmd('EHLO client.example.test');
        expect(replyCode(await s.cmd('MAIL FROM:<alice@example.test>'))).toBe(250);
        expect(replyCode(await s.cmd(`RCPT TO:<bob${i}@example.test>`))).toBe(250);
      }
      const sixth = await SmtpSession.connect(chain.port);
      expect(sixth.greeting).toBe('421 4.3.2 Too many connections, try again later');
      sixth.close();
      const replies = await Promise.all(sessions.map((s, i) => s.data(batch[i]!.body, { dotStuff: true })));
      for (const r of replies) expect(r).toMatch(new RegExp(`^250 2\\.6\\.0 Ok: queued as SINK\\d+$`));
      expect(chain.sink.messages).toHaveLength(5);
      for (const s of sessions) await s.quit();
      // Capacity comes back once sessions end (counted on close, which follows asynchronously).
      let again = '';
      for (let i = 0; i < 50 && !again.startsWith('220'); i++) {
        const s = await SmtpSession.connect(chain.port);
        again = s.greeting;
        s.close();
        if (!again.startsWith('220')) await new Promise((r) => setTimeout(r, 50));
      }
      expect(again).toMatch(/^220 /);
    } finally {
      for (const s of sessions) s.close();
      await chain.close();
    }
  });

  it('ucwi.maxConcurrent 2: more concurrent messages than slots wait for one and are all answered 250', async () => {
    const chain = await startChain({ config: { ucwi: { maxConcurrent: 2, timeouts: { deadlineMs: 10_000 } } } });
    try {
      chain.sim.setFaults({ latencyMs: 200 });
      const batch = makeBatch('slots', ['clean', 'clean', 'clean', 'clean', 'clean', 'clean']);
      const { results, maxInFlight } = await whileSampling(chain, () => Promise.all(batch.map((m) => attemptOnce(chain.port, m))));
      for (const r of results) expect(r.reply).toMatch(new RegExp(`^250 2\\.6\\.0 Ok: queued as SINK\\d+$`));
      // The cap held and was reached: at most two UCWI calls at once, the others queued.
      expect(maxInFlight).toBe(2);
      expect(chain.sim.stats().requests).toBe(6);
    } finally {
      await chain.close();
    }
  });

  it('ucwi.maxConcurrent 2 saturated past the UCWI deadline: every message gets 451 4.7.1, none a late 250', async () => {
    // queueTimeoutMs bounds the wait for a slot on its own, well before the call deadline.
    const chain = await startChain({ config: { ucwi: { maxConcurrent: 2, queueTimeoutMs: 200, timeouts: { deadlineMs: 800 } } } });
    try {
      chain.sim.setFaults({ latencyMs: 3000 });
      const batch = makeBatch('saturated', ['clean', 'clean', 'clean', 'clean', 'clean', 'clean']);
      const { results, maxInFlight } = await whileSampling(chain, () => Promise.all(batch.map((m) => attemptOnce(chain.port, m))));
      for (const r of results) expect(r.reply).toMatch(new RegExp(`^451 4\\.7\\.1 Content inspection unavailable, try again later ${REF}$`));
      expect(chain.sink.messages).toHaveLength(0);
      const lines = chain.summaries();
      expect(lines).toHaveLength(6);
      for (const l of lines) expect(l).toMatchObject({ action: 'tempfail', replyClass: '4xx' });
      // The two holders time out at UCWI; the four queued behind them give up waiting for a slot first.
      const classes = lines.map((l) => l['errorClass']).sort();
      expect(classes).toEqual(['saturated', 'saturated', 'saturated', 'saturated', 'timeout', 'timeout']);
      // The cap held throughout: never more than two calls at UCWI.
      expect(maxInFlight).toBeLessThanOrEqual(2);
    } finally {
      await chain.close();
    }
  });
});

describe('graceful shutdown of the real process (SIGTERM)', () => {
  let sim: UcwiSim;
  let sink: RawSink;
  let root: string;
  let relay: CliRelay | undefined;

  beforeAll(async () => {
    sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    sink = await startRawSink({ dot: 'hold' });
    root = mkdtempSync(join(tmpdir(), 'dlp-sigterm-'));
  });
  afterAll(async () => {
    relay?.kill();
    if (relay) await relay.exited;
    await sink.close();
    await sim.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('in-flight transactions finish with their 250 then 421, idle sessions and open envelopes get 421 at once, the process exits 0', async () => {
    relay = await spawnRelay(relayEnv(root, sink.port, sim.url, { DLP_RELAY_DATA_DEADLINE_MS: '20000' }), ['--grace', '15000']);
    const port = relay.port;
    const SHUTTING_DOWN = '421 4.3.2 Service shutting down, try again later';
    // An idle session, one that has only said EHLO, and one with an open envelope (MAIL + RCPT accepted,
    // so a next-hop transaction is open for it) when the signal comes.
    const idle = await SmtpSession.connect(port);
    const late = await SmtpSession.connect(port);
    await late.cmd('EHLO late.example.test');
    const enveloped = await SmtpSession.connect(port);
    await enveloped.cmd('EHLO envelope.example.test');
    expect(replyCode(await enveloped.cmd('MAIL FROM:<alice@example.test>'))).toBe(250);
    expect(replyCode(await enveloped.cmd('RCPT TO:<bob@example.test>'))).toBe(250);
    // Three messages past their final dot, held by the next hop.
    const batch = makeBatch('sigterm', ['clean', 'clean', 'clean']);
    const inFlight = await Promise.all(
      batch.map(async (m) => {
        const s = await SmtpSession.connect(port, { timeoutMs: 30_000 });
        await s.cmd('EHLO client.example.test');
        expect(replyCode(await s.cmd('MAIL FROM:<alice@example.test>'))).toBe(250);
        expect(replyCode(await s.cmd('RCPT TO:<bob@example.test>'))).toBe(250);
        return { s, final: s.data(m.body, { dotStuff: true }) };
      }),
    );
    await eventually(() => sink.held === 3, 15_000);

    relay.kill('SIGTERM');
    await eventually(() => relay!.stdout().includes('shutting down'), 10_000);

    // Sessions outside DATA are told at once (the next hop still holds the three dots: nothing waits on it).
    for (const [name, s] of [
      ['idle', idle],
      ['late', late],
      ['enveloped', enveloped],
    ] as const) {
      const r = await s.read(`421 for the ${name} session`).catch((e: Error) => `closed: ${e.message}`);
      expect(r, name).toBe(SHUTTING_DOWN);
      await eventually(() => s.closed, 5000);
    }
    expect(sink.held).toBe(3);

    // A new connection: refused outright, or greeted with 421 while the listener drains.
    const fresh = await SmtpSession.connect(port).then(
      (s) => {
        const g = s.greeting;
        s.close();
        return g;
      },
      (e: Error) => `refused: ${e.message}`,
    );
    expect(fresh).toMatch(/^(421 4\.3\.2 Service shutting down, try again later|refused: .*ECONNREFUSED.*)$/);

    // The next hop answers: every message that was in flight gets the next hop's own 250, then the 421.
    sink.release();
    for (const { s, final } of inFlight) {
      expect(await final).toMatch(/^250 2\.0\.0 Ok: queued as RAW\d+$/);
      expect(await s.read('421 after the final reply').catch((e: Error) => `closed: ${e.message}`)).toBe(SHUTTING_DOWN);
      await eventually(() => s.closed, 5000);
    }
    expect(sink.committed.filter((m) => m.acknowledged)).toHaveLength(3);
    for (const m of batch) expect(sink.committed.filter((c) => c.data.toString('latin1').includes(m.marker))).toHaveLength(1);
    // The open envelope never became a message at the next hop: only the three in flight reached DATA.
    expect(sink.dataStarted).toBe(3);
    expect(sink.partial).toBe(0);

    for (const s of [idle, late, enveloped]) s.close();
    expect(await relay.exited).toEqual({ code: 0, signal: null });
  });
});
