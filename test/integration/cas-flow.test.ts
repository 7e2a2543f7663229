// The path the relay wires up: a block verdict → extract from the spooled EML → outbox → pusher → sender and hashes on the simulator's lists.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import { CasClient } from '../../src/cas/client.js';
import { CasPusher, FsCasOutbox } from '../../src/cas/outbox.js';
import { extractPushItems } from '../../src/cas/extract.js';
import { shouldPush } from '../../src/cas/trigger.js';
import { parseCasSettings } from '../../src/config/cas-schema.js';
import { startCasSim, type CasSim } from '../sim/cas/server.js';

const TOKEN = 'flow-token';
let sim: CasSim | null = null;
let client: CasClient | null = null;
let outbox: FsCasOutbox | null = null;
let dir = '';

afterEach(async () => {
  await outbox?.close();
  await client?.close();
  await sim?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
  sim = null;
  client = null;
  outbox = null;
  dir = '';
});

describe('block verdict to CAS blocked list', () => {
  it('puts the sender and the attachment hashes on the lists; an allow verdict and an internal sender push nothing', async () => {
    dir = mkdtempSync(join(tmpdir(), 'cas-flow-'));
    sim = await startCasSim({ token: TOKEN });
    const settings = parseCasSettings({ enabled: true, url: sim.url, push: { attachmentHashes: true }, exemptDomains: ['corp.example'] });
    client = new CasClient({ token: TOKEN, url: settings.url, rate: settings.rate, retry: { ...settings.retry, baseMs: 5, maxMs: 10 } });
    outbox = new FsCasOutbox(join(dir, 'outbox'));
    const pusher = new CasPusher({ outbox, client });

    const attachment = Buffer.from('customer list: 4111 1111 1111 1111\n');
    const eml = join(dir, 'm.eml');
    writeFileSync(
      eml,
      await new MailComposer({ from: 'x@evil.example', to: 'y@corp.example', text: 'hi', attachments: [{ filename: 'list.csv', content: attachment }] })
        .compile()
        .build(),
    );

    const verdicts: Array<{ actionCode: number | null; sender: string }> = [
      { actionCode: 1, sender: 'allowed@evil.example' },
      { actionCode: null, sender: 'unknown@evil.example' },
      { actionCode: 2, sender: 'x@evil.example' },
      { actionCode: 2, sender: 'alice@corp.example' },
    ];
    for (const v of verdicts) {
      if (!shouldPush(v.actionCode, settings.triggers)) continue;
      const { items } = await extractPushItems(eml, {
        sender: v.sender,
        pushSender: settings.push.sender,
        pushAttachmentHashes: settings.push.attachmentHashes,
        pushUrls: settings.push.urls,
        exemptDomains: settings.exemptDomains,
        exemptSenders: settings.exemptSenders,
        reason: `block verdict for ${v.sender}`,
      });
      await outbox.enqueue(items);
    }
    // Nothing has gone to CAS yet: the mail path only wrote the outbox.
    expect(sim.requestLog).toHaveLength(0);
    const r = await pusher.runOnce();
    expect(r.requests).toBe(1);
    expect(sim.list('senders')).toEqual(['x@evil.example']);
    expect(sim.list('filehashes')).toEqual([createHash('sha1').update(attachment).digest('hex')]);
    expect(sim.list('file256hashes')).toEqual([createHash('sha256').update(attachment).digest('hex')]);
    expect(await outbox.stats()).toEqual({ pending: 0, failed: 0, done: 3 });
  });

  it('runs in the background once started and stops cleanly', async () => {
    dir = mkdtempSync(join(tmpdir(), 'cas-flow-'));
    sim = await startCasSim({ token: TOKEN });
    client = new CasClient({ token: TOKEN, url: sim.url });
    outbox = new FsCasOutbox(join(dir, 'outbox'));
    const pusher = new CasPusher({ outbox, client, intervalMs: 20 });
    pusher.start();
    await outbox.enqueue([{ list: 'senders', value: 'bg@evil.example', action: 'create', reason: 'test' }]);
    pusher.kick();
    // Bounded wait for the background loop: at most 250 polls of 20 ms.
    for (let i = 0; i < 250 && sim.list('senders').length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await pusher.stop();
    expect(sim.list('senders')).toEqual(['bg@evil.example']);
  });
});
