// Issue 10 §5: at start the spool, local outbox, fs quarantine and fs CAS outbox lose what a crash left unfinished (temp files, half-written pairs), keep what is mail, and log one line per store.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { startChain, message, sendMessage, type Chain } from '../helpers/chain.js';
import { startCasSim, type CasSim } from '../sim/cas/server.js';
import { spawnRelay, relayEnv } from '../helpers/cli-relay.js';
import { startSink, type Sink } from '../helpers/chain.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { SIM_KEYS } from '../helpers/chain.js';
import { testTempDir } from '../helpers/tmp.js';

const old = (path: string) => utimesSync(path, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));

describe('start-up recovery of every store', () => {
  let root: string;
  let cas: CasSim;
  let chain: Chain;
  const d = { spool: '', outbox: '', quarantine: '', casOutbox: '' };
  const ids = { paired: randomUUID(), oldEml: randomUUID(), youngEml: randomUUID(), lonelyJson: randomUUID() };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-recovery-'));
    for (const k of Object.keys(d) as Array<keyof typeof d>) {
      d[k] = join(root, k);
      mkdirSync(d[k], { recursive: true });
    }
    // Spool: a session cut off mid-DATA.
    writeFileSync(join(d.spool, `${randomUUID()}.eml.spool`), 'partial');
    // Outbox: one complete pair, one sidecar whose message never finished, a temp file, and a message without sidecar (kept: it is mail).
    writeFileSync(join(d.outbox, '20240101T000000.000Z-done.json'), '{}');
    writeFileSync(join(d.outbox, '20240101T000000.000Z-done.eml'), 'mail');
    writeFileSync(join(d.outbox, '20240101T000001.000Z-crashed.json'), '{}');
    writeFileSync(join(d.outbox, '.tmp-20240101T000001.000Z-crashed.eml-123'), 'half');
    writeFileSync(join(d.outbox, '20240101T000002.000Z-nosidecar.eml'), 'mail without sidecar');
    // Quarantine: a held pair, an old message whose metadata never came, a young one (another relay may be writing it), metadata without message, a temp.
    writeFileSync(join(d.quarantine, `${ids.paired}.eml`), 'held');
    writeFileSync(join(d.quarantine, `${ids.paired}.json`), '{}');
    writeFileSync(join(d.quarantine, `${ids.oldEml}.eml`), 'orphan');
    old(join(d.quarantine, `${ids.oldEml}.eml`));
    writeFileSync(join(d.quarantine, `${ids.youngEml}.eml`), 'being written by another relay');
    writeFileSync(join(d.quarantine, `${ids.lonelyJson}.json`), '{}');
    writeFileSync(join(d.quarantine, `.tmp-${ids.oldEml}.json-456`), 'half');
    // CAS outbox: a snapshot temp from an interrupted compaction.
    writeFileSync(join(d.casOutbox, '.tmp-journal.jsonl-789'), 'half');

    cas = await startCasSim({ token: 'cas-token-recovery-0123456789' });
    chain = await startChain({
      noNextHop: true,
      config: {
        spool: { dir: d.spool },
        outbox: { dir: d.outbox },
        quarantine: { dir: d.quarantine },
        policy: { localDomains: ['ourcorp.test'] },
        cas: { enabled: true, url: cas.url, outbox: { dir: d.casOutbox } },
        secrets: { casToken: 'cas-token-recovery-0123456789' },
      },
    });
  });
  afterAll(async () => {
    await chain?.close();
    await cas?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const recovery = (store: string) => chain.logs.find((l) => l['event'] === 'recovery' && l['store'] === store);

  it('spool: files of cut-off sessions are removed and counted', () => {
    expect(readdirSync(d.spool).filter((f) => f.endsWith('.eml.spool'))).toEqual([]);
    expect(recovery('spool')).toMatchObject({ tempRemoved: 1, dir: d.spool });
  });

  it('outbox: the orphan sidecar and the temp file are gone, complete pairs and bare messages stay', () => {
    expect(readdirSync(d.outbox).sort()).toEqual(['20240101T000000.000Z-done.eml', '20240101T000000.000Z-done.json', '20240101T000002.000Z-nosidecar.eml']);
    expect(recovery('outbox')).toMatchObject({ tempRemoved: 1, orphansRemoved: 1, kept: 1, level: 40, keptFiles: ['20240101T000002.000Z-nosidecar.eml'] });
  });

  it('quarantine: the old message without metadata and the temp are gone; young orphans and bare metadata stay', () => {
    const left = readdirSync(d.quarantine);
    expect(left).toContain(`${ids.paired}.eml`);
    expect(left).toContain(`${ids.youngEml}.eml`);
    expect(left).toContain(`${ids.lonelyJson}.json`);
    expect(left).not.toContain(`${ids.oldEml}.eml`);
    expect(left.filter((f) => f.startsWith('.tmp-'))).toEqual([]);
    expect(recovery('quarantine')).toMatchObject({ tempRemoved: 1, orphansRemoved: 1, kept: 2 });
  });

  it('CAS outbox: the snapshot temp is gone', () => {
    expect(readdirSync(d.casOutbox).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
    expect(recovery('cas-outbox')).toMatchObject({ tempRemoved: 1, orphansRemoved: 0 });
  });

  it('the relay works afterwards: a message lands in the outbox as a pair', async () => {
    const r = await sendMessage(chain.port, message('after recovery'));
    expect(r.data).toMatch(/^250 2\.0\.0 Ok: stored in local outbox/);
    const files = readdirSync(d.outbox).filter((f) => !f.includes('20240101'));
    expect(files.filter((f) => f.endsWith('.eml')).length).toBe(1);
    expect(files.filter((f) => f.endsWith('.json')).length).toBe(1);
  });
});

describe('kill -9 during outbox writes', () => {
  let root: string;
  let sim: UcwiSim;
  let sink: Sink;
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'dlp-kill-outbox-'));
    sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    sink = await startSink();
  });
  afterAll(async () => {
    await sink?.close();
    await sim?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('leaves no orphan after the restart: every .json has its .eml and no temp file remains', async () => {
    // No next hop: accepted mail is written to the outbox (DLP_RELAY_NEXT_HOP empty leaves nextHop.host null).
    const env = { ...relayEnv(root, sink.port, sim.url), DLP_RELAY_NEXT_HOP: '' };
    const first = await spawnRelay(env);
    // Keep eight sessions writing big messages, and kill the relay in the middle of them.
    const body = 'x'.repeat(2 * 1024 * 1024);
    const sends = Array.from({ length: 8 }, () => sendMessage(first.port, message(body)).catch(() => null));
    const outbox = join(root, 'outbox');
    const until = Date.now() + 10_000;
    const pending = () => {
      try {
        return readdirSync(outbox).some((f) => f.startsWith('.tmp-') || f.endsWith('.json'));
      } catch {
        return false;
      }
    };
    while (!pending() && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    first.kill('SIGKILL');
    await first.exited;
    await Promise.all(sends);
    const second = await spawnRelay(env);
    try {
      const files = readdirSync(outbox);
      const base = (f: string) => f.replace(/\.(eml|json)$/, '');
      const emls = new Set(files.filter((f) => f.endsWith('.eml')).map(base));
      expect(files.filter((f) => f.startsWith('.tmp-'))).toEqual([]);
      expect(files.filter((f) => f.endsWith('.json')).filter((f) => !emls.has(base(f)))).toEqual([]);
      const line = second.logs().find((l) => l['event'] === 'recovery' && l['store'] === 'outbox');
      // The restart reports the sweep of this outbox, with its counts (the log is how an operator learns of it).
      expect(line).toMatchObject({ event: 'recovery', store: 'outbox' });
      expect(String(line!['dir'])).toMatch(/outbox$/);
      expect(line!['tempRemoved']).toEqual(expect.any(Number));
      expect(line!['orphansRemoved']).toEqual(expect.any(Number));
    } finally {
      second.kill();
      await second.exited;
    }
  });
});

describe('a second relay on the same configuration', () => {
  it("fails on the busy port, naming the listener, before recovery touches the live relay's stores", async () => {
    const root = testTempDir('dlp-second-');
    const sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    const sink = await startSink();
    const first = await spawnRelay({ ...relayEnv(root, sink.port, sim.url), DLP_RELAY_NEXT_HOP: '' });
    try {
      const adminPort = Number(/admin: +http:\/\/127\.0\.0\.1:(\d+)/.exec(first.stderr())?.[1]);
      expect(adminPort).toBeGreaterThan(0);
      // What a live relay has on disk mid-session, all of which recovery would remove as a crash's leftovers.
      const live = {
        spool: join(root, 'spool', `${randomUUID()}.eml.spool`),
        outboxTemp: join(root, 'outbox', '.tmp-20990101T000000.000Z-live.eml-1'),
        outboxSidecar: join(root, 'outbox', '20990101T000000.000Z-live.json'),
        quarantineOrphan: join(root, 'quarantine', `${randomUUID()}.eml`),
      };
      for (const p of Object.values(live)) {
        mkdirSync(dirname(p), { recursive: true });
        writeFileSync(p, 'being written by the live relay');
      }
      old(live.quarantineOrphan);
      const second = (listen: string, admin: string) =>
        spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'serve'], {
          env: { ...process.env, ...relayEnv(root, sink.port, sim.url), DLP_RELAY_NEXT_HOP: '', DLP_RELAY_LISTEN: listen, DLP_RELAY_ADMIN_LISTEN: admin },
          encoding: 'utf8',
          timeout: 60_000,
        });
      const same = second(`127.0.0.1:${first.port}`, `127.0.0.1:${adminPort}`);
      expect(same.status).toBe(1);
      expect(same.stderr).toContain(`dlp-relay: cannot start: cannot listen for SMTP on 127.0.0.1:${first.port}: address already in use`);
      expect(same.stdout).not.toContain('"event":"recovery"');
      // The admin listener is checked as well, and named.
      const adminOnly = second('127.0.0.1:0', `127.0.0.1:${adminPort}`);
      expect(adminOnly.status).toBe(1);
      expect(adminOnly.stderr).toContain(`dlp-relay: cannot start: cannot listen for admin on 127.0.0.1:${adminPort}: address already in use`);
      expect(adminOnly.stdout).not.toContain('"event":"recovery"');
      for (const p of Object.values(live)) expect(existsSync(p), p).toBe(true);
      expect(first.proc.exitCode).toBeNull();
    } finally {
      first.kill();
      await first.exited;
      await sink.close();
      await sim.close();
    }
  });
});
