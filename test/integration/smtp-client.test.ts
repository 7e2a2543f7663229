// SmtpClient against a scripted SMTP server over real sockets on 127.0.0.1: handshake, STARTTLS/TLS, AUTH, pipelining, DATA, failures.
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SmtpClient, SmtpClientError, type SmtpClientOptions } from '../../src/smtp/client.js';
import { makeTestPki } from '../helpers/tls-certs.js';
import { startSim, unstuffWire, type Sim, type SimOptions } from '../helpers/scripted-smtp.js';

let dir: string;
let key: string;
let cert: string;
let ca: string;
const sims: Sim[] = [];
const clients: SmtpClient[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'smtp-client-'));
  const pki = makeTestPki(dir);
  key = readFileSync(pki.keyFile, 'utf8');
  cert = readFileSync(pki.certFile, 'utf8');
  ca = readFileSync(pki.caFile, 'utf8');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(sims.splice(0).map((s) => s.close()));
});

async function sim(o: SimOptions = {}): Promise<Sim> {
  const s = await startSim(o);
  sims.push(s);
  return s;
}

function options(port: number, extra: Partial<SmtpClientOptions> = {}): SmtpClientOptions {
  return {
    host: '127.0.0.1',
    port,
    starttls: 'off',
    heloName: 'client.test',
    timeouts: { connectMs: 2_000, greetingMs: 2_000, commandMs: 2_000, dataDoneMs: 2_000 },
    ...extra,
  };
}

async function connect(o: SmtpClientOptions, signal?: AbortSignal): Promise<SmtpClient> {
  const c = await SmtpClient.connect(o, signal);
  clients.push(c);
  return c;
}

/** Resolves with the SmtpClientError a promise rejects with (fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<SmtpClientError> {
  const e = await p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SmtpClientError);
  return e as SmtpClientError;
}

const msg =
  (s: string): (() => Readable) =>
  () =>
    Readable.from([Buffer.from(s, 'latin1')]);
const closeEvent = (c: SmtpClient): Promise<void> => new Promise((resolve) => c.on('close', resolve));

describe('SmtpClient handshake', () => {
  it('reads the greeting and EHLO extensions, and QUIT closes with one close event', async () => {
    const s = await sim();
    const c = await connect(options(s.port));
    expect(c.greeting.toString()).toBe('220 sim.test ESMTP');
    expect([...c.extensions.keys()]).toEqual(['PIPELINING', 'SIZE', '8BITMIME', 'DSN']);
    expect(c.has('pipelining')).toBe(true);
    expect(c.has('STARTTLS')).toBe(false);
    expect(c.maxSize).toBe(1_000_000);
    expect(c.secure).toBe(false);
    expect(c.authenticated).toBe(false);
    expect(c.connectedAt).toBeLessThanOrEqual(Date.now());
    let closes = 0;
    c.on('close', () => closes++);
    const closed = closeEvent(c);
    await c.quit();
    await closed;
    expect(c.closed).toBe(true);
    expect(s.sessions[0]!.commands).toEqual(['EHLO client.test', 'QUIT']);
    await s.sessions[0]!.closed;
    expect(closes).toBe(1);
    await expect(c.rset()).rejects.toMatchObject({ kind: 'closed', phase: 'rset' });
  });

  it('falls back to HELO when EHLO gets a 5xx', async () => {
    const s = await sim({ onCommand: (l) => (l.startsWith('EHLO') ? '502 5.5.2 no EHLO here' : undefined) });
    const c = await connect(options(s.port));
    expect(c.extensions.size).toBe(0);
    expect(c.maxSize).toBeNull();
    expect(s.sessions[0]!.commands).toEqual(['EHLO client.test', 'HELO client.test']);
  });

  it.each([
    ['554 5.7.1 go away', 554],
    ['421 4.3.2 busy', 421],
  ])('refuses the session on a %s greeting (kind reply, socket destroyed)', async (greeting, code) => {
    const s = await sim({ greeting });
    const e = await failure(SmtpClient.connect(options(s.port)));
    expect(e).toMatchObject({ kind: 'reply', phase: 'greeting' });
    expect(e.reply?.code).toBe(code);
    await s.sessions[0]!.closed;
  });

  it('fails with kind closed naming ECONNREFUSED when nothing listens', async () => {
    const s = await sim();
    const port = s.port;
    await s.close();
    sims.length = 0;
    const e = await failure(SmtpClient.connect(options(port)));
    expect(e).toMatchObject({ kind: 'closed', phase: 'connect' });
    expect(e.message).toMatch(/ECONNREFUSED/);
  });

  it('times out a server that never greets, and honours an abort signal during the wait', async () => {
    const s = await sim({ greeting: null });
    const e = await failure(SmtpClient.connect(options(s.port, { timeouts: { connectMs: 2_000, greetingMs: 150, commandMs: 2_000, dataDoneMs: 2_000 } })));
    expect(e).toMatchObject({ kind: 'timeout', phase: 'greeting' });
    const ac = new AbortController();
    const p = SmtpClient.connect(options(s.port), ac.signal);
    setTimeout(() => ac.abort(), 50);
    expect(await failure(p)).toMatchObject({ kind: 'aborted', phase: 'greeting' });
    await Promise.all(s.sessions.map((x) => x.closed));
  });

  it('rejects an overlong or malformed reply as a protocol error', async () => {
    const long = await sim({ onCommand: (l) => (l.startsWith('EHLO') ? '250 ' + 'x'.repeat(600) : undefined) });
    expect(await failure(SmtpClient.connect(options(long.port)))).toMatchObject({ kind: 'protocol', phase: 'ehlo' });
    const bad = await sim({ greeting: '220 ok\r\n199 what' });
    expect((await failure(SmtpClient.connect(options(bad.port)))).kind).toBe('protocol');
  });
});

describe('SmtpClient STARTTLS, TLS and AUTH', () => {
  it('upgrades with a verified certificate and sends EHLO again', async () => {
    const s = await sim({ tls: { key, cert } });
    const c = await connect(options(s.port, { starttls: 'required', tls: { ca } }));
    expect(c.secure).toBe(true);
    expect(c.has('STARTTLS')).toBe(false);
    expect(s.sessions[0]!.secure).toBe(true);
    expect(s.sessions[0]!.commands).toEqual(['EHLO client.test', 'STARTTLS', 'EHLO client.test']);
    const r = await c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, msg('hi\r\n'));
    expect(r.final?.code).toBe(250);
  });

  it('fails with kind tls naming the reason for an unverifiable certificate', async () => {
    const s = await sim({ tls: { key, cert } });
    const e = await failure(SmtpClient.connect(options(s.port, { starttls: 'required' })));
    expect(e).toMatchObject({ kind: 'tls', phase: 'tls' });
    expect(e.message).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|unable to verify/i);
    // rejectUnauthorized false accepts it (test relays).
    const c = await connect(options(s.port, { starttls: 'required', tls: { rejectUnauthorized: false } }));
    expect(c.secure).toBe(true);
  });

  it('checks the name: a certificate for 127.0.0.1/localhost does not pass for another servername', async () => {
    const s = await sim({ tls: { key, cert } });
    const e = await failure(SmtpClient.connect(options(s.port, { starttls: 'required', tls: { ca, servername: 'mx.other.test' } })));
    expect(e.kind).toBe('tls');
    expect(e.message).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID/);
  });

  it('required: fails when STARTTLS is not offered or refused; opportunistic: continues in clear', async () => {
    const plain = await sim();
    expect(await failure(SmtpClient.connect(options(plain.port, { starttls: 'required' })))).toMatchObject({ kind: 'tls', phase: 'tls' });
    const c1 = await connect(options(plain.port, { starttls: 'opportunistic' }));
    expect(c1.secure).toBe(false);
    const refusing = await sim({ tls: { key, cert }, onCommand: (l) => (l === 'STARTTLS' ? '454 4.7.0 TLS not available' : undefined) });
    const e = await failure(SmtpClient.connect(options(refusing.port, { starttls: 'required', tls: { ca } })));
    expect(e).toMatchObject({ kind: 'tls', phase: 'tls' });
    expect(e.reply?.code).toBe(454);
    const c2 = await connect(options(refusing.port, { starttls: 'opportunistic', tls: { ca } }));
    expect(c2.secure).toBe(false);
    // The session goes on in plaintext after the refusal.
    expect((await c2.rset()).code).toBe(250);
  });

  it('drops the connection when plaintext follows the STARTTLS reply (CVE-2011-0411)', async () => {
    const s = await sim({ tls: { key, cert }, afterStarttls: '250 injected\r\n' });
    const e = await failure(SmtpClient.connect(options(s.port, { starttls: 'opportunistic', tls: { ca } })));
    expect(e).toMatchObject({ kind: 'protocol', phase: 'tls' });
  });

  it('implicit TLS (secure) verifies the certificate and skips STARTTLS', async () => {
    const s = await sim({ tls: { key, cert }, implicitTls: true });
    const c = await connect(options(s.port, { secure: true, starttls: 'required', tls: { ca } }));
    expect(c.secure).toBe(true);
    expect(s.sessions[0]!.commands).toEqual(['EHLO client.test']);
    const e = await failure(SmtpClient.connect(options(s.port, { secure: true, starttls: 'off' })));
    expect(e).toMatchObject({ kind: 'tls', phase: 'connect' });
  });

  it('AUTH PLAIN after STARTTLS; a wrong password fails with kind auth without the secret in the message', async () => {
    const auth = { user: 'relay', pass: 's3cret-pw' };
    const s = await sim({ tls: { key, cert }, auth });
    const c = await connect(options(s.port, { starttls: 'required', tls: { ca }, auth }));
    expect(c.authenticated).toBe(true);
    expect(s.sessions[0]!.commands[3]).toBe(`AUTH PLAIN ${Buffer.from('\0relay\0s3cret-pw').toString('base64')}`);
    const e = await failure(SmtpClient.connect(options(s.port, { starttls: 'required', tls: { ca }, auth: { user: 'relay', pass: 'wrong-pw' } })));
    expect(e).toMatchObject({ kind: 'auth', phase: 'auth' });
    expect(e.reply?.code).toBe(535);
    expect(e.message).not.toMatch(/wrong-pw/);
  });

  it('AUTH LOGIN when PLAIN is not offered; no AUTH in clear unless allowed; kind auth when not offered', async () => {
    const auth = { user: 'relay', pass: 'pw' };
    const loginOnly = await sim({ auth, ehlo: () => ['250-sim', '250 AUTH LOGIN'] });
    const e1 = await failure(SmtpClient.connect(options(loginOnly.port, { auth })));
    expect(e1).toMatchObject({ kind: 'auth', phase: 'auth' });
    expect(loginOnly.sessions[0]!.commands.some((l) => l.startsWith('AUTH'))).toBe(false);
    const c = await connect(options(loginOnly.port, { auth, allowAuthInClear: true }));
    expect(c.authenticated).toBe(true);
    expect(loginOnly.sessions[1]!.commands.slice(1)).toEqual(['AUTH LOGIN', Buffer.from('relay').toString('base64'), Buffer.from('pw').toString('base64')]);
    const noAuth = await sim();
    expect(await failure(SmtpClient.connect(options(noAuth.port, { auth, allowAuthInClear: true })))).toMatchObject({ kind: 'auth' });
  });
});

describe('SmtpClient transactions', () => {
  it('pipelines MAIL, every RCPT and DATA in one round trip, parameters verbatim, message dot-stuffed', async () => {
    // The server answers nothing until DATA has arrived: a client waiting for MAIL's reply would time out.
    const s = await sim({ holdUntilData: true });
    const c = await connect(options(s.port));
    const r = await c.send(
      {
        from: 'a@x.test',
        mailParams: [
          ['SIZE', '20'],
          ['BODY', '8BITMIME'],
          ['ENVID', 'q+2Bid'],
        ],
        rcpts: [
          {
            address: 'b@x.test',
            params: [
              ['NOTIFY', 'SUCCESS,FAILURE'],
              ['ORCPT', 'rfc822;b+40x.test'],
            ],
          },
          { address: 'bad@x.test', params: [] },
          { address: 'c@x.test', params: [['NOTIFY', 'NEVER']] },
        ],
      },
      msg('.one\r\ntwo\r\n.\r\n'),
    );
    expect(r.mail.toString()).toBe('250 2.1.0 Ok');
    expect(r.rcpts.map((x) => x.code)).toEqual([250, 550, 250]);
    expect(r.data?.code).toBe(354);
    expect(r.final?.toString()).toBe('250 2.0.0 queued');
    expect(c.messages).toBe(1);
    const sess = s.sessions[0]!;
    expect(sess.commands.slice(1)).toEqual([
      'MAIL FROM:<a@x.test> SIZE=20 BODY=8BITMIME ENVID=q+2Bid',
      'RCPT TO:<b@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40x.test',
      'RCPT TO:<bad@x.test>',
      'RCPT TO:<c@x.test> NOTIFY=NEVER',
      'DATA',
    ]);
    expect(sess.overlapped).toBe(4);
    expect(sess.messages[0]!.toString('latin1')).toBe('..one\r\ntwo\r\n..\r\n');
    // The connection is reusable for the next transaction.
    const r2 = await c.send({ from: '', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, msg('x'));
    expect(r2.final?.code).toBe(250);
    expect(sess.messages[1]!.toString('latin1')).toBe('x\r\n');
    expect(sess.commands).toContain('MAIL FROM:<>');
    expect(c.messages).toBe(2);
  });

  it('without PIPELINING sends one command per reply and no DATA when every recipient is refused', async () => {
    const s = await sim({ ehlo: () => ['250-sim', '250 8BITMIME'] });
    const c = await connect(options(s.port));
    const r = await c.send(
      {
        from: 'a@x.test',
        mailParams: [],
        rcpts: [
          { address: 'bad1@x.test', params: [] },
          { address: 'bad2@x.test', params: [] },
        ],
      },
      msg('x'),
    );
    expect(r.rcpts.map((x) => x.code)).toEqual([550, 550]);
    expect(r.data).toBeNull();
    expect(r.final).toBeNull();
    const ok = await c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, msg('y\r\n'));
    expect(ok.final?.code).toBe(250);
    expect(s.sessions[0]!.overlapped).toBe(0);
    expect(s.sessions[0]!.commands.filter((l) => l === 'DATA')).toHaveLength(1);
  });

  it('pipelined with no accepted recipient: a 554 to DATA ends it; a 354 drops the connection without sending data', async () => {
    const s = await sim();
    const c = await connect(options(s.port));
    const env = { from: 'a@x.test', mailParams: [], rcpts: [{ address: 'bad@x.test', params: [] }] };
    const r = await c.send(env, msg('never'));
    expect(r.data?.code).toBe(554);
    expect(r.final).toBeNull();
    expect(c.closed).toBe(false);
    const rogue = await sim({ onCommand: (l) => (l === 'DATA' ? '354 go ahead anyway' : undefined) });
    const c2 = await connect(options(rogue.port));
    let made = 0;
    const r2 = await c2.send(env, () => (made++, Readable.from(['never'])));
    expect(r2.data?.code).toBe(354);
    expect(r2.final).toBeNull();
    expect(made).toBe(0);
    expect(c2.closed).toBe(true);
    await rogue.sessions[0]!.closed;
    expect(rogue.sessions[0]!.messages).toHaveLength(0);
  });

  it('mail/rcpt/rset/data one by one resolve with replies of any class', async () => {
    const s = await sim({ ehlo: () => ['250-sim', '250 SIZE'] });
    const c = await connect(options(s.port));
    expect(c.maxSize).toBeNull();
    expect((await c.mail('a@x.test', [])).code).toBe(250);
    expect((await c.rcpt('bad@x.test', [])).toString()).toBe('550 5.1.1 no such user');
    expect((await c.rset()).code).toBe(250);
    await c.mail('a@x.test', []);
    const noRcpt = await c.data(Readable.from(['x']));
    expect(noRcpt).toMatchObject({ dataReply: { code: 554 }, final: null });
    await c.rcpt('b@x.test', []);
    const d = await c.data(Readable.from(['a\r\n', '.b\r\n']));
    expect(d.final?.code).toBe(250);
    expect(s.sessions[0]!.messages[0]!.toString('latin1')).toBe('a\r\n..b\r\n');
  });

  it('a message in one buffer goes out dot-stuffed exactly as the stream does, and counts as completed', async () => {
    const s = await sim({ ehlo: () => ['250 sim'] });
    const c = await connect(options(s.port));
    const body = Buffer.from('.a\r\nb\r.c\nd\n.\r\n.', 'latin1');
    for (const m of [body, Readable.from([body])]) {
      await c.mail('a@x.test', []);
      await c.rcpt('b@x.test', []);
      expect((await c.data(m)).final?.code).toBe(250);
    }
    const [viaBuffer, viaStream] = s.sessions[0]!.messages;
    expect(viaBuffer!.toString('latin1')).toBe('..a\r\nb\r..c\nd\n..\r\n..\r\n');
    expect(viaBuffer!.equals(viaStream!)).toBe(true);
    expect(c.messages).toBe(2);
  });

  it('a buffered message: the final reply waits dataDoneMs, then times out; an abort drops the connection', async () => {
    const s = await sim({ onMessage: () => null, ehlo: () => ['250 sim'] });
    const c = await connect(options(s.port, { timeouts: { connectMs: 2_000, greetingMs: 2_000, commandMs: 2_000, dataDoneMs: 200 } }));
    await c.mail('a@x.test', []);
    await c.rcpt('b@x.test', []);
    expect(await failure(c.data(Buffer.from('x\r\n')))).toMatchObject({ kind: 'timeout', phase: 'message' });
    expect(c.closed).toBe(true);
    const c2 = await connect(options(s.port));
    await c2.mail('a@x.test', []);
    await c2.rcpt('b@x.test', []);
    const ac = new AbortController();
    const p = c2.data(Buffer.from('y\r\n'), ac.signal);
    await new Promise((r) => setTimeout(r, 50));
    ac.abort();
    expect(await failure(p)).toMatchObject({ kind: 'aborted', phase: 'message' });
    expect(c2.closed).toBe(true);
  });

  it('streams a large message with backpressure, byte for byte', async () => {
    const s = await sim({ ehlo: () => ['250-sim', '250 PIPELINING'] });
    const c = await connect(options(s.port));
    const chunk = Buffer.from('line of text\r\n.dot line\r\nbare\nlf\rcr.\r\n'.repeat(1000), 'latin1');
    const chunks = Array.from({ length: 40 }, () => chunk);
    const r = await c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, () => Readable.from(chunks));
    expect(r.final?.code).toBe(250);
    const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    expect(sha(unstuffWire(s.sessions[0]!.messages[0]!))).toBe(sha(Buffer.concat(chunks)));
  });

  it('refuses to send an address containing CR or LF', async () => {
    const s = await sim();
    const c = await connect(options(s.port));
    expect(await failure(c.mail('a@x.test>\r\nRCPT TO:<evil@x.test', []))).toMatchObject({ kind: 'protocol', phase: 'mail' });
    expect(s.sessions[0]!.commands).toEqual(['EHLO client.test']);
  });
});

describe('SmtpClient failures', () => {
  it('a command without reply times out and destroys the connection', async () => {
    const s = await sim({ onCommand: (l) => (l.startsWith('MAIL') ? null : undefined) });
    const c = await connect(options(s.port, { timeouts: { connectMs: 2_000, greetingMs: 2_000, commandMs: 150, dataDoneMs: 2_000 } }));
    const closed = closeEvent(c);
    expect(await failure(c.mail('a@x.test', []))).toMatchObject({ kind: 'timeout', phase: 'mail' });
    expect(c.closed).toBe(true);
    await closed;
    await s.sessions[0]!.closed;
  });

  it('the final reply waits dataDoneMs, then times out in phase message', async () => {
    const s = await sim({ onMessage: () => null });
    const c = await connect(options(s.port, { timeouts: { connectMs: 2_000, greetingMs: 2_000, commandMs: 2_000, dataDoneMs: 200 } }));
    const p = c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, msg('x\r\n'));
    expect(await failure(p)).toMatchObject({ kind: 'timeout', phase: 'message' });
    expect(s.sessions[0]!.messages).toHaveLength(1);
  });

  it('an abort during the envelope destroys the connection (kind aborted)', async () => {
    const s = await sim({ onCommand: (l) => (l.startsWith('RCPT') ? null : undefined), ehlo: () => ['250 sim'] });
    const c = await connect(options(s.port));
    const ac = new AbortController();
    const p = c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, msg('x'), ac.signal);
    setTimeout(() => ac.abort(), 50);
    expect(await failure(p)).toMatchObject({ kind: 'aborted', phase: 'rcpt' });
    expect(c.closed).toBe(true);
    await s.sessions[0]!.closed;
  });

  it('a failing message stream destroys the connection mid-DATA (phase message), nothing is terminated', async () => {
    const s = await sim();
    const c = await connect(options(s.port));
    let reads = 0;
    const broken = (): Readable =>
      new Readable({
        read() {
          if (reads++ > 0) return;
          this.push(Buffer.from('first part\r\n'));
          // Later than the next tick, so the first part is on the wire: the failure is mid-DATA.
          setTimeout(() => this.destroy(new Error('disk read failed')), 50);
        },
      });
    const e = await failure(c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, broken));
    expect(e).toMatchObject({ phase: 'message', kind: 'closed' });
    expect(e.message).toMatch(/disk read failed/);
    await s.sessions[0]!.closed;
    expect(s.sessions[0]!.messages).toHaveLength(0);
    expect(s.sessions[0]!.partialData).toBe('first part\r\n'.length);
  });

  it('a message stream that fails while DATA awaits its 354 rejects in phase message (no unhandled error)', async () => {
    const s = await sim({ ehlo: () => ['250 sim'] });
    const c = await connect(options(s.port));
    await c.mail('a@x.test', []);
    await c.rcpt('b@x.test', []);
    const e = await failure(c.data(createReadStream(join(dir, 'no-such-file.eml'))));
    expect(e).toMatchObject({ phase: 'message', kind: 'closed' });
    expect(e.message).toMatch(/ENOENT/);
    expect(c.closed).toBe(true);
  });

  it('a 421 to MAIL resolves with it and marks the connection closed; an unsolicited 421 closes too', async () => {
    const s = await sim({ onCommand: (l) => (l.startsWith('MAIL') ? '421 4.3.2 shutting down' : undefined) });
    const c = await connect(options(s.port));
    const r = await c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, msg('x'));
    expect(r.mail.code).toBe(421);
    expect(r.rcpts).toEqual([]);
    expect(r.data).toBeNull();
    expect(c.closed).toBe(true);
    const idle = await sim();
    const c2 = await connect(options(idle.port));
    const closed = closeEvent(c2);
    idle.sessions[0]!.write('421 4.3.2 idle timeout\r\n');
    await closed;
    expect(await failure(c2.mail('a@x.test', []))).toMatchObject({ kind: 'closed' });
  });

  it('an unsolicited non-421 reply is a protocol error that closes the connection', async () => {
    const s = await sim();
    const c = await connect(options(s.port));
    const closed = closeEvent(c);
    s.sessions[0]!.write('250 surprise\r\n');
    await closed;
    expect(c.closed).toBe(true);
  });

  it('a reply in the middle of the message is returned and the connection dropped', async () => {
    const s = await sim({
      ehlo: () => ['250-sim', '250 PIPELINING'],
      onDataChunk: (n, sess) => {
        if (n > 0) sess.write('552 5.3.4 too big\r\n');
      },
    });
    const c = await connect(options(s.port));
    // An endless source: only the server's early reply can end this transfer.
    const endless = new Readable({
      read() {
        this.push(Buffer.alloc(16 * 1024, 0x61));
      },
    });
    const r = await c.send({ from: 'a@x.test', mailParams: [], rcpts: [{ address: 'b@x.test', params: [] }] }, () => endless);
    expect(r.final?.toString()).toBe('552 5.3.4 too big');
    expect(c.closed).toBe(true);
    expect(endless.destroyed).toBe(true);
    expect(c.messages).toBe(0);
  });
});
