// /readyz tells the truth: UCWI refusing our keys (401) fails readiness with that reason and logs a warning with the class; once UCWI accepts us again readiness recovers and a recovery line is logged.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChain, SIM_KEYS, sendMessage, message, eventually, type Chain } from '../helpers/chain.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';

const WRONG = { accessKey: 'rotated-access-key', secretKey: 'rotated-secret-key-0123456789' };

async function readyz(chain: Chain): Promise<{ status: number; body: { ready: boolean; checks: Record<string, { ok: boolean; detail: string }> } }> {
  const res = await fetch(`${chain.relay.admin!.url}/readyz`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: (await res.json()) as never };
}

describe('readiness against UCWI credentials', () => {
  let chain: Chain;
  let sim: UcwiSim;
  let replacement: UcwiSim | null = null;

  beforeAll(async () => {
    // UCWI knows SIM_KEYS; the relay signs with keys UCWI does not know (a rotation done on one side only).
    sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    chain = await startChain({ sim, config: { secrets: { ucwiAccessKey: WRONG.accessKey, ucwiSecretKey: WRONG.secretKey } } });
  });
  afterAll(async () => {
    await chain?.close();
    await sim?.close().catch(() => {});
    await replacement?.close();
  });

  it('fails /readyz with the 401 reason, and every message gets 451 with a warning naming the class', async () => {
    const r = await readyz(chain);
    expect(r.status).toBe(503);
    expect(r.body.checks['ucwi']!.ok).toBe(false);
    expect(r.body.checks['ucwi']!.detail).toContain('HTTP 401');
    const sent = await sendMessage(chain.port, message('hello'));
    expect(sent.data).toMatch(/^451 4\.7\.1/);
    await sendMessage(chain.port, message('hello again'));
    const outages = chain.logs.filter((l) => l['event'] === 'outage' && l['dependency'] === 'UCWI');
    // Rate-limited: two failures in a row give one warning, not two.
    expect(outages).toHaveLength(1);
    expect(outages[0]).toMatchObject({ level: 40, errorClass: 'auth' });
  });

  it('recovers once UCWI accepts our keys, and logs the recovery', async () => {
    const port = sim.port;
    await sim.close();
    // The appliance now has the relay's new keys, same address.
    replacement = await startUcwiSim({ ...WRONG, port, policiesFile: 'fixtures/detectors-test.yaml' });
    let last = await readyz(chain);
    const until = Date.now() + 10_000;
    while (last.status !== 200 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 250));
      last = await readyz(chain);
    }
    expect(last.status).toBe(200);
    expect(last.body.checks['ucwi']!.ok).toBe(true);
    const sent = await sendMessage(chain.port, message('hello, back to normal'));
    expect(sent.data).toMatch(/^250 /);
    await eventually(() => chain.logs.some((l) => l['event'] === 'recovered' && l['dependency'] === 'UCWI'));
    expect(chain.logs.find((l) => l['event'] === 'recovered')).toMatchObject({ level: 30, lastClass: 'auth', failures: 2 });
  });
});
