// CAS through the running relay: a block verdict lands the sender on the CAS simulator's list; a CAS outage never touches mail flow.
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { replyCode } from '../helpers/raw-smtp.js';
import { testTempDir } from '../helpers/tmp.js';
import { startChain, eventually, message, sendMessage, type Chain } from '../helpers/chain.js';
import { startCasSim, type CasSim } from '../sim/cas/server.js';
import { casBucketFor } from '../../src/cas/shared-rate.js';
import { dropSchemas, freshSchema, pgAdmin, schemaUrl } from '../helpers/pg.js';

const TOKEN = 'f'.repeat(40);

const send = async (port: number, from: string, body: string): Promise<string> =>
  (await sendMessage(port, message(body), { from, to: ['bob@partner.test'] })).data;

describe('relay → CAS blocked lists', () => {
  let chain: Chain | undefined;
  let cas: CasSim | undefined;
  const schemas: string[] = [];
  afterEach(async () => {
    await chain?.close();
    await cas?.close();
    chain = undefined;
    cas = undefined;
    await dropSchemas(schemas.splice(0));
  });

  async function start(extra: Record<string, unknown> = {}, more: Record<string, unknown> = {}) {
    cas = await startCasSim({ token: TOKEN });
    chain = await startChain({
      config: {
        ...more,
        secrets: { casToken: TOKEN },
        cas: {
          enabled: true,
          url: cas.url,
          exemptDomains: ['ourcorp.test'],
          outbox: { dir: join(testTempDir('cas-outbox-'), 'outbox'), intervalMs: 200, baseMs: 200, maxMs: 1000 },
          retry: { maxAttempts: 1, baseMs: 50, maxMs: 100, totalMs: 2000 },
          ...extra,
        },
      },
    });
    return { chain, cas };
  }

  it('a block verdict puts the sender on the list; a clean message and an internal sender do not', async () => {
    const { chain, cas } = await start();
    expect(await send(chain.port, 'leaker@outside.test', 'card 4111 1111 1111 1111')).toMatch(/^550 5\.7\.1 /);
    expect(replyCode(await send(chain.port, 'clean@outside.test', 'nothing here'))).toBe(250);
    expect(await send(chain.port, 'staff@ourcorp.test', 'card 4111 1111 1111 1111')).toMatch(/^550 5\.7\.1 /);
    await eventually(() => cas.list('senders').includes('leaker@outside.test'), 10_000);
    expect(cas.list('senders')).toEqual(['leaker@outside.test']);
  });

  it('CAS down: replies are unchanged, and the push arrives after it recovers, once', async () => {
    const { chain, cas } = await start();
    cas.setFaults({ always: 503 });
    const r = await send(chain.port, 'leaker2@outside.test', 'card 4111 1111 1111 1111');
    expect(r).toMatch(/^550 5\.7\.1 Message rejected by data-loss-prevention policy/);
    expect(replyCode(await send(chain.port, 'clean@outside.test', 'fine'))).toBe(250);
    // While CAS is down the entry waits in the outbox.
    await eventually(() => cas.requestLog.some((q) => q.status === 503), 10_000);
    expect(cas.list('senders')).toEqual([]);
    cas.setFaults({});
    await eventually(() => cas.list('senders').includes('leaker2@outside.test'), 15_000);
    const creates = cas.requestLog.filter(
      (q) => q.method === 'POST' && q.status !== undefined && q.status < 300 && (q.rules?.senders ?? []).includes('leaker2@outside.test'),
    );
    expect(creates).toHaveLength(1);
  });

  it('with the pg outbox the pushes are taken from the budget shared in the database', async () => {
    const schema = await freshSchema('relay_cas');
    schemas.push(schema);
    const dir = join(testTempDir('cas-outbox-'), 'outbox');
    const { chain, cas } = await start(
      { outbox: { backend: 'pg', dir, intervalMs: 200, baseMs: 200, maxMs: 1000 }, rate: { limit: 7, windowMs: 60_000 } },
      { quarantine: { url: schemaUrl(schema) } },
    );
    expect(await send(chain.port, 'leaker3@outside.test', 'card 4111 1111 1111 1111')).toMatch(/^550 5\.7\.1 /);
    await eventually(() => cas.list('senders').includes('leaker3@outside.test'), 10_000);
    const rows = await pgAdmin((c) =>
      c.query<{ slot: number; used: boolean }>(`SELECT slot, free_at > 'epoch' AS used FROM ${schema}.cas_rate_slots WHERE bucket = $1 ORDER BY slot`, [
        casBucketFor(TOKEN),
      ]),
    );
    // The bucket has the configured size, and the push took one of its slots.
    expect(rows.rows).toHaveLength(7);
    expect(rows.rows.filter((r) => r.used).length).toBe(cas.requestLog.length);
  });
});
