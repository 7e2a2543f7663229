// NextHopPool against real next hops on loopback: bytes and parameters on the wire, pooling and reuse, deliver()'s per-recipient report, and failures as transient DeliveryError with their phase.
import { afterEach, describe, expect, it } from 'vitest';
import { PassThrough, Readable } from 'node:stream';
import { startScriptHop, type HopScript, type ScriptHop } from '../helpers/script-hop.js';
import type { SimSession } from '../helpers/scripted-smtp.js';
import {
  cleanup,
  closedPort,
  env,
  expectDeliveryError,
  never,
  openSimple,
  poolFor,
  sim,
  simple,
  startStrictHop,
  track,
  trickyMessage,
  until,
  unwire,
  within,
} from '../helpers/pool-fixtures.js';

afterEach(cleanup);

async function hopWith(script: HopScript = {}): Promise<ScriptHop> {
  return track(await startScriptHop(script));
}

/** Envelope lines of one connection (no EHLO/QUIT), as the next hop read them. */
const envelopeLines = (hop: ScriptHop, conn = 0): string[] => (hop.lines[conn] ?? []).filter((l) => /^(MAIL|RCPT|DATA|RSET)/.test(l));

describe('what reaches the next hop', () => {
  it('delivers the message byte for byte (dots after CRLF, bare LF and bare CR; 8-bit) through deliver() and through a lockstep transaction', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port);
    const { bytes, chunks } = trickyMessage();
    const e = env(['a@example.com'], {
      params: [
        ['SIZE', String(bytes.length)],
        ['BODY', '8BITMIME'],
      ],
    });
    const report = await pool.deliver(e, () => Readable.from(chunks), never());
    expect(report.response).toBe('250 2.0.0 Ok: queued as HOP1');
    expect(report.recipients).toEqual([{ address: 'a@example.com', status: 'accepted', code: 250, response: '250 2.0.0 Ok: queued as HOP1' }]);

    const { reply, tx } = await pool.begin(e, never());
    expect(String(reply)).toBe('250 2.1.0 Ok');
    expect(String(await tx!.rcpt({ address: 'b@example.com' }, never()))).toBe('250 2.1.5 Ok');
    expect(String(await tx!.data(() => Readable.from(chunks), never()))).toBe('250 2.0.0 Ok: queued as HOP2');

    expect(hop.rawData).toHaveLength(2);
    for (const raw of hop.rawData) expect(unwire(raw, true).equals(bytes)).toBe(true);
    expect(envelopeLines(hop)).toEqual([
      `MAIL FROM:<sender@example.com> SIZE=${bytes.length} BODY=8BITMIME`,
      'RCPT TO:<a@example.com>',
      'DATA',
      `MAIL FROM:<sender@example.com> SIZE=${bytes.length} BODY=8BITMIME`,
      'RCPT TO:<b@example.com>',
      'DATA',
    ]);
  });

  it('sends each recipient its own NOTIFY/ORCPT and the sender RET/ENVID verbatim (xtext untouched)', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port);
    const e = env(
      [
        {
          address: 'a@example.com',
          params: [
            ['NOTIFY', 'SUCCESS,FAILURE'],
            ['ORCPT', 'rfc822;a+2Btag@example.com'],
          ],
        },
        { address: 'b@example.com', params: [['NOTIFY', 'NEVER']] },
        { address: 'c@example.com' },
        {
          address: 'd@example.com',
          params: [
            ['ORCPT', 'rfc822;D@Example.COM'],
            ['NOTIFY', 'DELAY'],
          ],
        },
      ],
      {
        params: [
          ['RET', 'HDRS'],
          ['ENVID', 'env+20id+2B1+3D2'],
        ],
      },
    );
    await pool.deliver(e, openSimple, never());
    expect(envelopeLines(hop)).toEqual([
      'MAIL FROM:<sender@example.com> RET=HDRS ENVID=env+20id+2B1+3D2',
      'RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Btag@example.com',
      'RCPT TO:<b@example.com> NOTIFY=NEVER',
      'RCPT TO:<c@example.com>',
      'RCPT TO:<d@example.com> ORCPT=rfc822;D@Example.COM NOTIFY=DELAY',
      'DATA',
    ]);
  });

  it('rebuilds DSN parameters from an envelope stored without its raw parameters (older quarantine records), xtext-encoded', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port);
    const e = env([{ address: 'a@example.com', notify: ['SUCCESS', 'DELAY'], orcpt: 'rfc822;a+tag@example.com' }], { ret: 'FULL', envid: 'id 1=2' });
    await pool.deliver(e, openSimple, never());
    expect(envelopeLines(hop).slice(0, 2)).toEqual([
      'MAIL FROM:<sender@example.com> RET=FULL ENVID=id+201+3D2',
      'RCPT TO:<a@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Btag@example.com',
    ]);
  });

  it('leaves DSN parameters out when the next hop does not announce DSN (instead of drawing a 555)', async () => {
    const hop = await hopWith({ ehlo: ['PIPELINING', '8BITMIME', 'SMTPUTF8'] });
    const pool = poolFor(hop.port);
    const e = env(
      [
        {
          address: 'a@example.com',
          params: [
            ['NOTIFY', 'NEVER'],
            ['ORCPT', 'rfc822;a@example.com'],
          ],
        },
      ],
      {
        params: [
          ['BODY', '8BITMIME'],
          ['RET', 'HDRS'],
          ['ENVID', 'x'],
        ],
      },
    );
    const r = await pool.deliver(e, openSimple, never());
    expect(r.recipients[0]!.status).toBe('accepted');
    const { tx } = await pool.begin(e, never());
    await tx!.rcpt(e.to[0]!, never());
    await tx!.reset();
    expect(envelopeLines(hop)).toEqual([
      'MAIL FROM:<sender@example.com> BODY=8BITMIME',
      'RCPT TO:<a@example.com>',
      'DATA',
      'MAIL FROM:<sender@example.com> BODY=8BITMIME',
      'RCPT TO:<a@example.com>',
      'RSET',
    ]);
  });

  it('sends the null sender as MAIL FROM:<>', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port);
    await pool.deliver(env(['a@example.com'], { from: '' }), openSimple, never());
    const { tx } = await pool.begin(env(['a@example.com'], { from: '' }), never());
    await tx!.reset();
    expect(envelopeLines(hop).filter((l) => l.startsWith('MAIL'))).toEqual(['MAIL FROM:<>', 'MAIL FROM:<>']);
  });

  it('passes SMTPUTF8 only when the client used it and the next hop offers it', async () => {
    const utf8 = await hopWith();
    const plain = await hopWith({ ehlo: ['PIPELINING', '8BITMIME', 'DSN'] });
    for (const hop of [utf8, plain]) {
      const pool = poolFor(hop.port);
      await pool.deliver(
        env(['j\u00f6rg@example.com'], { from: 'm\u00fcller@example.com', smtpUtf8: true, params: [['SMTPUTF8', null]] }),
        openSimple,
        never(),
      );
      await pool.deliver(env(['a@example.com'], { smtpUtf8: false, params: [] }), openSimple, never());
      // An older record without raw parameters: rebuilt from the smtpUtf8 flag.
      await pool.deliver(env(['a@example.com'], { smtpUtf8: true }), openSimple, never());
    }
    const mails = (hop: ScriptHop): string[] => hop.lines.flat().filter((l) => l.startsWith('MAIL'));
    // The hop reads lines as latin1: the UTF-8 address shows as its bytes.
    const sender = Buffer.from('m\u00fcller@example.com', 'utf8').toString('latin1');
    expect(mails(utf8)).toEqual([`MAIL FROM:<${sender}> SMTPUTF8`, 'MAIL FROM:<sender@example.com>', 'MAIL FROM:<sender@example.com> SMTPUTF8']);
    expect(mails(plain)).toEqual([`MAIL FROM:<${sender}>`, 'MAIL FROM:<sender@example.com>', 'MAIL FROM:<sender@example.com>']);
  });

  it('pipelines MAIL, every RCPT and DATA in deliver() when the next hop offers PIPELINING, one at a time when it does not', async () => {
    // holdUntilData: MAIL/RCPT replies come only once DATA arrived; a client waiting for them would time out.
    const piped = await sim({ holdUntilData: true });
    const stepped = await sim({ ehlo: () => ['250-sim.test', '250-8BITMIME', '250 DSN'] });
    for (const hop of [piped, stepped]) {
      const pool = poolFor(hop.port, { timeouts: { connectMs: 3_000, greetingMs: 3_000, socketMs: 3_000, dataDoneMs: 3_000 } });
      const r = await pool.deliver(env(['a@example.com', 'b@example.com']), openSimple, never());
      expect(r.recipients.map((x) => x.status)).toEqual(['accepted', 'accepted']);
      expect(hop.sessions[0]!.messages).toHaveLength(1);
    }
    expect(piped.sessions[0]!.overlapped).toBeGreaterThanOrEqual(3);
    expect(stepped.sessions[0]!.overlapped).toBe(0);
  });
});

describe('pooling', () => {
  it('reuses one connection for consecutive transactions, deliver() and lockstep alike', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port);
    await pool.deliver(env(['a@example.com']), openSimple, never());
    await pool.deliver(env(['b@example.com']), openSimple, never());
    const { tx } = await pool.begin(env(['c@example.com']), never());
    await tx!.rcpt({ address: 'c@example.com' }, never());
    await tx!.data(openSimple, never());
    expect(hop.rawData).toHaveLength(3);
    expect(hop.lines).toHaveLength(1);
    expect(pool.busy).toBe(0);
  });

  it('queues transactions beyond maxConnections and serves them in turn on the one connection', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
    const reports = await Promise.all([1, 2, 3].map((i) => pool.deliver(env([`r${i}@example.com`]), openSimple, never())));
    expect(reports.map((r) => r.recipients[0]!.status)).toEqual(['accepted', 'accepted', 'accepted']);
    expect(hop.lines).toHaveLength(1);
    expect(hop.rawData).toHaveLength(3);
  });

  it('gives up waiting after acquireTimeoutMs with a transient DeliveryError phase pool; the held connection serves the next one', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 150 } });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    expect(pool.busy).toBe(1);
    const waited = await expectDeliveryError(pool.begin(env(['b@example.com']), never()));
    expect(waited).toMatchObject({ kind: 'transient', phase: 'pool' });
    const waited2 = await expectDeliveryError(pool.deliver(env(['b@example.com']), openSimple, never()));
    expect(waited2).toMatchObject({ kind: 'transient', phase: 'pool' });
    await tx!.reset();
    const r = await pool.deliver(env(['c@example.com']), openSimple, never());
    expect(r.recipients[0]!.status).toBe('accepted');
    expect(hop.lines).toHaveLength(1);
  });

  it('retires a connection (QUIT) after maxMessagesPerConnection', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 1, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
    await pool.deliver(env(['a@example.com']), openSimple, never());
    await until(() => hop.lines[0]!.includes('QUIT'), 'QUIT on the used-up connection');
    await pool.deliver(env(['b@example.com']), openSimple, never());
    expect(hop.lines).toHaveLength(2);
    expect(hop.rawData).toHaveLength(2);
  });

  it('closes a connection idle for idleTimeoutMs (QUIT), then opens a new one', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 80, acquireTimeoutMs: 10_000 } });
    await pool.deliver(env(['a@example.com']), openSimple, never());
    await until(() => hop.lines[0]!.includes('QUIT'), 'QUIT on the idle connection');
    await pool.deliver(env(['b@example.com']), openSimple, never());
    expect(hop.lines).toHaveLength(2);
    expect(hop.rawData).toHaveLength(2);
  });

  it('an idle connection the next hop closed is not handed out: the next transaction runs on a fresh one', async () => {
    const hop = await sim();
    const pool = poolFor(hop.port);
    await pool.deliver(env(['a@example.com']), openSimple, never());
    hop.sessions[0]!.sock.destroy();
    await hop.sessions[0]!.closed;
    const r = await pool.deliver(env(['b@example.com']), openSimple, never());
    expect(r.recipients[0]!.status).toBe('accepted');
    expect(hop.sessions).toHaveLength(2);
    expect(hop.sessions[1]!.messages).toHaveLength(1);
  });

  it('a parked connection that dies at MAIL (no reply, or 421) is retried on a fresh one: MAIL was never accepted, so it is safe', async () => {
    for (const death of ['silent', '421'] as const) {
      // The first connection serves one message, then answers the next MAIL by hanging up.
      let first: SimSession | undefined;
      const hop = await sim({
        onCommand: (line, s) => {
          first ??= s;
          if (!line.startsWith('MAIL') || s !== first || s.messages.length === 0) return undefined;
          if (death === '421') return '421 4.4.2 sim.test Error: timeout exceeded';
          s.sock.destroy();
          return null;
        },
      });
      const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
      await pool.deliver(env(['a@example.com']), openSimple, never());
      const { reply, tx } = await pool.begin(env(['b@example.com']), never());
      expect(String(reply), death).toBe('250 2.1.0 Ok');
      await tx!.rcpt({ address: 'b@example.com' }, never());
      expect((await tx!.data(openSimple, never())).code).toBe(250);
      const r = await pool.deliver(env(['c@example.com']), openSimple, never());
      expect(r.recipients[0]!.status).toBe('accepted');
      expect(hop.sessions, death).toHaveLength(2);
      expect(hop.sessions[1]!.messages, death).toHaveLength(2);
    }
  });
});

describe('deliver(): each recipient reported', () => {
  it('accepted / 550 refused / 452 deferred, each with the next hop reply; the message goes to the accepted ones only', async () => {
    const hop = await hopWith({
      rcpt: (a) => (a.startsWith('bad') ? `550 5.1.1 <${a}>: unknown user` : a.startsWith('grey') ? '452 4.2.2 Greylisted, try again later' : '250 2.1.5 Ok'),
    });
    const pool = poolFor(hop.port);
    const r = await pool.deliver(env(['ok@example.com', 'bad@example.com', 'grey@example.com', 'ok2@example.com']), openSimple, never());
    expect(r).toEqual({
      response: '250 2.0.0 Ok: queued as HOP1',
      recipients: [
        { address: 'ok@example.com', status: 'accepted', code: 250, response: '250 2.0.0 Ok: queued as HOP1' },
        { address: 'bad@example.com', status: 'refused', code: 550, response: '550 5.1.1 <bad@example.com>: unknown user' },
        { address: 'grey@example.com', status: 'deferred', code: 452, response: '452 4.2.2 Greylisted, try again later' },
        { address: 'ok2@example.com', status: 'accepted', code: 250, response: '250 2.0.0 Ok: queued as HOP1' },
      ],
    });
    expect(hop.rawData).toHaveLength(1);
    expect(unwire(hop.rawData[0]!, true).equals(simple)).toBe(true);
  });

  it('every recipient refused: nothing is sent, each is reported, and the connection (RSET) serves the next delivery', async () => {
    const hop = await startStrictHop({ onCommand: (line) => (/^RCPT TO:<no/.test(line) ? '550 5.1.1 no such user' : undefined) });
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
    const r = await pool.deliver(env(['no1@example.com', 'no2@example.com']), openSimple, never());
    expect(r.response).toBe('');
    expect(r.recipients).toEqual([
      { address: 'no1@example.com', status: 'refused', code: 550, response: '550 5.1.1 no such user' },
      { address: 'no2@example.com', status: 'refused', code: 550, response: '550 5.1.1 no such user' },
    ]);
    const next = await pool.deliver(env(['yes@example.com']), openSimple, never());
    expect(next.recipients[0]!.status).toBe('accepted');
    expect(hop.nested).toBe(0);
    expect(hop.sessions.flatMap((s) => s.messages)).toHaveLength(1);
  });

  it('DATA refused after accepted recipients: each is reported with that reply, and the connection (RSET) serves again', async () => {
    let refuse = true;
    const hop = await startStrictHop({ onCommand: (line) => (line === 'DATA' && refuse ? '452 4.3.1 insufficient system storage' : undefined) });
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
    const r = await pool.deliver(env(['a@example.com']), openSimple, never());
    expect(r).toEqual({
      response: '',
      recipients: [{ address: 'a@example.com', status: 'deferred', code: 452, response: '452 4.3.1 insufficient system storage' }],
    });
    refuse = false;
    expect((await pool.deliver(env(['a@example.com']), openSimple, never())).recipients[0]!.status).toBe('accepted');
    expect(hop.nested).toBe(0);
    expect(hop.sessions).toHaveLength(1);
  });

  it('MAIL refused: every recipient carries that reply (550 refused, 451 deferred), nothing is sent', async () => {
    const hop = await hopWith({ mail: (l) => (l.includes('<spam@') ? '550 5.7.1 sender blocked' : '451 4.3.0 try later') });
    const pool = poolFor(hop.port);
    const perm = await pool.deliver(env(['a@example.com', 'b@example.com'], { from: 'spam@example.com' }), openSimple, never());
    expect(perm.recipients.map((x) => [x.status, x.response])).toEqual([
      ['refused', '550 5.7.1 sender blocked'],
      ['refused', '550 5.7.1 sender blocked'],
    ]);
    const temp = await pool.deliver(env(['a@example.com']), openSimple, never());
    expect(temp.recipients).toEqual([{ address: 'a@example.com', status: 'deferred', code: 451, response: '451 4.3.0 try later' }]);
    expect(hop.rawData).toHaveLength(0);
  });

  it('a 4xx or 5xx at the final dot: the accepted recipients are deferred or refused with that reply', async () => {
    let final = '451 4.3.0 queue file write error';
    const hop = await hopWith({ dot: () => final, rcpt: (a) => (a.startsWith('bad') ? '550 5.1.1 unknown' : '250 2.1.5 Ok') });
    const pool = poolFor(hop.port);
    const t = await pool.deliver(env(['a@example.com', 'bad@example.com']), openSimple, never());
    expect(t.response).toBe('451 4.3.0 queue file write error');
    expect(t.recipients.map((x) => [x.status, x.code])).toEqual([
      ['deferred', 451],
      ['refused', 550],
    ]);
    final = '554 5.6.0 message content rejected';
    const p = await pool.deliver(env(['a@example.com']), openSimple, never());
    expect(p.recipients).toEqual([{ address: 'a@example.com', status: 'refused', code: 554, response: '554 5.6.0 message content rejected' }]);
    // A final reply, whatever its class, ends the transaction cleanly: the connection stays in use.
    expect(hop.lines).toHaveLength(1);
  });
});

describe('failures are transient DeliveryErrors with their phase', () => {
  it('connection refused: phase connect (deliver, begin and verify)', async () => {
    const pool = poolFor(await closedPort());
    expect(await expectDeliveryError(pool.deliver(env(['a@example.com']), openSimple, never()))).toMatchObject({ kind: 'transient', phase: 'connect' });
    expect(await expectDeliveryError(pool.begin(env(['a@example.com']), never()))).toMatchObject({ kind: 'transient', phase: 'connect' });
    expect(await expectDeliveryError(pool.verify())).toMatchObject({ kind: 'transient', phase: 'connect' });
    expect(pool.busy).toBe(0);
  });

  it('no greeting: phase timeout', async () => {
    const hop = await sim({ greeting: null });
    const pool = poolFor(hop.port, { timeouts: { connectMs: 5_000, greetingMs: 200, socketMs: 5_000, dataDoneMs: 5_000 } });
    expect(await expectDeliveryError(pool.begin(env(['a@example.com']), never()))).toMatchObject({ kind: 'transient', phase: 'timeout' });
  });

  it('silent after the message: phase timeout, through deliver() and data()', async () => {
    const hop = await sim({ onMessage: () => null });
    const pool = poolFor(hop.port, { timeouts: { connectMs: 5_000, greetingMs: 5_000, socketMs: 5_000, dataDoneMs: 250 } });
    expect(await expectDeliveryError(pool.deliver(env(['a@example.com']), openSimple, never()))).toMatchObject({ kind: 'transient', phase: 'timeout' });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    expect(await expectDeliveryError(tx!.data(openSimple, never()))).toMatchObject({ kind: 'transient', phase: 'timeout' });
    expect(pool.busy).toBe(0);
  });

  it('the connection dropped mid-message: phase data, through deliver() and data()', async () => {
    const hop = await sim({ onDataChunk: (_n, s) => s.sock.destroy() });
    const pool = poolFor(hop.port);
    const { chunks } = trickyMessage();
    expect(await expectDeliveryError(pool.deliver(env(['a@example.com']), () => Readable.from(chunks), never()))).toMatchObject({
      kind: 'transient',
      phase: 'data',
    });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    await tx!.rcpt({ address: 'a@example.com' }, never());
    expect(await expectDeliveryError(tx!.data(() => Readable.from(chunks), never()))).toMatchObject({ kind: 'transient', phase: 'data' });
    expect(hop.sessions.flatMap((s) => s.messages)).toHaveLength(0);
  });

  it('a message stream that fails: phase data, nothing delivered', async () => {
    const hop = await sim();
    const pool = poolFor(hop.port);
    const broken = (): Readable =>
      new Readable({
        read() {
          this.destroy(new Error('spool read failed'));
        },
      });
    expect(await expectDeliveryError(pool.deliver(env(['a@example.com']), broken, never()))).toMatchObject({ kind: 'transient', phase: 'data' });
    expect(hop.sessions.flatMap((s) => s.messages)).toHaveLength(0);
  });

  it('an abort mid-DATA drops the connection (the next hop never gets the message) and the pool recovers', async () => {
    const hop = await sim();
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
    const ac = new AbortController();
    const body = new PassThrough();
    body.write(Buffer.from('Subject: partial\r\n\r\n' + 'x'.repeat(70) + '\r\n'));
    const p = pool.deliver(env(['a@example.com']), () => body, ac.signal);
    await until(() => (hop.sessions[0]?.partialData ?? 0) > 0, 'message bytes at the next hop');
    ac.abort();
    expect(await expectDeliveryError(p)).toMatchObject({ kind: 'transient', phase: 'aborted' });
    await within(hop.sessions[0]!.closed, 5_000, 'the aborted connection closing');
    expect(body.destroyed).toBe(true);
    const r = await pool.deliver(env(['b@example.com']), openSimple, never());
    expect(r.recipients[0]!.status).toBe('accepted');
    expect(hop.sessions[0]!.messages).toHaveLength(0);
    expect(hop.sessions[1]!.messages).toHaveLength(1);
  });

  it('an aborted signal fails at once, and an abort while waiting for a connection takes the waiter out', async () => {
    const hop = await hopWith();
    const pool = poolFor(hop.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000, acquireTimeoutMs: 10_000 } });
    expect(await expectDeliveryError(pool.begin(env(['a@example.com']), AbortSignal.abort()))).toMatchObject({ kind: 'transient', phase: 'aborted' });
    const { tx } = await pool.begin(env(['a@example.com']), never());
    const ac = new AbortController();
    const waiting = pool.deliver(env(['b@example.com']), openSimple, ac.signal);
    ac.abort();
    expect(await expectDeliveryError(waiting)).toMatchObject({ kind: 'transient', phase: 'aborted' });
    await tx!.reset();
    expect((await pool.deliver(env(['c@example.com']), openSimple, never())).recipients[0]!.status).toBe('accepted');
    expect(hop.lines).toHaveLength(1);
  });
});
