// The test SMTP peer itself (test/helpers/smtp-peer.ts): dot-stuffing both ways, the end-of-DATA scan across any chunking, and transaction state like an MTA, over a loopback socket.
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { DataReader, dotStuff, parsePath, unstuff } from '../helpers/smtp-peer-wire.js';
import { Hold, startSmtpPeer, type SmtpPeer } from '../helpers/smtp-peer.js';
import { SmtpSession } from '../helpers/raw-smtp.js';

const peers: SmtpPeer[] = [];
afterEach(async () => {
  for (const p of peers.splice(0)) await p.close();
});
async function peer(...args: Parameters<typeof startSmtpPeer>): Promise<SmtpPeer> {
  const p = await startSmtpPeer(...args);
  peers.push(p);
  return p;
}

describe('dot-stuffing', () => {
  it.each([
    ['a dot opening the message', '.x\r\n', '..x\r\n'],
    ['a dot after CRLF', 'a\r\n.b\r\n', 'a\r\n..b\r\n'],
    ['two dots', 'a\r\n..b\r\n', 'a\r\n...b\r\n'],
    ['a lone dot line', 'a\r\n.\r\nb\r\n', 'a\r\n..\r\nb\r\n'],
    ['a dot after a bare LF', 'a\n.b\r\n', 'a\n..b\r\n'],
    ['a dot inside a line', 'a.b\r\n', 'a.b\r\n'],
  ])('%s: stuffed and unstuffed back', (_n, plain, wire) => {
    expect(dotStuff(plain).toString('latin1')).toBe(wire);
    expect(unstuff(Buffer.from(wire, 'latin1')).toString('latin1')).toBe(plain);
  });

  it('a dot after a bare CR is a line start when asked for, and unstuffed either way', () => {
    expect(dotStuff('a\r.b').toString()).toBe('a\r.b');
    expect(dotStuff('a\r.b', { afterBareCr: true }).toString()).toBe('a\r..b');
    expect(unstuff(Buffer.from('a\r..b')).toString()).toBe('a\r.b');
  });

  it('round-trips binary bytes', () => {
    const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 31) % 256));
    expect(unstuff(dotStuff(bytes, { afterBareCr: true })).equals(bytes)).toBe(true);
  });
});

describe('DataReader', () => {
  const wire = Buffer.from('Subject: x\r\n\r\n..dot\r\nend\r\n.\r\nQUIT\r\n', 'latin1');
  const content = 'Subject: x\r\n\r\n..dot\r\nend\r\n';

  it('finds the end wherever the chunks are cut, and hands back what follows', () => {
    for (let a = 0; a <= wire.length; a++) {
      for (const b of [a, Math.min(wire.length, a + 1), Math.min(wire.length, a + 3)]) {
        const r = new DataReader();
        let rest: Buffer | null = null;
        for (const chunk of [wire.subarray(0, a), wire.subarray(a, b), wire.subarray(b)]) {
          if (rest) rest = Buffer.concat([rest, chunk]);
          else if (chunk.length) {
            const at = r.feed(chunk);
            if (at >= 0) rest = Buffer.from(chunk.subarray(at));
          }
        }
        expect(r.raw().toString('latin1'), `cut at ${a}/${b}`).toBe(content);
        expect(rest?.toString('latin1'), `cut at ${a}/${b}`).toBe('QUIT\r\n');
      }
    }
  });

  it('an empty message ends at ".\\r\\n" right after the 354, even split', () => {
    const r = new DataReader();
    expect(r.feed(Buffer.from('.'))).toBe(-1);
    expect(r.feed(Buffer.from('\r'))).toBe(-1);
    expect(r.feed(Buffer.from('\nRSET\r\n'))).toBe(1);
    expect(r.raw()).toHaveLength(0);
  });

  it('"\\r.\\r\\n" and "\\n.\\r\\n" do not end the message', () => {
    const r = new DataReader();
    expect(r.feed(Buffer.from('a\r.\r\nb\n.\r\nc\r\n.\r\n'))).toBe(16);
    expect(r.raw().toString()).toBe('a\r.\r\nb\n.\r\nc\r\n');
  });
});

describe('parsePath', () => {
  it('reads the address and the parameters as written', () => {
    expect(parsePath('MAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME SMTPUTF8')).toEqual({
      address: 'a@x.test',
      args: { SIZE: '10', BODY: '8BITMIME', SMTPUTF8: true },
    });
    expect(parsePath('MAIL FROM:<>')).toEqual({ address: '', args: {} });
    expect(parsePath('RCPT TO:<@relay.test:b@x.test> notify=NEVER')).toEqual({ address: 'b@x.test', args: { NOTIFY: 'NEVER' } });
    expect(parsePath('MAIL FROM:a@x.test').address).toBeNull();
  });
});

describe('transaction state', () => {
  it('refuses commands out of order like an MTA, and a refused recipient stays out of the envelope', async () => {
    const p = await peer({ script: { rcpt: (r) => (r.address.startsWith('no') ? '550 5.1.1 no such user' : undefined) } });
    const s = await SmtpSession.connect(p.port);
    try {
      expect(s.greeting).toBe('220 peer.test ESMTP');
      expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('503 5.5.1 Send EHLO first');
      expect(await s.cmd('EHLO c.test')).toBe('250-peer.test\n250-PIPELINING\n250-8BITMIME\n250-SMTPUTF8\n250-ENHANCEDSTATUSCODES\n250 DSN');
      expect(await s.cmd('RCPT TO:<b@x.test>')).toBe('503 5.5.1 Error: need MAIL command');
      expect(await s.cmd('MAIL FROM:<a@x.test> BODY=8BITMIME')).toBe('250 2.1.0 Ok');
      expect(await s.cmd('MAIL FROM:<a@x.test>')).toBe('503 5.5.1 Error: nested MAIL command');
      expect(await s.cmd('RCPT TO:<no@x.test>')).toBe('550 5.1.1 no such user');
      expect(await s.cmd('DATA')).toBe('554 5.5.1 Error: no valid recipients');
      expect(await s.cmd('RCPT TO:<b@x.test> NOTIFY=NEVER')).toBe('250 2.1.5 Ok');
      expect(await s.data('Subject: t\r\n\r\n.x\r\n', { dotStuff: true })).toBe('250 2.0.0 Ok: queued as PEER1');
      // The final reply ended the transaction: a new MAIL is no nested one.
      expect(await s.cmd('MAIL FROM:<c@x.test>')).toBe('250 2.1.0 Ok');
      expect(await s.cmd('RSET')).toBe('250 2.0.0 Ok');
      expect(await s.cmd('RCPT TO:<b@x.test>')).toBe('503 5.5.1 Error: need MAIL command');
    } finally {
      await s.quit();
    }
    expect(p.messages).toHaveLength(1);
    const m = p.messages[0]!;
    expect(m).toMatchObject({ from: 'a@x.test', mailArgs: { BODY: '8BITMIME' }, helo: 'c.test', secure: false, acknowledged: true });
    expect(m.to.map((t) => [t.address, t.args])).toEqual([['b@x.test', { NOTIFY: 'NEVER' }]]);
    expect(m.raw.toString()).toBe('Subject: t\r\n\r\n..x\r\n');
    expect(m.data.toString()).toBe('Subject: t\r\n\r\n.x\r\n');
    expect(m.sha256).toBe(createHash('sha256').update('Subject: t\r\n\r\n.x\r\n').digest('hex'));
    expect(p.sessions[0]!.commands[0]).toBe('MAIL FROM:<a@x.test>');
    expect(p.count('MAIL')).toBe(4);
  });

  it('holds a reply until released, and whatever follows waits behind it', async () => {
    const hold = new Hold();
    const p = await peer({ script: { message: () => hold.until() } });
    const s = await SmtpSession.connect(p.port);
    try {
      await s.cmd('EHLO c.test');
      await s.cmd('MAIL FROM:<a@x.test>');
      await s.cmd('RCPT TO:<b@x.test>');
      expect(await s.cmd('DATA')).toMatch(/^354 /);
      s.send('x\r\n.\r\nNOOP\r\n');
      await new Promise((r) => setTimeout(r, 50));
      expect(hold.held).toBe(1);
      expect(p.messages).toHaveLength(0);
      hold.release();
      expect(await s.read()).toBe('250 2.0.0 Ok: queued as PEER1');
      expect(await s.read()).toBe('250 2.0.0 Ok');
    } finally {
      s.close();
    }
  });

  it('a 421 closes the connection; a message cut short in DATA is partial, never accepted', async () => {
    const p = await peer({ script: { dataBytes: (n) => (n >= 4 ? '421 4.3.2 going away' : undefined) } });
    const s = await SmtpSession.connect(p.port);
    await s.cmd('EHLO c.test');
    await s.cmd('MAIL FROM:<a@x.test>');
    await s.cmd('RCPT TO:<b@x.test>');
    expect(await s.data('0123456789\r\n')).toBe('421 4.3.2 going away');
    await p.sessions[0]!.closed;
    expect(p).toMatchObject({ dots: 0, partial: 1, dataStarted: 1, messages: [] });
  });

  it('CHUNKING, when offered: BDAT chunks are taken byte for byte (no stuffing), the LAST one ends the message', async () => {
    const p = await peer({ extensions: { chunking: true } });
    const s = await SmtpSession.connect(p.port);
    try {
      expect(await s.cmd('EHLO c.test')).toMatch(/^250[- ]CHUNKING$/m);
      await s.cmd('MAIL FROM:<a@x.test>');
      await s.cmd('RCPT TO:<b@x.test>');
      s.send('BDAT 5\r\n.a\r\nb');
      expect(await s.read()).toBe('250 2.0.0 5 octets received');
      s.send('BDAT 3 LAST\r\nc\r\n');
      expect(await s.read()).toBe('250 2.0.0 Ok: queued as PEER1');
    } finally {
      await s.quit();
    }
    expect(p.messages[0]!.data.toString()).toBe('.a\r\nbc\r\n');
  });
});
