// Two relays on one PostgreSQL quarantine: one holds a message, the other releases it over the admin API, once; the database going away gives 451, never 250.
import { afterAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { replyCode } from '../helpers/raw-smtp.js';
import { startChain, message, sendMessage, type Chain } from '../helpers/chain.js';
import { freshSchema, dropSchemas, schemaUrl, PgProxy } from '../helpers/pg.js';

const TOKEN = 'admin-token-for-tests-0123456789';
const schemas: string[] = [];
afterAll(() => dropSchemas(schemas));

const send = async (port: number, body: string): Promise<string> => (await sendMessage(port, message(body))).data;

async function api(chain: Chain, method: 'GET' | 'POST', path: string, body?: unknown) {
  const res = await request(`${chain.relay.admin!.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
}

describe('relays sharing a PostgreSQL quarantine', () => {
  it('a message held by relay A is listed and released by relay B, exactly once', async () => {
    const schema = await freshSchema('relay_q');
    schemas.push(schema);
    const config = { quarantine: { url: schemaUrl(schema) }, secrets: { adminToken: TOKEN } };
    const a = await startChain({ config });
    const b = await startChain({ config });
    try {
      const r = await send(a.port, 'hold me DLPTEST-ACTION-6');
      expect(r).toMatch(/^250 2\.0\.0 Ok: message held for review/);
      const id = /ref ([0-9a-f-]{36})/.exec(r)![1]!;
      const listed = await api(b, 'GET', '/api/v1/quarantine');
      expect((listed.json['items'] as Array<{ id: string }>).map((i) => i.id)).toContain(id);
      // Both relays release at once: one delivers, the other is told it is taken or done.
      const [ra, rb] = await Promise.all([api(a, 'POST', `/api/v1/quarantine/${id}/release`, {}), api(b, 'POST', `/api/v1/quarantine/${id}/release`, {})]);
      expect([ra.status, rb.status].sort()).toEqual([200, 409]);
      expect(a.sink.messages.length + b.sink.messages.length).toBe(1);
      const delivered = [...a.sink.messages, ...b.sink.messages][0]!;
      expect(delivered.data!.toString()).toMatch(/^X-DLP-Released: /);
      expect(delivered.to.map((t) => t.address)).toEqual(['bob@example.test']);
      const again = await api(b, 'POST', `/api/v1/quarantine/${id}/release`, {});
      expect(again.status).toBe(409);
      expect(a.sink.messages.length + b.sink.messages.length).toBe(1);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('database gone: quarantines get 451 4.3.0, clean mail still relays, the API answers 503 and /readyz fails', async () => {
    const schema = await freshSchema('relay_q');
    schemas.push(schema);
    const proxy = new PgProxy();
    const port = await proxy.listen();
    const chain = await startChain({ config: { quarantine: { url: schemaUrl(schema, port) }, secrets: { adminToken: TOKEN } } });
    try {
      expect(await send(chain.port, 'DLPTEST-ACTION-6 while the database is up')).toMatch(/^250 /);
      await proxy.close();
      expect(await send(chain.port, 'DLPTEST-ACTION-6 while the database is down')).toMatch(
        /^451 4\.3\.0 Quarantine storage unavailable, try again later \(ref /,
      );
      expect(replyCode(await send(chain.port, 'clean mail'))).toBe(250);
      expect((await api(chain, 'GET', '/api/v1/quarantine')).status).toBe(503);
      const ready = await request(`${chain.relay.admin!.url}/readyz`);
      expect(ready.statusCode).toBe(503);
      expect(((await ready.body.json()) as { checks: Record<string, { ok: boolean }> }).checks['quarantine']!.ok).toBe(false);
    } finally {
      await chain.close();
    }
  });
});
