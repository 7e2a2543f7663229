// Rolling restart without loss: on SIGTERM /readyz fails first while new sessions are still served for limits.drainDelayMs, then the drain; a real `dlp-relay serve` process.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { message, sendMessage, startSink, SIM_KEYS } from '../helpers/chain.js';
import { relayEnv, spawnRelay, type CliRelay } from '../helpers/cli-relay.js';
import { startUcwiSim } from '../../src/engine/server.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function readyzStatus(url: string): Promise<number | 'refused'> {
  try {
    const res = await request(`${url}/readyz`, { headersTimeout: 2000, bodyTimeout: 2000 });
    await res.body.dump();
    return res.statusCode;
  } catch {
    return 'refused';
  }
}

describe('rolling restart', () => {
  it('SIGTERM: /readyz answers 503 first while new sessions still get 250, then the drain; exit 0', async () => {
    const root = mkdtempSync(join(tmpdir(), 'dlp-rolling-'));
    cleanups.push(() => rmSync(root, { recursive: true, force: true }));
    const sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    cleanups.push(() => sim.close());
    const sink = await startSink();
    cleanups.push(() => sink.close());
    const relay: CliRelay = await spawnRelay(relayEnv(root, sink.port, sim.url, { DLP_RELAY_DRAIN_DELAY_MS: '3000', DLP_RELAY_LOG_LEVEL: 'info' }));
    cleanups.push(() => relay.kill());
    const admin = /admin: +(http:\/\/127\.0\.0\.1:\d+)/.exec(relay.stderr())?.[1];
    expect(admin).toBeDefined();
    expect(await readyzStatus(admin!)).toBe(200);

    relay.kill('SIGTERM');
    const t0 = Date.now();
    // Readiness goes first (bounded wait)...
    let status: number | 'refused' = 200;
    while (status === 200 && Date.now() - t0 < 2000) {
      status = await readyzStatus(admin!);
      if (status === 200) await new Promise((r) => setTimeout(r, 50));
    }
    expect(status).toBe(503);
    // ...while a new session in the delay is still served end to end.
    const r = await sendMessage(relay.port, message('sent after SIGTERM, before the drain'));
    // (Once the drain had begun this session would get 421 or no connection: the 250s prove it came in the delay.)
    expect(r.mail).toMatch(/^250 /);
    expect(r.data).toMatch(/^250 /);
    expect(sink.messages).toHaveLength(1);

    const exit = await Promise.race([relay.exited, new Promise<'hung'>((res) => setTimeout(() => res('hung'), 15_000))]);
    expect(exit).toEqual({ code: 0, signal: null });
    const events = relay.logs().map((l) => l['event']);
    expect(events).toContain('unready');
  });
});
