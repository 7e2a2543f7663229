// Encryption actions routed to a gateway next hop: TLS required and verified, optional AUTH; 250 only when the gateway took every recipient, its 5xx when it refused all, else 451 (never in clear, never partial).
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { message, sendMessage, startChain, type Chain } from '../helpers/chain.js';
import { startSecureSink, type SecureSink } from '../helpers/secure-peers.js';
import { mtaReplies, mtaReply, startSmtpPeer } from '../helpers/smtp-peer.js';
import { makeTestPki, type TestPki } from '../helpers/tls-certs.js';

const dir = mkdtempSync(join(tmpdir(), 'gw-'));
let pki: TestPki;
let tlsGw: SecureSink;
let clearGw: SecureSink;
let picky: { port: number; close(): Promise<void>; got: string[][] };
let chain: Chain;

beforeAll(async () => {
  pki = makeTestPki(dir);
  writeFileSync(join(dir, 'gw.pass'), 's3cret\n');
  tlsGw = await startSecureSink({ tls: { keyFile: pki.keyFile, certFile: pki.certFile }, auth: { user: 'relay', pass: 's3cret' } });
  clearGw = await startSecureSink({});
  // A TLS gateway that refuses some recipients: "no-*" with 550, "later-*" with 451 (smtp-server's replies, which it ran on before).
  const got: string[][] = [];
  const refuse = (code: number, text: string): string => mtaReply(code, text, { enhanced: true });
  const server = await startSmtpPeer({
    replies: mtaReplies({ enhanced: true, queued: () => 'OK: message queued' }),
    extensions: { dsn: false },
    tls: { key: readFileSync(pki.keyFile), cert: readFileSync(pki.certFile) },
    script: {
      rcpt: (a) =>
        a.address.startsWith('no-') ? refuse(550, '5.1.1 no such user here') : a.address.startsWith('later-') ? refuse(451, '4.2.1 mailbox busy') : undefined,
      accepted: (m) => void got.push(m.to.map((r) => r.address)),
    },
  });
  picky = { port: server.port, close: () => server.close(), got };
  const gw = (port: number, extra: Record<string, unknown> = {}) => ({
    host: '127.0.0.1',
    port,
    tls: { caFile: pki.caFile },
    timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 },
    ...extra,
  });
  chain = await startChain({
    config: {
      gateways: {
        secure: gw(tlsGw.port, { authUser: 'relay', passFile: join(dir, 'gw.pass') }),
        clear: gw(clearGw.port),
        untrusted: { host: '127.0.0.1', port: tlsGw.port, timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 } },
        // Connections are reused: after DATA was refused (every recipient refused) NextHopPool.deliver() resets
        // the transaction before the connection serves again, or this picky next hop would answer "503 nested MAIL".
        picky: gw(picky.port),
      },
      policy: {
        actions: {
          '5': { action: 'route_to_gateway', gateway: 'secure' },
          '7': { action: 'route_to_gateway', gateway: 'clear' },
          '8': { action: 'route_to_gateway', gateway: 'untrusted', header: false },
          '9': { action: 'route_to_gateway', gateway: 'picky' },
        },
      },
    },
  });
});
afterAll(async () => {
  await chain?.close();
  await tlsGw?.close();
  await clearGw?.close();
  await picky?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('route_to_gateway', () => {
  it('delivers the whole message to the gateway over verified TLS with AUTH, headers stamped; the default next hop gets nothing', async () => {
    const before = chain.sink.messages.length;
    const r = await sendMessage(chain.port, message('trigger DLPTEST-ACTION-5'), { to: ['bob@example.test', 'carol@example.test'] });
    // The gateway's own final reply, passed through.
    expect(r.data).toMatch(/^250 2\.6\.0 2\.0\.0 Ok: queued/);
    expect(chain.sink.messages.length).toBe(before);
    const got = tlsGw.messages.at(-1)!;
    expect(got).toMatchObject({ secure: true, user: 'relay', to: ['bob@example.test', 'carol@example.test'] });
    const head = got.data.toString('latin1').split('\r\n\r\n')[0];
    expect(head).toMatch(/^Received: from client\.example\.test/);
    expect(head).toContain('\r\nX-DLP-Action-Code: 5\r\nX-DLP-Action: relay-gateway\r\nX-DLP-Encrypt: required\r\n');
    expect(chain.summaries().at(-1)).toMatchObject({ actionCode: 5, action: 'relay-gateway' });
    // The default transaction was reset, not broken: the next message still goes through it.
    const ok = await sendMessage(chain.port, message('clean'));
    expect(ok.data).toMatch(/^250 2\.6\.0 /);
    expect(chain.sink.messages.length).toBe(before + 1);
  });

  it.each([
    ['a gateway without STARTTLS', 'DLPTEST-ACTION-7', () => clearGw.messages.length],
    ['a gateway whose certificate we cannot verify', 'DLPTEST-ACTION-8', () => tlsGw.messages.length],
  ])('%s: 451, never a relay in clear', async (_n, trigger, count) => {
    const before = { sink: chain.sink.messages.length, gw: count() };
    const r = await sendMessage(chain.port, message(`trigger ${trigger}`));
    expect(r.data).toMatch(/^451 4\.4\.0 Encryption gateway unavailable, try again later \(ref [0-9a-f-]{36}\)$/);
    expect(chain.sink.messages.length).toBe(before.sink);
    expect(count()).toBe(before.gw);
    expect(chain.summaries().at(-1)).toMatchObject({ action: 'relay-gateway-failed' });
  });

  it.each([
    ['every recipient refused with 5xx → the gateway 5xx', ['no-a@example.test', 'no-b@example.test'], /^550 5\.1\.1 /, 'relay-gateway-refused', 0],
    [
      'mixed accepted and refused → 451, the client retries the whole message',
      ['ok@example.test', 'no-a@example.test'],
      /^451 4\.4\.0 Encryption gateway did not accept every recipient/,
      'relay-gateway-deferred',
      1,
    ],
    ['a 4xx recipient → 451', ['later-a@example.test'], /^451 4\.4\.0 /, 'relay-gateway-deferred', 0],
  ])('%s', async (_n, to, reply, action, delivered) => {
    const before = picky.got.length;
    // Let the previous transaction's connection expire (see the pool note above).
    await new Promise((r) => setTimeout(r, 20));
    const r = await sendMessage(chain.port, message('trigger DLPTEST-ACTION-9'), { to });
    expect(r.data).toMatch(reply);
    expect(chain.summaries().at(-1)).toMatchObject({ action });
    expect(picky.got.length).toBe(before + delivered);
  });
});
