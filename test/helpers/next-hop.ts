// NextHopOptions for egress tests: a plain loopback next hop with short timeouts, overridable per test.
import type { NextHopOptions } from '../../src/egress/pool.js';

export function nextHopTestOptions(port: number, over: Partial<NextHopOptions> = {}): NextHopOptions {
  return {
    host: '127.0.0.1',
    port,
    secure: false,
    starttls: 'opportunistic',
    tls: { rejectUnauthorized: true },
    heloName: 'relay.test',
    pool: { maxConnections: 2, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 },
    timeouts: { connectMs: 5_000, greetingMs: 5_000, socketMs: 10_000, dataDoneMs: 10_000 },
    ...over,
  };
}
