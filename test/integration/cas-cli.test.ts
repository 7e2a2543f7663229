// The `dlp-relay cas …` command functions against the simulator: output, exit codes, input validation, mitigation and result polling.
import { afterEach, describe, expect, it } from 'vitest';
import { PassThrough } from 'node:stream';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CasClient } from '../../src/cas/client.js';
import { casBlock, casList, casMitigate, casResults, casUnblock, EXIT_API_FAILURE, EXIT_BAD_INPUT, EXIT_OK } from '../../src/cas/cli.js';
import { startCasSim, type CasSim, type CasSimOptions } from '../sim/cas/server.js';

const TOKEN = 'cli-test-token';
const sims: CasSim[] = [];
const clients: CasClient[] = [];
const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(sims.splice(0).map((s) => s.close()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function setup(opts: Partial<CasSimOptions> = {}, token = TOKEN) {
  const s = await startCasSim({ token: TOKEN, rateLimit: { limit: 1000, windowMs: 60_000 }, mitigation: { createdMs: 30, executingMs: 30 }, ...opts });
  sims.push(s);
  const client = new CasClient({ token, url: s.url, rate: { limit: 100, windowMs: 100 }, retry: { maxAttempts: 2, baseMs: 5, maxMs: 10, totalMs: 5_000 } });
  clients.push(client);
  const out = new PassThrough();
  const buf = { text: '' };
  out.on('data', (c: Buffer) => (buf.text += c.toString()));
  return { s, client, out, buf };
}

describe('cas block / unblock / list', () => {
  it('blocks, lists and unblocks', async () => {
    const { s, client, out, buf } = await setup();
    const code = await casBlock(
      { sender: ['Bad@Evil.example'], url: ['https://evil.example/x'], sha1: ['F3CDDDB37F6A933D6A256BD98B4BC703A448C677'], sha256: [] },
      out,
      { client },
    );
    expect(code).toBe(EXIT_OK);
    expect(buf.text).toMatch(/blocked: 1 senders, 1 urls, 1 filehashes \(CAS: Add rules successfully\.\)/);
    expect(s.requestLog).toHaveLength(1);
    expect(s.list('filehashes')).toEqual(['f3cdddb37f6a933d6a256bd98b4bc703a448c677']);

    expect(await casList({}, out, { client })).toBe(EXIT_OK);
    expect(buf.text).toMatch(/senders \(1\):\n {2}bad@evil\.example/);

    expect(await casUnblock({ sender: ['bad@evil.example'] }, out, { client })).toBe(EXIT_OK);
    expect(s.list('senders')).toEqual([]);
    expect(s.list('urls')).toEqual(['https://evil.example/x']);
  });

  it('lists every bad value with exit 2 and sends nothing', async () => {
    const { s, client, out, buf } = await setup();
    const code = await casBlock({ sender: ['good@x.example', 'bad'], url: ['evil.example'], sha1: ['123'], sha256: ['zz'] }, out, { client });
    expect(code).toBe(EXIT_BAD_INPUT);
    expect(buf.text.trim().split('\n')).toHaveLength(4);
    expect(s.requestLog).toHaveLength(0);
    expect(await casUnblock({}, out, { client })).toBe(EXIT_BAD_INPUT);
  });

  it('exits 1 with the vendor message on an API failure', async () => {
    const { client, out, buf } = await setup({}, 'wrong');
    expect(await casList({}, out, { client })).toBe(EXIT_API_FAILURE);
    expect(buf.text).toMatch(/HTTP 401 .*Authentication token not found/);
  });
});

describe('cas mitigate / results', () => {
  it('validates a single action and reports every problem with exit 2', async () => {
    const { s, client, out, buf } = await setup();
    const code = await casMitigate({ action: 'MAIL_RESTORE', mailbox: 'user@x.example', service: 'gmail', deliveryTime: 'today' }, out, { client });
    expect(code).toBe(EXIT_BAD_INPUT);
    for (const field of ['action_type', 'service', 'detection_time', 'mail_log_id', 'mail_message_id', 'mail_message_delivery_time'])
      expect(buf.text).toContain(field);
    expect(s.requestLog).toHaveLength(0);
  });

  it('submits one action, prints batch_id and traceId, and polls results to the terminal state', async () => {
    const { s, client, out, buf } = await setup();
    const code = await casMitigate(
      { action: 'MAIL_DELETE', mailbox: 'user@x.example', messageId: '<m@x.example>', deliveryTime: '2019-03-15T07:44:27.000Z' },
      out,
      { client },
    );
    expect(code).toBe(EXIT_OK);
    const batchId = /batch_id: (\S+)/.exec(buf.text)?.[1];
    expect(batchId).toMatch(/^[0-9a-f-]{36}$/);
    expect(buf.text).toMatch(/traceId: [0-9a-f-]{36}/);
    expect(s.requestLog[0]?.mitigationItems).toBe(1);

    expect(await casResults({ batchId: batchId!, wait: true, intervalMs: 20, timeoutMs: 5_000, json: true }, out, { client })).toBe(EXIT_OK);
    const last = JSON.parse(buf.text.trim().split('\n').pop()!) as { complete: boolean; actions: Array<{ status: string; account_provider: string }> };
    expect(last.complete).toBe(true);
    expect(last.actions.map((a) => a.status)).toEqual(['Success']);
    expect(last.actions[0]?.account_provider).toBe('office365');
  });

  it('reads a CSV batch file and reports problems per row', async () => {
    const { s, client, out, buf } = await setup({ faults: { failMailboxes: ['gone@x.example'] } });
    const d = mkdtempSync(join(tmpdir(), 'cas-cli-'));
    dirs.push(d);
    const good = join(d, 'batch.csv');
    writeFileSync(
      good,
      'action_type,service,account_provider,mailbox,mail_message_id,mail_unique_id\n' +
        'MAIL_DELETE,gmail,google,a@x.example,,AAMk1=\n' +
        'MAIL_QUARANTINE,exchange,office365,gone@x.example,<q@x.example>,\n',
    );
    expect(await casMitigate({ file: good }, out, { client })).toBe(EXIT_OK);
    const batchId = /batch_id: (\S+)/.exec(buf.text)![1]!;
    expect(await casResults({ batchId, wait: true, intervalMs: 20, timeoutMs: 5_000 }, out, { client })).toBe(EXIT_OK);
    expect(buf.text).toMatch(/2 action\(s\): Success 1, Failed 1/);
    expect(buf.text).toMatch(/Failed\tMAIL_QUARANTINE\tgone@x\.example\t<q@x\.example>\t-999 The action for these mails failed\./);

    const bad = join(d, 'bad.json');
    writeFileSync(
      bad,
      JSON.stringify([
        { action_type: 'MAIL_QUARANTINE', service: 'gmail', account_provider: 'google', mailbox: 'a@x.example', mail_unique_id: 'u' },
        { service: 'exchange' },
      ]),
    );
    buf.text = '';
    const before = s.requestLog.length;
    expect(await casMitigate({ file: bad }, out, { client })).toBe(EXIT_BAD_INPUT);
    expect(buf.text).toMatch(/item 0 action_type: Gmail supports only MAIL_DELETE/);
    expect(buf.text).toMatch(/item 1 mailbox: required/);
    expect(s.requestLog.length).toBe(before);
    expect(await casMitigate({ file: join(d, 'missing.csv') }, out, { client })).toBe(EXIT_BAD_INPUT);
  });

  it('prints the current state without --wait, and exits 1 when waiting times out', async () => {
    const { client, out, buf } = await setup({ mitigation: { createdMs: 60_000, executingMs: 0 } });
    await casMitigate({ action: 'MAIL_QUARANTINE', mailbox: 'u@x.example', uniqueId: 'AAMk=' }, out, { client });
    const batchId = /batch_id: (\S+)/.exec(buf.text)![1]!;
    expect(await casResults({ batchId, wait: false }, out, { client })).toBe(EXIT_OK);
    expect(buf.text).toMatch(/1 action\(s\): Created 1/);
    expect(await casResults({ batchId, wait: true, intervalMs: 20, timeoutMs: 100 }, out, { client })).toBe(EXIT_API_FAILURE);
    expect(buf.text).toMatch(/not final after 100 ms/);
    expect(await casResults({ batchId: ' ', wait: false }, out, { client })).toBe(EXIT_BAD_INPUT);
  });
});
