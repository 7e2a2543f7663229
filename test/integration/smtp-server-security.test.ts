// SMTP engine over real sockets, the hostile side: STARTTLS (and injection), AUTH only under TLS, PROXY protocol trust, idle/slowloris/session clocks.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SmtpSession } from '../helpers/raw-smtp.js';
import { eventually, RawClient, startEngine, type Engine } from '../helpers/smtp-engine.js';
import { makeTestPki } from '../helpers/tls-certs.js';
import { V2_SIGNATURE } from '../../src/smtp/proxy-protocol.js';

let dir: string;
let tls: { key: Buffer; cert: Buffer; require: boolean };
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'smtp-engine-'));
  const pki = makeTestPki(dir);
  tls = { key: readFileSync(pki.keyFile), cert: readFileSync(pki.certFile), require: false };
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let engine: Engine | undefined;
afterEach(async () => {
  await engine?.stop();
  engine = undefined;
});
async function start(...args: Parameters<typeof startEngine>): Promise<Engine> {
  engine = await startEngine(...args);
  return engine;
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const users: Record<string, string> = { alice: 's3cret' };
const checkUser = async (_s: unknown, u: string, p: string): Promise<boolean> => users[u] === p;

describe('STARTTLS and AUTH', () => {
  it('offers AUTH only after STARTTLS and refuses it in clear with 538 5.7.11', async () => {
    const e = await start({ tls, auth: { required: true, maxFailures: 3 } }, { auth: checkUser });
    const s = await SmtpSession.connect(e.port);
    const ehlo = await s.cmd('EHLO c');
    expect(ehlo).toContain('250-ENHANCEDSTATUSCODES');
    expect(ehlo).toMatch(/STARTTLS$/);
    expect(ehlo).not.toContain('AUTH');
    expect(await s.cmd(`AUTH PLAIN ${b64('\0alice\0s3cret')}`)).toBe('538 5.7.11 Encryption required for requested authentication mechanism');
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('530 5.7.0 Authentication required');
    expect(await s.startTls()).toBe('220 2.0.0 Ready to start TLS');
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('503 5.5.1 Bad sequence of commands'); // EHLO forgotten
    const secureEhlo = await s.cmd('EHLO c');
    expect(secureEhlo).toMatch(/250 AUTH PLAIN LOGIN$/);
    expect(secureEhlo).not.toContain('STARTTLS');
    expect(await s.cmd('STARTTLS')).toBe('503 5.5.1 Bad sequence of commands');
    await s.quit();
  });

  it('MAIL before STARTTLS gets 530 5.7.0 when TLS is required', async () => {
    const e = await start({ tls: { ...tls, require: true } });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('530 5.7.0 Must issue a STARTTLS command first');
    await s.startTls();
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(e.rec.mails[0]!.transmissionType).toBe('ESMTPS');
    await s.quit();
  });

  it('accepts AUTH PLAIN (initial response and after 334) and AUTH LOGIN over TLS', async () => {
    const e = await start({ tls, auth: { required: true, maxFailures: 3 } }, { auth: checkUser });
    for (const dialog of [
      async (s: SmtpSession) => s.cmd(`AUTH PLAIN ${b64('\0alice\0s3cret')}`),
      async (s: SmtpSession) => {
        expect(await s.cmd('AUTH PLAIN')).toBe('334 ');
        return s.cmd(b64('alice\0alice\0s3cret'));
      },
      async (s: SmtpSession) => {
        expect(await s.cmd('AUTH LOGIN')).toBe('334 VXNlcm5hbWU6');
        expect(await s.cmd(b64('alice'))).toBe('334 UGFzc3dvcmQ6');
        return s.cmd(b64('s3cret'));
      },
    ]) {
      const s = await SmtpSession.connect(e.port);
      await s.startTls();
      expect(await s.cmd('EHLO c')).toMatch(/^250/);
      expect(await dialog(s)).toBe('235 2.7.0 Authentication successful');
      expect(await s.cmd('AUTH LOGIN')).toBe('503 5.5.1 Bad sequence of commands');
      expect(await s.cmd(`NOOP ${'x'.repeat(600)}`)).toBe('500 5.5.6 Line too long');
      expect(await s.cmd('MAIL FROM:<a@x.test> AUTH=<>')).toBe('250 2.1.0 Ok');
      await s.quit();
    }
    expect(e.rec.mails.map((m) => [m.user, m.transmissionType])).toEqual([
      ['alice', 'ESMTPSA'],
      ['alice', 'ESMTPSA'],
      ['alice', 'ESMTPSA'],
    ]);
  });

  it('takes an AUTH PLAIN line longer than 512 bytes (RFC 4954: up to 12288)', async () => {
    const long = 'p'.repeat(800);
    const e = await start({ tls, auth: { required: false, maxFailures: 3 } }, { auth: async (_s, u, p) => u === 'alice' && p === long });
    const s = await SmtpSession.connect(e.port);
    await s.startTls();
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd(`AUTH PLAIN ${b64(`\0alice\0${long}`)}`)).toBe('235 2.7.0 Authentication successful');
    await s.quit();
  });

  it('cancels with *, and closes with 421 4.7.0 after 3 failed attempts', async () => {
    const e = await start({ tls, auth: { required: false, maxFailures: 3 } }, { auth: checkUser });
    const s = await SmtpSession.connect(e.port);
    await s.startTls();
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('AUTH LOGIN')).toBe('334 VXNlcm5hbWU6');
    expect(await s.cmd('*')).toBe('501 5.0.0 Authentication cancelled');
    expect(await s.cmd('AUTH CRAM-MD5')).toBe('504 5.5.4 Unrecognized authentication type');
    expect(await s.cmd(`AUTH PLAIN ${b64('\0alice\0wrong')}`)).toBe('535 5.7.8 Authentication credentials invalid');
    expect(await s.cmd(`AUTH PLAIN ${b64('\0bob\0x')}`)).toBe('535 5.7.8 Authentication credentials invalid');
    expect(await s.cmd(`AUTH PLAIN ${b64('\0alice\0nope')}`)).toBe('421 4.7.0 Too many failed authentication attempts, closing connection');
    expect(await eventually(() => s.closed)).toBe(true);
  });

  it('discards plaintext pipelined after STARTTLS (CVE-2011-0411)', async () => {
    const e = await start({ tls });
    const c = await RawClient.connect(e.port);
    expect(await c.read()).toMatch(/^220 /);
    c.write('EHLO c\r\n');
    expect(await c.read()).toMatch(/^250/);
    c.write('STARTTLS\r\nMAIL FROM:<injected@x.test>\r\nRCPT TO:<victim@y.test>\r\n');
    expect(await c.read()).toBe('220 2.0.0 Ready to start TLS');
    await c.upgrade();
    c.write('EHLO c\r\n');
    expect(await c.read()).toMatch(/^250-mx\.test/);
    c.write('RCPT TO:<b@y.test>\r\n');
    expect(await c.read()).toBe('503 5.5.1 Bad sequence of commands');
    c.write('MAIL FROM:<real@x.test>\r\n');
    expect(await c.read()).toBe('250 2.1.0 Ok');
    expect(e.rec.mails.map((m) => m.mail.address)).toEqual(['real@x.test']);
    c.close();
  });
});

function proxyV2(cmd: number, src: number[], dst: number[], sport: number, dport: number): Buffer {
  const b = Buffer.alloc(28);
  V2_SIGNATURE.copy(b, 0);
  b[12] = 0x20 | cmd;
  b[13] = 0x11;
  b.writeUInt16BE(12, 14);
  Buffer.from(src).copy(b, 16);
  Buffer.from(dst).copy(b, 20);
  b.writeUInt16BE(sport, 24);
  b.writeUInt16BE(dport, 26);
  return b;
}

describe('PROXY protocol', () => {
  it('takes the client address from a v1 header from a trusted peer', async () => {
    const e = await start({ proxyProtocol: { trustedPeers: ['127.0.0.0/8'] } });
    const c = await RawClient.connect(e.port, 'PROXY TCP4 198.51.100.7 203.0.113.25 51234 25\r\n');
    expect(await c.read()).toMatch(/^220 /);
    expect(e.rec.connects[0]).toEqual({
      remoteAddress: '198.51.100.7',
      remotePort: 51234,
      localAddress: '203.0.113.25',
      localPort: 25,
      peerAddress: '127.0.0.1',
      proxied: true,
    });
    c.write('EHLO c\r\n');
    expect(await c.read()).toMatch(/^250/);
    c.close();
  });

  it('takes the client address from a v2 header (with pipelined EHLO behind it); LOCAL keeps the socket address', async () => {
    const e = await start({ proxyProtocol: { trustedPeers: ['127.0.0.1/32'] } });
    const c = await RawClient.connect(e.port, Buffer.concat([proxyV2(1, [192, 0, 2, 1], [192, 0, 2, 2], 4000, 2525), Buffer.from('EHLO c\r\n')]));
    expect(await c.read()).toMatch(/^220 /);
    expect(await c.read()).toMatch(/^250-mx\.test/);
    expect(e.rec.connects[0]).toMatchObject({ remoteAddress: '192.0.2.1', remotePort: 4000, localPort: 2525, proxied: true });
    c.close();
    const local = await RawClient.connect(e.port, proxyV2(0, [192, 0, 2, 1], [192, 0, 2, 2], 4000, 2525));
    expect(await local.read()).toMatch(/^220 /);
    expect(e.rec.connects[1]).toMatchObject({ remoteAddress: '127.0.0.1', peerAddress: '127.0.0.1', proxied: false });
    expect(e.rec.connects[1]!.remotePort).not.toBe(4000);
    local.close();
  });

  it('closes without a greeting: untrusted peer, malformed header, direct client, no header in time', async () => {
    const untrusted = await startEngine({ proxyProtocol: { trustedPeers: ['10.9.9.9/32'] } });
    const e = await start({ proxyProtocol: { trustedPeers: ['127.0.0.1/32'], timeoutMs: 300 } });
    try {
      const cases: Array<[number, string | undefined]> = [
        [untrusted.port, 'PROXY TCP4 198.51.100.7 203.0.113.25 51234 25\r\n'],
        [e.port, 'PROXY TCP4 198.51.100.7 203.0.113.25 051234 25\r\n'],
        [e.port, 'EHLO direct\r\n'],
        [e.port, 'PROXY TCP4 198.51'],
        [e.port, undefined],
      ];
      for (const [port, preamble] of cases) {
        const c = await RawClient.connect(port, preamble);
        expect(await c.waitClosed(), JSON.stringify(preamble)).toBe(true);
        expect(c.pending, JSON.stringify(preamble)).toBe('');
      }
      expect(untrusted.rec.connects.length + e.rec.connects.length).toBe(0);
    } finally {
      await untrusted.stop();
    }
  });
});

describe('clocks', () => {
  it('closes an idle session with 421 4.4.2', async () => {
    const e = await start({ idleTimeoutMs: 300 });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.read()).toBe('421 4.4.2 Idle timeout, closing connection');
    expect(await eventually(() => s.closed)).toBe(true);
    expect(await eventually(() => e.rec.resets.length === 1)).toBe(true);
    expect(e.rec.resets[0]!.reason).toBe('timeout');
  });

  it('cuts off a slowloris command line (1 byte per 300 ms) with 421 4.4.2', async () => {
    const e = await start({ idleTimeoutMs: 10_000, minBytesPerSecond: 100, minRateWindowMs: 1000 });
    const s = await SmtpSession.connect(e.port);
    const line = 'MAIL FROM:<slow-sender-with-a-long-address@x.test>\r\n';
    let i = 0;
    const drip = setInterval(() => {
      if (!s.closed && i < line.length) s.send(line[i++]!);
    }, 300);
    try {
      expect(await s.read()).toBe('421 4.4.2 Client too slow, closing connection');
      // Cut within a few windows, long before the line (and the idle timeout) would have completed.
      expect(i).toBeLessThan(line.length);
    } finally {
      clearInterval(drip);
    }
  });

  it('cuts off a slowloris DATA phase, and the data handler sees the stream fail', async () => {
    const e = await start({ idleTimeoutMs: 10_000, minBytesPerSecond: 100, minRateWindowMs: 1000 });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toMatch(/^250/);
    expect(await s.cmd('RCPT TO:<b@y.test>')).toMatch(/^250/);
    expect(await s.cmd('DATA')).toMatch(/^354/);
    let sent = 0;
    const drip = setInterval(() => {
      if (!s.closed && sent < 200) {
        s.send('x');
        sent++;
      }
    }, 300);
    try {
      expect(await s.read()).toBe('421 4.4.2 Client too slow, closing connection');
      expect(await eventually(() => e.rec.data.length === 1)).toBe(true);
      expect(e.rec.data[0]!.error?.reply).toMatchObject({ code: 421, enhanced: '4.4.2' });
    } finally {
      clearInterval(drip);
    }
  });

  it('ends a session past sessionTimeoutMs with 421 4.4.2', async () => {
    const e = await start({ sessionTimeoutMs: 300 });
    const s = await SmtpSession.connect(e.port);
    expect(await s.read()).toBe('421 4.4.2 Session time limit exceeded, closing connection');
    expect(await eventually(() => s.closed)).toBe(true);
  });

  it('does not count time inside a slow handler against the client', async () => {
    const e = await start(
      { idleTimeoutMs: 300, minBytesPerSecond: 1000, minRateWindowMs: 200 },
      {
        mail: async () => {
          await new Promise((r) => setTimeout(r, 700));
        },
      },
    );
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('NOOP')).toBe('250 2.0.0 Ok');
    await s.quit();
  });
});
