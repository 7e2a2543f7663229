// Monitor mode through the running relay: a block verdict is relayed, logged and counted as would-be, nothing reaches CAS; a reload switches to enforce.
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChain, eventually, message, sendMessage, type Chain } from '../helpers/chain.js';
import { startCasSim, type CasSim } from '../sim/cas/server.js';

const TOKEN = 'e'.repeat(40);
let chain: Chain;
let cas: CasSim;

beforeAll(async () => {
  cas = await startCasSim({ token: TOKEN });
  chain = await startChain({
    config: {
      policy: { mode: 'monitor' },
      secrets: { casToken: TOKEN },
      cas: {
        enabled: true,
        url: cas.url,
        exemptDomains: ['ourcorp.test'],
        outbox: { dir: join(mkdtempSync(join(tmpdir(), 'cas-outbox-')), 'outbox'), intervalMs: 100, baseMs: 100, maxMs: 500 },
        retry: { maxAttempts: 1, baseMs: 50, maxMs: 100, totalMs: 2000 },
      },
    },
  });
});
afterAll(async () => {
  await chain.close();
  await cas.close();
});

const headOf = (b: Buffer) => b.toString('latin1').split('\r\n\r\n')[0] as string;

describe('policy.mode: monitor', () => {
  it('relays a blocked message, logs and counts the would-be reject, stamps no verdict headers, pushes nothing to CAS; a reload enforces', async () => {
    const before = chain.sink.messages.length;
    const r = await sendMessage(chain.port, message('card 4111 1111 1111 1111'), { from: 'watched@outside.test', to: ['bob@partner.test'] });
    expect(r.data).toMatch(/^250 2\.6\.0 Ok: queued as SINK/);
    expect(chain.sink.messages.length).toBe(before + 1);
    const head = headOf(chain.sink.messages.at(-1)!.data!);
    expect(head).toMatch(/\r\nX-DLP-Relay-Scanned: v1; /);
    expect(head).not.toMatch(/X-DLP-Action|X-DLP-Query-ID|X-DLP-Action-Code/);
    expect(chain.summaries().at(-1)).toMatchObject({ actionCode: 2, action: 'monitor-reject', sender: 'watched@outside.test' });
    const metrics = await chain.relay.metrics.registry.getSingleMetricAsString('dlp_relay_messages_total');
    expect(metrics).toMatch(/dlp_relay_messages_total\{action="monitor-reject",reply_class="2xx"\} 1/);

    const report = await chain.reloadWith({ policy: { mode: 'enforce' } });
    expect(report).toMatchObject({ ok: true });
    expect(report.applied).toContain('policy.mode');
    const r2 = await sendMessage(chain.port, message('card 4111 1111 1111 1111'), { from: 'enforced@outside.test', to: ['bob@partner.test'] });
    expect(r2.data).toMatch(/^550 5\.7\.1 /);
    expect(chain.sink.messages.length).toBe(before + 1);
    // The enforced block reaches CAS; the monitored one, sent first, never did.
    await eventually(() => cas.list('senders').includes('enforced@outside.test'), 10_000);
    expect(cas.list('senders')).toEqual(['enforced@outside.test']);

    await chain.reloadWith({ policy: { mode: 'monitor', headers: 'on' } });
    await sendMessage(chain.port, message('card 4111 1111 1111 1111'), { from: 'watched@outside.test', to: ['bob@partner.test'] });
    expect(headOf(chain.sink.messages.at(-1)!.data!)).toContain('\r\nX-DLP-Action-Code: 2\r\nX-DLP-Action: monitor-reject\r\n');
  }, 30_000);

  it('a policy rule applies its own mode to the messages it matches (first match wins), and the summary names it', async () => {
    await chain.reloadWith({ policy: { mode: 'enforce', rules: [{ name: 'pilot-partner', match: { recipients: ['pilot.test'] }, mode: 'monitor' }] } });
    const before = chain.sink.messages.length;
    const a = await sendMessage(chain.port, message('card 4111 1111 1111 1111'), { from: 'x@outside.test', to: ['carol@pilot.test'] });
    expect(a.data).toMatch(/^250 /);
    expect(chain.summaries().at(-1)).toMatchObject({ action: 'monitor-reject', rule: 'pilot-partner' });
    const b = await sendMessage(chain.port, message('card 4111 1111 1111 1111'), { from: 'x@outside.test', to: ['dave@other.test'] });
    expect(b.data).toMatch(/^550 5\.7\.1 /);
    expect(chain.summaries().at(-1)).toMatchObject({ action: 'reject' });
    expect(chain.summaries().at(-1)?.['rule']).toBeUndefined();
    expect(chain.sink.messages.length).toBe(before + 1);
  }, 30_000);
});
