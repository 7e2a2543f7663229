// actionCode 4 end to end over SMTP: the next hop gets the message without its attachments, the quarantine keeps the original as evidence, unrewritable MIME is held whole.
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { simpleParser } from 'mailparser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChain, sendMessage, eventually, type Chain } from '../helpers/chain.js';
import { segments, boundaries, shapes } from '../helpers/mime-shapes.js';

let chain: Chain;
beforeAll(async () => {
  chain = await startChain();
});
afterAll(async () => {
  await chain.close();
});

function lastSummary(): Record<string, unknown> {
  return chain.summaries().at(-1) as Record<string, unknown>;
}

describe('actionCode 4: attachment removal', () => {
  it('relays the rewritten copy through the open transaction and keeps the original as evidence', async () => {
    chain.sim.setFaults({ forceActionCode: 4 });
    try {
      const eml = (await shapes())['mixed with a PDF and a ZIP'] as Buffer;
      const before = chain.sink.messages.length;
      const r = await sendMessage(chain.port, eml);
      // The next hop's own reply, passed through.
      expect(r.data).toMatch(/^250 2\.6\.0 Ok: queued as SINK/);
      expect(chain.sink.messages.length).toBe(before + 1);
      const got = chain.sink.messages.at(-1)!.data!;
      const s = lastSummary();
      expect(s).toMatchObject({ actionCode: 4, action: 'attachments-removed' });
      const qid = s['queryId'] as string;

      const head = got.toString('latin1').split('\r\n\r\n')[0] as string;
      expect(head).toMatch(/^Received: from client\.example\.test/);
      expect(head).toContain('\r\nX-DLP-Action: attachments-removed\r\nX-DLP-Attachments-Removed: 2\r\n');
      const parsed = await simpleParser(got);
      expect(parsed.attachments.map((a) => a.filename)).toEqual([]);
      expect(parsed.text).toContain('Please find the files attached.');
      expect(parsed.text).toContain(`The attachment "report.pdf" (application/pdf, 3016 bytes) was removed by the data-loss-prevention policy (ref ${qid})`);

      // Everything after our prepended headers is the original with the two file parts replaced.
      const original = segments(eml, boundaries(eml));
      const relayed = segments(got.subarray(got.indexOf('From: Alice')), boundaries(eml));
      expect(relayed.filter((seg, i) => seg !== original[i]).length).toBe(2);

      // The evidence copy: our trace line + the original, byte for byte, held under the same id.
      const evidence = readFileSync(join(chain.dirs.quarantine, `${qid}.eml`));
      expect(evidence.subarray(evidence.indexOf('From: Alice')).equals(eml)).toBe(true);
      expect(evidence.toString('latin1')).toMatch(/^Received: from client\.example\.test/);
      const meta = JSON.parse(readFileSync(join(chain.dirs.quarantine, `${qid}.json`), 'utf8')) as Record<string, unknown>;
      expect(meta).toMatchObject({ actionCode: 4, reason: 'evidence:dlp:4', status: 'held' });
    } finally {
      chain.sim.resetFaults();
    }
  });

  it('holds a message whose MIME cannot be rewritten safely, with that reason, and relays nothing', async () => {
    chain.sim.setFaults({ forceActionCode: 4 });
    try {
      const eml =
        'From: a@example.test\r\nTo: bob@example.test\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=u\r\n\r\n--u\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=z.zip\r\n\r\nUEsDBA==\r\n';
      const before = chain.sink.messages.length;
      const r = await sendMessage(chain.port, eml);
      expect(r.data).toMatch(/^250 2\.0\.0 Ok: message held for review \(ref [0-9a-f-]{36}\)$/);
      expect(chain.sink.messages.length).toBe(before);
      const qid = /ref ([0-9a-f-]{36})/.exec(r.data)![1]!;
      const meta = JSON.parse(readFileSync(join(chain.dirs.quarantine, `${qid}.json`), 'utf8')) as Record<string, unknown>;
      expect(meta).toMatchObject({ actionCode: 4, reason: 'attachments-unremovable:unterminated-multipart' });
      expect(lastSummary()).toMatchObject({ action: 'quarantine-unremovable' });
    } finally {
      chain.sim.resetFaults();
    }
  });

  it('takes the evidence copy back when the next hop refuses the rewritten copy (the client keeps the message)', async () => {
    chain.sim.setFaults({ forceActionCode: 4 });
    chain.sink.behaviour.data = () => [554, 'no thanks'];
    try {
      const eml = (await shapes())['mixed with a PDF and a ZIP'] as Buffer;
      const r = await sendMessage(chain.port, eml);
      expect(r.data).toMatch(/^554 /);
      const qid = lastSummary()['queryId'] as string;
      expect(lastSummary()).toMatchObject({ action: 'attachments-removed-refused' });
      await eventually(() => !existsSync(join(chain.dirs.quarantine, `${qid}.eml`)));
      expect(existsSync(join(chain.dirs.quarantine, `${qid}.json`))).toBe(false);
    } finally {
      delete chain.sink.behaviour.data;
      chain.sim.resetFaults();
    }
  });
});
