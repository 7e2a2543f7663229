// SMTP engine over real sockets: greeting, EHLO/HELO, pipelining order, MAIL/RCPT parameters and limits, DATA transparency and smuggling, limits in DATA, resets, shutdown, handler failures, backpressure.
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { dotStuff } from '../../src/smtp/data-reader.js';
import { lastLine, SmtpSession } from '../helpers/raw-smtp.js';
import { drain, eventually, QUEUED, RawClient, startEngine, type Engine } from '../helpers/smtp-engine.js';

let engine: Engine | undefined;
afterEach(async () => {
  await engine?.stop();
  engine = undefined;
});

async function start(...args: Parameters<typeof startEngine>): Promise<Engine> {
  engine = await startEngine(...args);
  return engine;
}

/** Sends a message stuffed with the engine's exact transparency rule, then the terminator. */
function wire(msg: Buffer): Buffer {
  const s = dotStuff(msg);
  const crlf = s.length >= 2 && s[s.length - 2] === 13 && s[s.length - 1] === 10;
  return Buffer.concat([s, Buffer.from(crlf ? '.\r\n' : '\r\n.\r\n')]);
}

async function openTx(s: SmtpSession, rcpts = ['b@y.test']): Promise<void> {
  expect(await s.cmd('EHLO client.test')).toMatch(/^250/);
  expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
  for (const r of rcpts) expect(await s.cmd(`RCPT TO:<${r}>`)).toBe('250 2.1.5 Ok');
}

describe('greeting and EHLO', () => {
  it('greets at once by default, never saying ESMTP twice', async () => {
    const e = await start({ banner: 'ESMTP relay' });
    const s = await SmtpSession.connect(e.port);
    expect(s.greeting).toBe('220 mx.test ESMTP relay');
    await s.quit();
    const e2 = await startEngine();
    try {
      const s2 = await SmtpSession.connect(e2.port);
      expect(s2.greeting).toBe('220 mx.test ESMTP dlp-relay');
      await s2.quit();
    } finally {
      await e2.stop();
    }
  });

  it('answers an early talker with 554 5.5.0 and closes when the greeting is delayed', async () => {
    const e = await start({ greetingDelayMs: 300 });
    const c = await RawClient.connect(e.port, 'EHLO spambot\r\n');
    expect(await c.read()).toMatch(/^554 5\.5\.0 /);
    expect(await c.waitClosed()).toBe(true);
    // A patient client is greeted after the delay.
    const s = await SmtpSession.connect(e.port);
    expect(s.greeting).toMatch(/^220 /);
    await s.quit();
  });

  it('lists the EHLO keywords in order, without CHUNKING, AUTH or STARTTLS when not configured', async () => {
    const e = await start({ maxMessageBytes: 12345, dsn: true });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('ehlo client.test')).toBe(
      ['250-mx.test', '250-PIPELINING', '250-SIZE 12345', '250-8BITMIME', '250-SMTPUTF8', '250-ENHANCEDSTATUSCODES', '250 DSN'].join('\n'),
    );
    expect(await s.cmd('STARTTLS')).toBe('454 4.7.0 TLS not available');
    expect(await s.cmd('HELO client.test')).toBe('250 mx.test');
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('EHLO')).toBe('501 5.5.4 Syntax error in parameters or arguments');
    await s.quit();
  });

  it('answers the small commands with enhanced codes and 500 for unknown ones', async () => {
    const e = await start();
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('NOOP')).toBe('250 2.0.0 Ok');
    expect(await s.cmd('VRFY root')).toMatch(/^252 2\.5\.0 /);
    expect(await s.cmd('EXPN staff')).toMatch(/^502 5\.5\.1 /);
    expect(await s.cmd('HELP')).toMatch(/^214 2\.0\.0 /);
    expect(await s.cmd('BDAT 10 LAST')).toBe('500 5.5.2 Command unrecognized');
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('503 5.5.1 Bad sequence of commands');
    expect(await s.cmd('X'.repeat(600))).toBe('500 5.5.6 Line too long');
    s.send('NOOP\n');
    expect(await s.read()).toMatch(/^500 5\.5\.2 /);
    expect(await s.cmd('QUIT')).toBe('221 2.0.0 Bye');
  });
});

describe('transactions', () => {
  it('answers a pipelined MAIL/RCPT/RCPT/DATA batch in order, even with a slow handler', async () => {
    const e = await start(
      {},
      {
        rcpt: async (_s, r) => {
          if (r.address === 'slow@y.test') await new Promise((res) => setTimeout(res, 100));
          return r.address === 'no@y.test' ? { code: 550, enhanced: '5.1.1', text: 'No such user' } : undefined;
        },
      },
    );
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    s.send('MAIL FROM:<a@x.test>\r\nRCPT TO:<slow@y.test>\r\nRCPT TO:<no@y.test>\r\nRCPT TO:<ok@y.test>\r\nDATA\r\n');
    expect(await s.read()).toBe('250 2.1.0 Ok');
    expect(await s.read()).toBe('250 2.1.5 Ok');
    expect(await s.read()).toBe('550 5.1.1 No such user');
    expect(await s.read()).toBe('250 2.1.5 Ok');
    expect(await s.read()).toMatch(/^354 /);
    // The next transaction pipelined right behind the end of data is read as commands again.
    s.send('Subject: hi\r\n\r\nbody\r\n.\r\nMAIL FROM:<c@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n');
    expect(await s.read()).toBe('250 2.0.0 Queued');
    expect(await s.read()).toBe('250 2.1.0 Ok');
    expect(await s.read()).toBe('250 2.1.5 Ok');
    expect(await s.read()).toMatch(/^354 /);
    s.send('second\r\n.\r\n');
    expect(await s.read()).toBe('250 2.0.0 Queued');
    expect(e.rec.data[0]!.tx.rcpts.map((r) => r.address)).toEqual(['slow@y.test', 'ok@y.test']);
    expect(e.rec.data[0]!.message.toString()).toBe('Subject: hi\r\n\r\nbody\r\n');
    expect(e.rec.data[1]!.message.toString()).toBe('second\r\n');
    await s.quit();
  });

  it('parses DSN parameters and keeps them verbatim', async () => {
    const e = await start({ dsn: true });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM: <a@x.test> ret=hdrs ENVID=id+2B1 SIZE=100 BODY=8BITMIME')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('RCPT TO:<b@y.test> NOTIFY=success,failure ORCPT=rfc822;a+2Bb@x')).toBe('250 2.1.5 Ok');
    const m = e.rec.mails[0]!.mail;
    expect(m).toEqual({
      address: 'a@x.test',
      params: [
        ['RET', 'hdrs'],
        ['ENVID', 'id+2B1'],
        ['SIZE', '100'],
        ['BODY', '8BITMIME'],
      ],
      smtpUtf8: false,
      ret: 'HDRS',
      envid: 'id+1',
      size: 100,
      bodyType: '8bitmime',
    });
    expect(e.rec.rcpts[0]).toEqual({
      address: 'b@y.test',
      params: [
        ['NOTIFY', 'success,failure'],
        ['ORCPT', 'rfc822;a+2Bb@x'],
      ],
      notify: ['SUCCESS', 'FAILURE'],
      orcpt: 'rfc822;a+b@x',
    });
    expect(await s.cmd('RCPT TO:<c@y.test> NOTIFY=NEVER,DELAY')).toBe('501 5.5.4 Bad parameter syntax');
    await s.quit();
  });

  it('refuses unknown parameters, DSN ones without DSN, oversize and unicode without SMTPUTF8', async () => {
    const e = await start({ dsn: false, maxMessageBytes: 1000 });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).not.toMatch(/DSN/);
    expect(await s.cmd('MAIL FROM:<a@x.test> FOO=1')).toBe('555 5.5.4 Unsupported parameter');
    expect(await s.cmd('MAIL FROM:<a@x.test> RET=FULL')).toBe('555 5.5.4 Unsupported parameter');
    expect(await s.cmd('MAIL FROM:<a@x.test> SIZE=1001')).toBe('552 5.3.4 Message size exceeds fixed maximum message size');
    expect(await s.cmd('MAIL FROM:<jörg@x.test>')).toBe('553 5.6.7 Must declare SMTPUTF8 to send unicode address');
    expect(await s.cmd(`MAIL FROM:<${'a'.repeat(250)}@x.test>`)).toBe('501 5.1.3 Path too long');
    expect(await s.cmd('MAIL FROM:<not an address>')).toBe('501 5.1.3 Bad address syntax');
    expect(await s.cmd('MAIL FROM:<jörg@x.test> SMTPUTF8')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('MAIL FROM:<>')).toBe('503 5.5.1 Bad sequence of commands');
    expect(await s.cmd('RCPT TO:<b@y.test> NOTIFY=NEVER')).toBe('555 5.5.4 Unsupported parameter');
    expect(await s.cmd('RCPT TO:<ü@y.test>')).toBe('250 2.1.5 Ok');
    expect(e.rec.mails.length).toBe(1);
    await s.quit();
  });

  it('caps recipients with 452 4.5.3 and refuses DATA without recipients (554) or MAIL (503)', async () => {
    const e = await start({ maxRecipients: 2 });
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('DATA')).toBe('503 5.5.1 Bad sequence of commands');
    expect(await s.cmd('RCPT TO:<b@y.test>')).toBe('503 5.5.1 Bad sequence of commands');
    expect(await s.cmd('MAIL FROM:<>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('DATA')).toBe('554 5.5.1 No valid recipients');
    expect(await s.cmd('RCPT TO:<b1@y.test>')).toBe('250 2.1.5 Ok');
    expect(await s.cmd('RCPT TO:<b2@y.test>')).toBe('250 2.1.5 Ok');
    expect(await s.cmd('RCPT TO:<b3@y.test>')).toBe('452 4.5.3 Too many recipients');
    expect(await s.data('x\r\n')).toBe('250 2.0.0 Queued');
    expect(e.rec.data[0]!.tx.rcpts.length).toBe(2);
    await s.quit();
  });
});

describe('DATA', () => {
  it.each([
    ['LF.CRLF', '\n.\r\n'],
    ['CR.CRLF', '\r.\r\n'],
    ['LF.LF', '\n.\n'],
    ['CRLF.LF', '\r\n.\n'],
    ['CRLF.CR', '\r\n.\r'],
  ])('smuggling sequence %s does not end the data and comes out byte-exact', async (_n, seq) => {
    const e = await start();
    const s = await SmtpSession.connect(e.port);
    await openTx(s);
    const msg = Buffer.from(`Subject: a\r\n\r\nx${seq}MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nspoofed\r\n`);
    expect(await s.cmd('DATA')).toMatch(/^354/);
    s.send(wire(msg));
    expect(await s.read()).toBe('250 2.0.0 Queued');
    expect(await s.cmd('NOOP')).toBe('250 2.0.0 Ok');
    expect(e.rec.data.length).toBe(1);
    expect(e.rec.data[0]!.message.equals(msg)).toBe(true);
    expect(e.rec.mails.length).toBe(1);
    // The same sequence sent raw, as a smuggling client would: still data (only its line-start dot is
    // removed, as unstuffing says), no second transaction, and the session is still in sync.
    await openTx(s);
    expect(await s.cmd('DATA')).toMatch(/^354/);
    s.send(`x${seq}MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nspoofed\r\n.\r\n`);
    expect(await s.read()).toBe('250 2.0.0 Queued');
    expect(await s.cmd('NOOP')).toBe('250 2.0.0 Ok');
    expect(e.rec.data.length).toBe(2);
    expect(e.rec.data[1]!.message.toString('latin1')).toBe(`x${seq.replace('.', '')}MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nspoofed\r\n`);
    expect(e.rec.mails.map((m) => m.mail.address)).toEqual(['a@x.test', 'a@x.test']);
    await s.quit();
  });

  it('round-trips random bytes written in random chunks', async () => {
    const e = await start();
    const s = await SmtpSession.connect(e.port);
    let seed = 7;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const alphabet = [13, 10, 46, 46, 0x41, 0xff];
    for (let round = 0; round < 15; round++) {
      await openTx(s);
      const msg = Buffer.alloc(2000 + Math.floor(rnd() * 3000));
      for (let i = 0; i < msg.length; i++) msg[i] = alphabet[Math.floor(rnd() * alphabet.length)]!;
      msg[msg.length - 2] = 13;
      msg[msg.length - 1] = 10;
      expect(await s.cmd('DATA')).toMatch(/^354/);
      const w = wire(msg);
      for (let off = 0; off < w.length;) {
        const n = 1 + Math.floor(rnd() * 700);
        s.send(w.subarray(off, off + n));
        off += n;
      }
      expect(await s.read()).toBe('250 2.0.0 Queued');
      expect(e.rec.data[round]!.message.equals(msg), `round ${round}`).toBe(true);
    }
    await s.quit();
  });

  it('reads an oversize message to the end, answers 552 5.3.4 and the session goes on', async () => {
    const e = await start({ maxMessageBytes: 1000 });
    const s = await SmtpSession.connect(e.port);
    await openTx(s);
    expect(await s.data('x'.repeat(70) + '\r\n'.repeat(1) + ('y'.repeat(78) + '\r\n').repeat(60))).toBe(
      '552 5.3.4 Message size exceeds fixed maximum message size',
    );
    expect(e.rec.data[0]!.error?.reply).toMatchObject({ code: 552, enhanced: '5.3.4' });
    expect(e.rec.data[0]!.message.length).toBeLessThanOrEqual(1000);
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('RCPT TO:<b@y.test>')).toBe('250 2.1.5 Ok');
    expect(await s.data('small\r\n')).toBe('250 2.0.0 Queued');
    expect(e.rec.data[1]!.message.toString()).toBe('small\r\n');
    await s.quit();
  });

  it("rejects bare line endings with 550 5.5.2 in 'reject' mode and passes them in 'accept' mode", async () => {
    const e = await start({ bareLineEndings: 'reject', maxDataLineBytes: 20 });
    const s = await SmtpSession.connect(e.port);
    await openTx(s);
    expect(await s.data('a\nb\r\n')).toBe('550 5.5.2 Message contains bare <CR> or <LF>');
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('RCPT TO:<b@y.test>')).toBe('250 2.1.5 Ok');
    expect(lastLine(await s.data('z'.repeat(21) + '\r\n'))).toMatch(/^552 5\.3\.4 /);
    await s.quit();
    const e2 = await startEngine();
    try {
      const s2 = await SmtpSession.connect(e2.port);
      await openTx(s2);
      expect(await s2.data('a\nb\rc\r\n')).toBe('250 2.0.0 Queued');
      expect(e2.rec.data[0]!.message.toString()).toBe('a\nb\rc\r\n');
      await s2.quit();
    } finally {
      await e2.stop();
    }
  });

  it('applies backpressure: a slow reader still gets every byte of a 20 MB message', async () => {
    let maxBuffered = 0;
    let got = 0;
    const hash = createHash('sha256');
    const e = await start(
      { maxMessageBytes: 30 * 1024 * 1024 },
      {
        data: async (_s, _tx, message) => {
          let n = 0;
          for await (const c of message) {
            maxBuffered = Math.max(maxBuffered, message.readableLength);
            hash.update(c as Buffer);
            got += (c as Buffer).length;
            if (++n % 50 === 0) await new Promise((r) => setTimeout(r, 2));
          }
          return QUEUED;
        },
      },
    );
    const s = await SmtpSession.connect(e.port, { timeoutMs: 60_000 });
    await openTx(s);
    const line = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz.ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n');
    const block = Buffer.concat(Array.from({ length: 1024 }, () => line));
    const blocks = Math.ceil((20 * 1024 * 1024) / block.length);
    const expected = createHash('sha256');
    expect(await s.cmd('DATA')).toMatch(/^354/);
    for (let i = 0; i < blocks; i++) {
      s.send(block);
      expected.update(block);
    }
    s.send('.\r\n');
    expect(await s.read()).toBe('250 2.0.0 Queued');
    expect(got).toBe(blocks * block.length);
    expect(hash.digest('hex')).toBe(expected.digest('hex'));
    // The engine never queued the message up in the stream: it stopped reading the socket instead.
    expect(maxBuffered).toBeLessThan(1024 * 1024);
    await s.quit();
  });
});

describe('resets, handler failures and shutdown', () => {
  it('calls reset() exactly once for RSET, QUIT and disconnect, never for a transaction that reached data()', async () => {
    const e = await start();
    const s = await SmtpSession.connect(e.port);
    await openTx(s);
    expect(await s.cmd('RSET')).toBe('250 2.0.0 Ok');
    expect(await s.cmd('RSET')).toBe('250 2.0.0 Ok');
    expect(await s.cmd('MAIL FROM:<q@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('EHLO again')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<d@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('RCPT TO:<b@y.test>')).toBe('250 2.1.5 Ok');
    expect(await s.data('m\r\n')).toBe('250 2.0.0 Queued');
    expect(await s.cmd('MAIL FROM:<z@x.test>')).toBe('250 2.1.0 Ok');
    await s.quit();
    const s2 = await SmtpSession.connect(e.port);
    await openTx(s2);
    s2.close();
    expect(await eventually(() => e.rec.resets.length === 4 && e.rec.closes === 2)).toBe(true);
    expect(e.rec.resets).toEqual([
      { reason: 'rset', from: 'a@x.test' },
      { reason: 'helo', from: 'q@x.test' },
      { reason: 'quit', from: 'z@x.test' },
      { reason: 'close', from: 'a@x.test' },
    ]);
  });

  it('answers 451 4.3.0 when a handler throws, and keeps serving', async () => {
    const e = await start(
      {},
      {
        mail: (_s, m) => {
          if (m.address === 'boom@x.test') throw new Error('handler bug');
        },
        data: async (_s, _tx, message) => {
          await drain(message);
          throw new Error('spool bug');
        },
      },
    );
    const s = await SmtpSession.connect(e.port);
    expect(await s.cmd('EHLO c')).toMatch(/^250/);
    expect(await s.cmd('MAIL FROM:<boom@x.test>')).toBe('451 4.3.0 Local error in processing, try again later');
    expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    expect(await s.cmd('RCPT TO:<b@y.test>')).toBe('250 2.1.5 Ok');
    expect(await s.data('x\r\n')).toBe('451 4.3.0 Local error in processing, try again later');
    expect(await s.cmd('NOOP')).toBe('250 2.0.0 Ok');
    await s.quit();
  });

  it('a 421 from a handler closes the session (RFC 5321 3.8) and resets the open transaction', async () => {
    const resets: string[] = [];
    const e = await start(
      {},
      {
        rcpt: (_s, r) => (r.address === 'late@y.test' ? { code: 421, enhanced: '4.3.2', text: 'Service shutting down' } : undefined),
        reset: (_s, _tx, reason) => void resets.push(reason),
      },
    );
    const s = await SmtpSession.connect(e.port);
    await s.cmd('EHLO c');
    await s.cmd('MAIL FROM:<a@x.test>');
    expect(await s.cmd('RCPT TO:<late@y.test>')).toBe('421 4.3.2 Service shutting down');
    await expect(s.cmd('NOOP')).rejects.toThrow();
    expect(resets).toEqual(['close']);
  });

  it('close(grace) sends 421 to idle sessions at once and to a session in DATA after its final reply', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let inData = false;
    const e = await start(
      {},
      {
        data: async (_s, _tx, message) => {
          await drain(message);
          inData = true;
          await gate;
          return QUEUED;
        },
      },
    );
    const idle = await SmtpSession.connect(e.port);
    const busy = await SmtpSession.connect(e.port);
    await openTx(busy);
    expect(await busy.cmd('DATA')).toMatch(/^354/);
    busy.send('hello\r\n.\r\n');
    expect(await eventually(() => inData)).toBe(true);
    const closing = e.server.close(5000);
    expect(await idle.read()).toBe('421 4.3.2 Service shutting down, try again later');
    setTimeout(release, 50);
    expect(await busy.read()).toBe('250 2.0.0 Queued');
    expect(await busy.read()).toBe('421 4.3.2 Service shutting down, try again later');
    await closing;
    expect(e.server.connections).toBe(0);
    engine = undefined;
  });

  it('during shutdown QUIT is answered 221: after a DATA shutdown waited for, pipelined with the dot, or received while a command runs', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let inData = 0;
    let rcptWaiting = false;
    const e = await start(
      {},
      {
        data: async (_s, _tx, message) => {
          await drain(message);
          inData++;
          await gate;
          return QUEUED;
        },
        rcpt: async (_s, r) => {
          if (r.address !== 'slow@y.test') return undefined;
          rcptWaiting = true;
          await gate;
          return undefined;
        },
      },
    );
    const SHUTDOWN = '421 4.3.2 Service shutting down, try again later';
    // 1: QUIT sent after reading the final reply; 2: QUIT pipelined with the dot; 3: another command after the final reply.
    const after = await SmtpSession.connect(e.port);
    const piped = await SmtpSession.connect(e.port);
    const other = await SmtpSession.connect(e.port);
    for (const s of [after, piped, other]) {
      await openTx(s);
      expect(await s.cmd('DATA')).toMatch(/^354/);
    }
    after.send('hello\r\n.\r\n');
    piped.send('hello\r\n.\r\nQUIT\r\n');
    other.send('hello\r\n.\r\n');
    // 4: a QUIT pipelined behind a command whose handler is still running when the shutdown starts.
    const rcpt = await SmtpSession.connect(e.port);
    expect(await rcpt.cmd('EHLO client.test')).toMatch(/^250/);
    expect(await rcpt.cmd('MAIL FROM:<a@x.test>')).toBe('250 2.1.0 Ok');
    rcpt.send('RCPT TO:<slow@y.test>\r\nQUIT\r\n');
    expect(await eventually(() => inData === 3 && rcptWaiting)).toBe(true);
    // Let the QUIT behind the RCPT reach the server's buffer before the shutdown begins.
    await new Promise((r) => setTimeout(r, 100));
    const closing = e.server.close(10_000);
    setTimeout(release, 50);
    expect(await after.read()).toBe('250 2.0.0 Queued');
    after.send('QUIT\r\n');
    expect(await after.read()).toBe('221 2.0.0 Bye');
    expect(await piped.read()).toBe('250 2.0.0 Queued');
    expect(await piped.read()).toBe('221 2.0.0 Bye');
    expect(await other.read()).toBe('250 2.0.0 Queued');
    other.send('MAIL FROM:<a@x.test>\r\n');
    expect(await other.read()).toBe(SHUTDOWN);
    expect(await rcpt.read()).toBe('250 2.1.5 Ok');
    expect(await rcpt.read()).toBe('221 2.0.0 Bye');
    await closing;
    expect(e.server.connections).toBe(0);
    engine = undefined;
  });

  it('connect() refusals: 554 greeting then 503 to all but QUIT; 421 closes at once; a throw is 421 4.3.0', async () => {
    const e = await start(
      {},
      {
        connect: (s) => {
          if (s.remotePort % 3 === 0) return { code: 554, enhanced: '5.7.1', text: 'Go away' };
          if (s.remotePort % 3 === 1) return { code: 421, enhanced: '4.3.2', text: 'Busy' };
          throw new Error('connect bug');
        },
      },
    );
    const seen = new Set<string>();
    for (let i = 0; i < 30 && seen.size < 3; i++) {
      const s = await SmtpSession.connect(e.port);
      if (s.greeting.startsWith('554')) {
        expect(s.greeting).toBe('554 5.7.1 Go away');
        expect(await s.cmd('EHLO c')).toBe('503 5.5.1 Bad sequence of commands');
        expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('503 5.5.1 Bad sequence of commands');
        expect(await s.cmd('QUIT')).toBe('221 2.0.0 Bye');
      } else {
        expect(s.greeting).toMatch(/^(421 4\.3\.2 Busy|421 4\.3\.0 Local error, try again later)$/);
        expect(await eventually(() => s.closed)).toBe(true);
      }
      seen.add(s.greeting.slice(0, 9));
      s.close();
    }
    expect(seen).toEqual(new Set(['554 5.7.1', '421 4.3.2', '421 4.3.0']));
  });

  it('refuses connections past maxConnections with 421 4.3.2', async () => {
    const e = await start({ maxConnections: 1 });
    const first = await SmtpSession.connect(e.port);
    const second = await SmtpSession.connect(e.port);
    expect(second.greeting).toMatch(/^421 4\.3\.2 /);
    expect(e.server.connections).toBe(1);
    await first.quit();
    second.close();
  });
});
