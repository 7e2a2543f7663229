// NextHopPool's lockstep transactions (begin → rcpt → data / reset / abort), TLS and AUTH towards the next hop, verify() and close(), against real next hops on loopback.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { startScriptHop, type HopScript, type ScriptHop } from '../helpers/script-hop.js';
import { startSecureSink, type SecureSinkOptions } from '../helpers/secure-peers.js';
import { makeTestPki, type TestPki } from '../helpers/tls-certs.js';
import {
  cleanup,
  env,
  expectDeliveryError,
  never,
  openSimple,
  poolFor,
  sim,
  simple,
  startStrictHop,
  track,
  until,
  unwire,
  within,
} from '../helpers/pool-fixtures.js';

afterEach(cleanup);

const one = { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 2_000 };

async function hopWith(script: HopScript = {}): Promise<ScriptHop> {
  return track(await startScriptHop(script));
}

describe('lockstep transactions', () => {
  it('begin → rcpt → data: every reply is the next hop own, the message goes out once, the connection comes back', async () => {
    const hop = await hopWith({ rcpt: (a) => (a.startsWith('bad') ? '550 5.1.1 <bad@example.com>: unknown user' : '250 2.1.5 Ok') });
    const pool = poolFor(hop.port, { pool: one });
    const { reply, tx } = await pool.begin(env(['a@example.com'], { params: [['SIZE', '52']] }), never());
    expect(String(reply)).toBe('250 2.1.0 Ok');
    expect(tx!.mailReply).toBe(reply);
    expect(pool.busy).toBe(1);
    expect(String(await tx!.rcpt({ address: 'a@example.com', params: [['NOTIFY', 'NEVER']] }, never()))).toBe('250 2.1.5 Ok');
    const bad = await tx!.rcpt({ address: 'bad@example.com' }, never());
    expect([bad.code, bad.enhanced, bad.text]).toEqual([550, '5.1.1', '<bad@example.com>: unknown user']);
    // A refused recipient leaves the transaction going.
    expect(tx!.accepted).toBe(1);
    expect(String(await tx!.data(openSimple, never()))).toBe('250 2.0.0 Ok: queued as HOP1');
    expect(pool.busy).toBe(0);
    expect(hop.lines[0]!.slice(1)).toEqual([
      'MAIL FROM:<sender@example.com> SIZE=52',
      'RCPT TO:<a@example.com> NOTIFY=NEVER',
      'RCPT TO:<bad@example.com>',
      'DATA',
    ]);
    expect(unwire(hop.rawData[0]!, true).equals(simple)).toBe(true);
    // Ending calls after data() change nothing.
    await tx!.reset();
    tx!.abort();
    expect((await pool.begin(env(['b@example.com']), never())).tx).not.toBeNull();
    expect(hop.lines).toHaveLength(1);
  });

  it('begin → rcpt → reset sends RSET, no DATA, and the connection serves the next transaction', async () => {
    const hop = await startStrictHop();
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    await tx!.reset();
    expect(pool.busy).toBe(0);
    const second = await pool.begin(env(['b@example.com']), never());
    expect(String(second.reply)).toBe('250 2.1.0 Ok');
    await second.tx!.rcpt({ address: 'b@example.com' }, never());
    expect((await second.tx!.data(openSimple, never())).code).toBe(250);
    expect(hop.sessions).toHaveLength(1);
    expect(hop.sessions[0]!.commands.slice(1)).toEqual([
      'MAIL FROM:<sender@example.com>',
      'RCPT TO:<a@example.com>',
      'RSET',
      'MAIL FROM:<sender@example.com>',
      'RCPT TO:<b@example.com>',
      'DATA',
    ]);
    expect(hop.sessions[0]!.messages).toHaveLength(1);
    expect(hop.nested).toBe(0);
  });

  it('a refused MAIL opens no transaction (tx null, the reply as given) and leaves the connection usable', async () => {
    const hop = await hopWith({ mail: (l) => (l.includes('<spam@') ? '553 5.7.1 sender rejected' : '250 2.1.0 Ok') });
    const pool = poolFor(hop.port, { pool: one });
    const refused = await pool.begin(env(['a@example.com'], { from: 'spam@example.com' }), never());
    expect(refused.tx).toBeNull();
    expect(String(refused.reply)).toBe('553 5.7.1 sender rejected');
    expect(pool.busy).toBe(0);
    const ok = await pool.begin(env(['a@example.com']), never());
    expect(ok.tx).not.toBeNull();
    await ok.tx!.reset();
    expect(hop.lines).toHaveLength(1);
  });

  it('abort() drops the connection without RSET; the slot is free for a fresh one', async () => {
    const hop = await sim();
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    tx!.abort();
    expect(pool.busy).toBe(0);
    await within(hop.sessions[0]!.closed, 5_000, 'the aborted connection closing');
    expect(hop.sessions[0]!.commands).not.toContain('RSET');
    expect(hop.sessions[0]!.commands).not.toContain('DATA');
    const next = await pool.begin(env(['b@example.com']), never());
    expect(next.tx).not.toBeNull();
    await next.tx!.reset();
    expect(hop.sessions).toHaveLength(2);
  });

  it('abort() while data() is sending drops the connection: data() fails (phase aborted), nothing delivered, the pool recovers', async () => {
    const hop = await sim();
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    const body = new PassThrough();
    body.write(Buffer.from('Subject: partial\r\n\r\n' + 'x'.repeat(70) + '\r\n'));
    const sending = tx!.data(() => body, never());
    sending.catch(() => {});
    await until(() => (hop.sessions[0]?.partialData ?? 0) > 0, 'message bytes at the next hop');
    // A reset() from the session's cleanup meanwhile must not touch the connection data() is using.
    await tx!.reset();
    tx!.abort();
    const err = await expectDeliveryError(within(sending, 5_000, 'data() after abort()'));
    expect(err).toMatchObject({ kind: 'transient', phase: 'aborted' });
    await within(hop.sessions[0]!.closed, 5_000, 'the aborted connection closing');
    expect(pool.busy).toBe(0);
    expect(hop.sessions[0]!.messages).toHaveLength(0);
    const next = await pool.begin(env(['b@example.com']), never());
    await next.tx!.rcpt({ address: 'b@example.com' }, never());
    expect((await next.tx!.data(openSimple, never())).code).toBe(250);
    expect(hop.sessions[1]!.messages).toHaveLength(1);
  });

  it('DATA refused: data() returns that reply and the connection is reset before it serves again', async () => {
    let refuse = true;
    const hop = await startStrictHop({ onCommand: (line) => (line === 'DATA' && refuse ? '452 4.3.1 insufficient system storage' : undefined) });
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    expect(String(await tx!.data(openSimple, never()))).toBe('452 4.3.1 insufficient system storage');
    refuse = false;
    const next = await pool.begin(env(['b@example.com']), never());
    expect(String(next.reply)).toBe('250 2.1.0 Ok');
    await next.tx!.rcpt({ address: 'b@example.com' }, never());
    expect((await next.tx!.data(openSimple, never())).code).toBe(250);
    expect(hop.nested).toBe(0);
    expect(hop.sessions).toHaveLength(1);
  });

  it('a 421 at RCPT makes the transaction unusable: later RCPTs and data() fail transient, reset() frees the slot', async () => {
    const hop = await hopWith({ rcpt: (a) => (a.startsWith('two') ? '421 4.3.2 hop.test closing' : '250 2.1.5 Ok') });
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['one@example.com']), never());
    expect((await tx!.rcpt({ address: 'one@example.com' }, never())).code).toBe(250);
    expect(String(await tx!.rcpt({ address: 'two@example.com' }, never()))).toBe('421 4.3.2 hop.test closing');
    expect(tx!.usable).toBe(false);
    expect(await expectDeliveryError(tx!.rcpt({ address: 'three@example.com' }, never()))).toMatchObject({ kind: 'transient', phase: 'rcpt' });
    expect(await expectDeliveryError(tx!.data(openSimple, never()))).toMatchObject({ kind: 'transient', phase: 'data' });
    await tx!.reset();
    expect(pool.busy).toBe(0);
    const next = await pool.begin(env(['x@example.com']), never());
    expect(next.tx).not.toBeNull();
    await next.tx!.reset();
    expect(hop.lines).toHaveLength(2);
    expect(hop.count('DATA')).toBe(0);
    expect(hop.count('RCPT TO:<three')).toBe(0);
  });

  it('the connection lost at RCPT: rcpt() fails transient phase rcpt and the transaction is unusable', async () => {
    const hop = await sim({ onCommand: (line, s) => (line.startsWith('RCPT TO:<gone') ? (s.sock.destroy(), null) : undefined) });
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['gone@example.com']), never());
    expect(await expectDeliveryError(tx!.rcpt({ address: 'gone@example.com' }, never()))).toMatchObject({ kind: 'transient', phase: 'rcpt' });
    expect(tx!.usable).toBe(false);
    await tx!.reset();
    expect(pool.busy).toBe(0);
    expect((await pool.begin(env(['b@example.com']), never())).tx).not.toBeNull();
  });
});

describe('TLS and AUTH towards the next hop', () => {
  let dir: string;
  let pki: TestPki;
  let ca: Buffer;
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'pool-tls-'));
    pki = makeTestPki(dir);
    ca = readFileSync(pki.caFile);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const sink = async (o: SecureSinkOptions) => track(await startSecureSink(o));
  const served = (): { keyFile: string; certFile: string } => ({ keyFile: pki.keyFile, certFile: pki.certFile });

  it('STARTTLS to a self-signed next hop when rejectUnauthorized is false', async () => {
    // The CA's own key and certificate: a self-signed server certificate.
    const s = await sink({ tls: { keyFile: join(dir, 'ca.key'), certFile: pki.caFile } });
    const pool = poolFor(s.port, { starttls: 'required', tls: { rejectUnauthorized: false } });
    const r = await pool.deliver(env(['a@example.com']), openSimple, never());
    expect(r.recipients[0]!.status).toBe('accepted');
    expect(s.messages[0]!.secure).toBe(true);
    expect(s.messages[0]!.sha256).toBe(sha(simple));
  });

  it('STARTTLS verified against the configured CA (verify() and a lockstep transaction)', async () => {
    const s = await sink({ tls: served() });
    const pool = poolFor(s.port, { starttls: 'required', tls: { rejectUnauthorized: true, ca } });
    await pool.verify();
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    expect((await tx!.data(openSimple, never())).code).toBe(250);
    expect(s.messages[0]!.secure).toBe(true);
  });

  it('a certificate that cannot be verified: transient phase tls, nothing sent (even with opportunistic STARTTLS)', async () => {
    const s = await sink({ tls: served() });
    const pool = poolFor(s.port, { starttls: 'opportunistic', tls: { rejectUnauthorized: true } });
    expect(await expectDeliveryError(pool.begin(env(['a@example.com']), never()))).toMatchObject({ kind: 'transient', phase: 'tls' });
    expect(await expectDeliveryError(pool.deliver(env(['a@example.com']), openSimple, never()))).toMatchObject({ kind: 'transient', phase: 'tls' });
    expect(s.messages).toHaveLength(0);
  });

  it('implicit TLS (secure: true) verified against the CA; an unverifiable certificate is phase tls', async () => {
    const hop = await sim({ tls: { key: readFileSync(pki.keyFile, 'utf8'), cert: readFileSync(pki.certFile, 'utf8') }, implicitTls: true });
    const ok = poolFor(hop.port, { secure: true, tls: { rejectUnauthorized: true, ca } });
    expect((await ok.deliver(env(['a@example.com']), openSimple, never())).recipients[0]!.status).toBe('accepted');
    expect(hop.sessions[0]!.secure).toBe(true);
    expect(unwire(hop.sessions[0]!.messages[0]!, false).equals(simple)).toBe(true);
    const bad = poolFor(hop.port, { secure: true, tls: { rejectUnauthorized: true } });
    expect(await expectDeliveryError(bad.deliver(env(['a@example.com']), openSimple, never()))).toMatchObject({ kind: 'transient', phase: 'tls' });
  });

  it('STARTTLS required but not offered: transient phase tls, no MAIL sent', async () => {
    const hop = await hopWith({ ehlo: ['PIPELINING', '8BITMIME'] });
    const pool = poolFor(hop.port, { starttls: 'required', tls: { rejectUnauthorized: false } });
    expect(await expectDeliveryError(pool.begin(env(['a@example.com']), never()))).toMatchObject({ kind: 'transient', phase: 'tls' });
    expect(hop.count('MAIL')).toBe(0);
  });

  it('starttls off stays in clear text although the next hop offers STARTTLS', async () => {
    const s = await sink({ tls: served() });
    const pool = poolFor(s.port, { starttls: 'off' });
    await pool.deliver(env(['a@example.com']), openSimple, never());
    expect(s.messages[0]!.secure).toBe(false);
  });

  it('AUTH with the configured credentials; wrong ones are transient phase auth with the 535', async () => {
    const s = await sink({ tls: served(), auth: { user: 'relay', pass: 's3cret' } });
    const ok = poolFor(s.port, { starttls: 'required', tls: { rejectUnauthorized: true, ca }, auth: { user: 'relay', pass: 's3cret' } });
    expect((await ok.deliver(env(['a@example.com']), openSimple, never())).recipients[0]!.status).toBe('accepted');
    expect(s.messages[0]!.user).toBe('relay');
    const bad = poolFor(s.port, { starttls: 'required', tls: { rejectUnauthorized: true, ca }, auth: { user: 'relay', pass: 'wrong' } });
    const err = await expectDeliveryError(bad.begin(env(['a@example.com']), never()));
    expect(err).toMatchObject({ kind: 'transient', phase: 'auth', code: 535 });
    expect(err.message).not.toContain('wrong');
    expect(s.auths).toEqual([
      { user: 'relay', ok: true },
      { user: 'relay', ok: false },
    ]);
    expect(s.messages).toHaveLength(1);
  });
});

describe('verify() and close()', () => {
  it('verify() greets and quits on a connection of its own: no mail, no pool slot', async () => {
    const hop = await sim();
    const pool = poolFor(hop.port, { pool: one });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await within(pool.verify(), 5_000, 'verify() with the only pool slot taken');
    await within(hop.sessions[1]!.closed, 5_000, 'the verify connection closing');
    expect(hop.sessions[1]!.commands).toEqual(['EHLO relay.test', 'QUIT']);
    await tx!.reset();
  });

  it('close() quits idle connections, fails waiters, and refuses new work (transient)', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port, { pool: { ...one, acquireTimeoutMs: 10_000 } });
    await pool.deliver(env(['a@example.com']), openSimple, never());
    const { tx } = await pool.begin(env(['b@example.com']), never());
    const waiter = pool.begin(env(['c@example.com']), never());
    waiter.catch(() => {});
    await pool.close();
    expect(await expectDeliveryError(within(waiter, 5_000, 'the waiter after close()'))).toMatchObject({ kind: 'transient' });
    for (const p of [pool.begin(env(['d@example.com']), never()), pool.deliver(env(['d@example.com']), openSimple, never()), pool.verify()]) {
      expect(await expectDeliveryError(p)).toMatchObject({ kind: 'transient', phase: 'aborted' });
    }
    // The transaction that was running when close() came: its connection is dropped, not parked.
    await tx!.reset();
    expect(pool.busy).toBe(0);
    expect(hop.rawData).toHaveLength(1);
  });

  it('close() sends QUIT to a parked connection', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port);
    await pool.deliver(env(['a@example.com']), openSimple, never());
    await pool.close();
    await until(() => hop.lines[0]!.includes('QUIT'), 'QUIT after close()');
  });
});
