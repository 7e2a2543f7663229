// Held messages describe the bytes stored (not the bytes received), so `release --rescan` of a message stored after a loop-header strip works against the real UCWI simulator; md5 is left out of a UCWI request when unknown.
import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/observability/logger.js';
import { createDeliverer, createUcwiClient, quarantineOps } from '../../src/app.js';
import { UcwiClient } from '../../src/dlp/client.js';
import { releaseMessage } from '../../src/quarantine/operations.js';
import type { NewQuarantineRecord } from '../../src/quarantine/types.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { SIM_KEYS } from '../helpers/chain.js';
import { backends, dropBackendSchemas, type BackendHandle } from '../helpers/quarantine-backends.js';

const logger = silentLogger();

const LOOP = 'X-DLP-Scanned: forged-by-a-client\r\n';
const REST = 'From: alice@example.com\r\nTo: bob@example.org\r\nSubject: minutes\r\n\r\nNothing sensitive here, just the minutes.\r\n';
/** What the client sent: a forged loop header on top. */
const RECEIVED = Buffer.from(LOOP + REST);
/** What the relay stores after cutting the forged header out (spool.open({ skip })). */
const STORED = Buffer.from(REST);

const hex = (alg: 'sha256' | 'md5', b: Buffer) => createHash(alg).update(b).digest('hex');

/** A record as the pipeline builds it today: size and hashes of the bytes RECEIVED. */
function recordWithReceivedHints(): NewQuarantineRecord {
  const id = randomUUID();
  return {
    id,
    queryId: id,
    receivedAt: new Date().toISOString(),
    envelope: { from: 'alice@example.com', to: [{ address: 'bob@example.org' }], smtpUtf8: false },
    clientAddress: '192.0.2.7',
    heloName: 'client.example.com',
    size: RECEIVED.length,
    sha256: hex('sha256', RECEIVED),
    md5: hex('md5', RECEIVED),
    subject: 'minutes',
    messageId: null,
    actionCode: null,
    reason: 'dlp-error:timeout',
    policies: [],
    instance: 'test:1',
  };
}

/** Odd chunk sizes, so the digest cannot depend on where chunks end. */
function trickle(buf: Buffer, size = 7): () => Readable {
  return () => {
    const parts: Buffer[] = [];
    for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
    return Readable.from(parts);
  };
}

let sim: UcwiSim;
beforeAll(async () => {
  sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
});
afterAll(async () => {
  await sim.close();
  await dropBackendSchemas();
});

describe.each(backends)('held message metadata: $name', (backend) => {
  let h: BackendHandle;
  let dir: string;
  beforeEach(async () => {
    h = await backend.make();
    dir = await mkdtemp(join(tmpdir(), 'q-stored-'));
  });
  afterEach(async () => {
    await h.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('records the size and hashes of the bytes written, whatever the caller passed', async () => {
    const rec = recordWithReceivedHints();
    await h.store.put(rec, trickle(STORED));
    const got = (await h.store.get(rec.id))!;
    expect(got).toMatchObject({ size: STORED.length, sha256: hex('sha256', STORED), md5: hex('md5', STORED) });
    expect(got.size).not.toBe(RECEIVED.length);
    // And the record matches what a reader gets back.
    const back: Buffer[] = [];
    for await (const c of h.store.openMessage(rec.id)) back.push(c as Buffer);
    expect(hex('sha256', Buffer.concat(back))).toBe(got.sha256);

    // Hints may be left out entirely.
    const { size: _s, sha256: _h, md5: _m, ...bare } = { ...recordWithReceivedHints() };
    await h.store.put(bare, trickle(Buffer.alloc(0)));
    expect(await h.store.get(bare.id)).toMatchObject({ size: 0, sha256: hex('sha256', Buffer.alloc(0)), md5: hex('md5', Buffer.alloc(0)) });
  });

  it('release --rescan of a message stored after a strip gets a verdict from the UCWI simulator and releases', async () => {
    const rec = recordWithReceivedHints();
    await h.store.put(rec, trickle(STORED));
    const cfg = loadConfig({
      file: '/dev/null',
      env: {},
      overrides: {
        ucwi: { url: sim.url, timeouts: { connectMs: 2000, headersMs: 5000, bodyMs: 5000, deadlineMs: 5000 } },
        nextHop: { host: null },
        outbox: { dir: join(dir, 'outbox') },
        secrets: { ucwiAccessKey: SIM_KEYS.accessKey, ucwiSecretKey: SIM_KEYS.secretKey },
      },
    });
    const { client } = await createUcwiClient(cfg, logger);
    const deliverer = createDeliverer(cfg, logger);
    try {
      const ops = quarantineOps(cfg, h.store, deliverer, client, logger);
      const before = sim.stats().requests;
      const out = await releaseMessage(ops, { name: 'tester' }, rec.id, { rescan: true });
      expect(out).toMatchObject({ status: 'released', rescan: { allow: true, actionCode: 1 } });
      expect(sim.stats().requests).toBe(before + 1);
      // The simulator was told the md5 of the bytes it received.
      expect(sim.stats().lastMetadata).toMatchObject({ md5: hex('md5', STORED) });
      expect((await h.store.get(rec.id))!.status).toBe('released');
    } finally {
      await deliverer.close();
      await client.close();
    }
  });
});

describe('UCWI request without md5', () => {
  const client = () =>
    new UcwiClient(
      {
        baseUrl: sim.url,
        protocol: 'smtp',
        ...SIM_KEYS,
        tls: { rejectUnauthorized: true, caFile: null },
        timeouts: { connectMs: 2000, headersMs: 5000, bodyMs: 5000, deadlineMs: 5000 },
        maxConcurrent: 2,
        keepAliveMs: 1000,
      },
      logger,
    );

  it('leaves the md5 key out when it is absent or empty, and the simulator answers normally', async () => {
    const c = client();
    try {
      for (const md5 of [undefined, '']) {
        const queryId = randomUUID();
        const r = await c.inspect({
          queryId,
          sender: 'alice@example.com',
          recipients: ['bob@example.org'],
          ...(md5 === undefined ? {} : { md5 }),
          size: STORED.length,
          openMessage: trickle(STORED),
        });
        expect(r).toMatchObject({ ok: true, actionCode: 1 });
        const meta = sim.stats().lastMetadata as Record<string, unknown>;
        expect(meta.queryID).toBe(queryId);
        expect(Object.keys(meta)).not.toContain('md5');
      }
      // With a known md5 it is still sent.
      const r = await c.inspect({
        queryId: randomUUID(),
        sender: 'a@example.com',
        recipients: [],
        md5: hex('md5', STORED),
        size: STORED.length,
        openMessage: trickle(STORED),
      });
      expect(r.ok).toBe(true);
      expect(sim.stats().lastMetadata).toMatchObject({ md5: hex('md5', STORED) });
    } finally {
      await c.close();
    }
  });
});
