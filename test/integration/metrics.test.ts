// /metrics after real traffic: messages by action and reply class, UCWI and next-hop latency histograms, errors by class, gauges.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { startChain, message, sendMessage, type Chain } from '../helpers/chain.js';

const TOKEN = 'metrics-token-0123456789abcdef';

const send = async (port: number, body: string): Promise<string> => (await sendMessage(port, message(body))).data;

/** The value of one series, e.g. value(text, 'dlp_relay_messages_total{action="relay",reply_class="2xx"}'). */
function value(text: string, series: string): number | null {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line ? Number(line.slice(series.length + 1)) : null;
}

describe('/metrics', () => {
  let chain: Chain;
  let text = '';
  beforeAll(async () => {
    chain = await startChain({ config: { secrets: { adminToken: TOKEN } } });
    await send(chain.port, 'clean');
    await send(chain.port, 'clean again');
    await send(chain.port, 'card 4111 1111 1111 1111');
    await send(chain.port, 'DLPTEST-ACTION-6');
    chain.sim.setFaults({ status: 500 });
    await send(chain.port, 'while UCWI fails');
    chain.sim.resetFaults();
    const res = await request(`${chain.relay.admin!.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    text = await res.body.text();
  });
  afterAll(async () => {
    await chain.close();
  });

  it('counts messages by action and reply class', () => {
    expect(value(text, 'dlp_relay_messages_total{action="relay",reply_class="2xx"}')).toBe(2);
    expect(value(text, 'dlp_relay_messages_total{action="reject",reply_class="5xx"}')).toBe(1);
    expect(value(text, 'dlp_relay_messages_total{action="quarantine",reply_class="2xx"}')).toBe(1);
    expect(value(text, 'dlp_relay_messages_total{action="tempfail",reply_class="4xx"}')).toBe(1);
  });

  it('has UCWI and next-hop latency histograms and errors by class', () => {
    expect(value(text, 'dlp_relay_ucwi_duration_seconds_count{outcome="verdict"}')).toBe(4);
    expect(value(text, 'dlp_relay_ucwi_duration_seconds_count{outcome="server_error"}')).toBe(1);
    expect(value(text, 'dlp_relay_next_hop_duration_seconds_count{outcome="ok"}')).toBeGreaterThanOrEqual(2);
    expect(value(text, 'dlp_relay_errors_total{class="server_error"}')).toBe(1);
  });

  it('reports sessions, UCWI calls in flight and the quarantine size', () => {
    expect(value(text, 'dlp_relay_smtp_sessions')).not.toBeNull();
    expect(value(text, 'dlp_relay_ucwi_in_flight')).toBe(0);
    expect(value(text, 'dlp_relay_quarantine_messages')).toBe(1);
    expect(text).toContain('dlp_relay_process_resident_memory_bytes');
  });

  it('refuses /metrics without the token, and /healthz needs none', async () => {
    const denied = await request(`${chain.relay.admin!.url}/metrics`);
    expect(denied.statusCode).toBe(401);
    expect(await denied.body.json()).toEqual({ error: 'unauthorized' });
    const health = await request(`${chain.relay.admin!.url}/healthz`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();
  });
});
