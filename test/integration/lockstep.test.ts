// Lockstep with the next hop (issue 9): each RCPT answered by the next hop, DATA only after a relay verdict, resets on every other path, the trace header, parameters byte for byte.
import { afterEach, describe, expect, it } from 'vitest';
import { startChain, message, eventually, type Chain } from '../helpers/chain.js';
import { startScriptHop, type ScriptHop, type HopScript } from '../helpers/script-hop.js';
import { SmtpSession } from '../helpers/raw-smtp.js';

let chain: Chain | undefined;
let hop: ScriptHop | undefined;

afterEach(async () => {
  await chain?.close();
  await hop?.close();
  chain = undefined;
  hop = undefined;
});

async function withHop(script: HopScript = {}, config: Record<string, unknown> = {}): Promise<{ chain: Chain; hop: ScriptHop }> {
  hop = await startScriptHop(script);
  chain = await startChain({ config: { nextHop: { host: '127.0.0.1', port: hop.port, starttls: 'off' }, ...config } });
  return { chain, hop };
}

describe('recipients answered by the next hop', () => {
  it('a greylisted recipient gets the next hop 452 at RCPT; the others are delivered once, with no DSN', async () => {
    const { chain, hop } = await withHop({ rcpt: (a) => (a === 'grey@example.test' ? '452 4.2.2 Greylisted, try again later' : '250 2.1.5 Ok') });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    expect(await s.cmd('MAIL FROM:<alice@example.test>')).toMatch(/^250 2\.1\.0 /);
    expect(await s.cmd('RCPT TO:<one@example.test>')).toBe('250 2.1.5 Ok');
    expect(await s.cmd('RCPT TO:<grey@example.test> NOTIFY=NEVER')).toBe('452 4.2.2 Greylisted, try again later');
    expect(await s.cmd('RCPT TO:<two@example.test>')).toBe('250 2.1.5 Ok');
    expect(await s.data(message('clean text'), { dotStuff: true })).toMatch(/^250 2\.0\.0 Ok: queued as HOP1$/);
    await s.quit();
    s.close();
    // Exactly one message, to the two accepted recipients; the greylisted one stays the client's to retry.
    expect(hop.rawData).toHaveLength(1);
    const rcptLines = hop.lines.flat().filter((l) => l.startsWith('RCPT'));
    expect(rcptLines).toEqual(['RCPT TO:<one@example.test>', 'RCPT TO:<grey@example.test> NOTIFY=NEVER', 'RCPT TO:<two@example.test>']);
    // No DSN or any second transaction from us.
    expect(hop.count('MAIL')).toBe(1);
    const summary = chain.summaries()[0]!;
    expect(summary['to']).toEqual([
      { address: 'one@example.test', reply: '250 2.1.5 Ok' },
      { address: 'grey@example.test', reply: '452 4.2.2 Greylisted, try again later' },
      { address: 'two@example.test', reply: '250 2.1.5 Ok' },
    ]);
  });

  it('a 550 at RCPT passes through with its code, enhanced code and text', async () => {
    const { chain } = await withHop({ rcpt: (a) => (a.startsWith('nobody') ? '550 5.1.1 <nobody@example.test>: Recipient address rejected' : '250 2.1.5 Ok') });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    expect(await s.cmd('RCPT TO:<nobody@example.test>')).toBe('550 5.1.1 <nobody@example.test>: Recipient address rejected');
    // No recipient accepted: DATA is refused before any content.
    expect(await s.cmd('DATA')).toMatch(/^554 5\.5\.1 /);
    await s.quit();
    s.close();
  });

  it('next hop down at MAIL: 451 4.4.1 at MAIL FROM, nothing accepted', async () => {
    hop = await startScriptHop();
    const port = hop.port;
    await hop.close();
    hop = undefined;
    chain = await startChain({ config: { nextHop: { host: '127.0.0.1', port, starttls: 'off' } } });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    expect(await s.cmd('MAIL FROM:<alice@example.test>')).toMatch(/^451 4\.4\.1 /);
    expect(await s.cmd('RCPT TO:<bob@example.test>')).toMatch(/^503 5\.5\.1 /);
    await s.quit();
    s.close();
  });

  it('a next hop that says 421 in the middle of the RCPT list: 451 for that one and the rest, 451 at the dot, nothing delivered', async () => {
    const { chain, hop } = await withHop({ rcpt: (a) => (a === 'b@example.test' ? '421 4.3.2 Service shutting down' : '250 2.1.5 Ok') });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    expect(await s.cmd('RCPT TO:<a@example.test>')).toBe('250 2.1.5 Ok');
    expect(await s.cmd('RCPT TO:<b@example.test>')).toBe('451 4.3.2 Service shutting down');
    expect(await s.cmd('RCPT TO:<c@example.test>')).toMatch(/^451 4\.4\.2 /);
    const reply = await s.data(message('clean text'), { dotStuff: true });
    expect(reply).toMatch(/^451 4\.4\.2 /);
    await s.quit();
    s.close();
    expect(hop.rawData).toHaveLength(0);
    expect(hop.count('DATA')).toBe(0);
  });
});

describe('the next hop never sees DATA unless the verdict is relay', () => {
  it('client RSET mid-transaction resets the next hop, and the connection serves the next message', async () => {
    const { chain, hop } = await withHop();
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    expect(await s.cmd('RSET')).toMatch(/^250 2\.0\.0 /);
    await eventually(() => hop.count('RSET') === 1);
    expect(hop.count('DATA')).toBe(0);
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    expect(await s.data(message('clean text'), { dotStuff: true })).toMatch(/^250 /);
    await s.quit();
    s.close();
    expect(hop.rawData).toHaveLength(1);
    // One next-hop connection for both transactions: RSET left it usable.
    expect(hop.lines.filter((l) => l.some((x) => x.startsWith('MAIL')))).toHaveLength(1);
  });

  it('client disconnect mid-transaction resets the next hop; no DATA', async () => {
    const { chain, hop } = await withHop();
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    s.close();
    await eventually(() => hop.count('RSET') === 1);
    expect(hop.count('DATA')).toBe(0);
  });

  it('a client that leaves while the next hop is still answering MAIL leaves no transaction open there', async () => {
    const { chain, hop } = await withHop({ mailDelayMs: 300 });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    s.send('MAIL FROM:<alice@example.test>\r\n');
    s.close();
    // The hop's 250 arrives after the client is gone: the relay must reset the transaction it just opened.
    await eventually(() => hop.count('RSET') === 1);
    expect(hop.count('RCPT')).toBe(0);
    // The connection goes back to the pool once the hop's answer to that RSET has been read, a moment after the hop saw it.
    await eventually(() => (chain.relay.deliverer.pool?.busy ?? 0) === 0);
    expect(chain.relay.deliverer.pool?.busy ?? 0).toBe(0);
  });

  it('a DLP reject (actionCode 2) resets the next hop: 550 to the client, DATA never sent', async () => {
    const { chain, hop } = await withHop();
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    expect(await s.data(message('DLPTEST-ACTION-2'), { dotStuff: true })).toMatch(/^550 5\.7\.1 /);
    await eventually(() => hop.count('RSET') === 1);
    expect(hop.count('DATA')).toBe(0);
    await s.quit();
    s.close();
  });

  it("the next hop's 5xx and 4xx at the final dot pass through unchanged", async () => {
    let answer = '554 5.6.0 Content rejected downstream';
    const { chain } = await withHop({ dot: () => answer });
    const send = async () => {
      const s = await SmtpSession.connect(chain.port);
      await s.cmd('EHLO client.example.test');
      await s.cmd('MAIL FROM:<alice@example.test>');
      await s.cmd('RCPT TO:<bob@example.test>');
      const r = await s.data(message('clean text'), { dotStuff: true });
      await s.quit();
      s.close();
      return r;
    };
    expect(await send()).toBe('554 5.6.0 Content rejected downstream');
    answer = '452 4.3.1 Insufficient system storage';
    expect(await send()).toBe('452 4.3.1 Insufficient system storage');
  });
});

describe('what reaches the next hop', () => {
  it('a pipelining client gets its replies in order, and MAIL/RCPT parameters arrive byte for byte', async () => {
    const { chain, hop } = await withHop();
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    s.send(
      'MAIL FROM:<alice@example.test> BODY=8BITMIME RET=HDRS ENVID=QQ+2B1\r\nRCPT TO:<x@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2Bt@example.test\r\nRCPT TO:<y@example.test>\r\nDATA\r\n',
    );
    expect(await s.read()).toMatch(/^250 2\.1\.0 /);
    expect(await s.read()).toBe('250 2.1.5 Ok');
    expect(await s.read()).toBe('250 2.1.5 Ok');
    expect(await s.read()).toMatch(/^354 /);
    s.send(Buffer.from(message('clean text') + '.\r\n'));
    expect(await s.read()).toMatch(/^250 2\.0\.0 Ok: queued as HOP1$/);
    await s.quit();
    s.close();
    const lines = hop.lines.flat();
    expect(lines).toContain('MAIL FROM:<alice@example.test> BODY=8BITMIME RET=HDRS ENVID=QQ+2B1');
    expect(lines).toContain('RCPT TO:<x@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2Bt@example.test');
  });

  it('parameters the next hop did not announce are left out instead of drawing a 555', async () => {
    const { chain, hop } = await withHop({ ehlo: ['PIPELINING', 'ENHANCEDSTATUSCODES'] });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test> RET=FULL SIZE=1000');
    await s.cmd('RCPT TO:<x@example.test> NOTIFY=NEVER');
    expect(await s.data(message('clean text'), { dotStuff: true })).toMatch(/^250 /);
    await s.quit();
    s.close();
    expect(hop.lines.flat()).toContain('MAIL FROM:<alice@example.test>');
    expect(hop.lines.flat()).toContain('RCPT TO:<x@example.test>');
  });

  it('the relayed message starts with our Received: line, then our verdict headers, then the bytes as sent', async () => {
    const { chain, hop } = await withHop();
    const body = message('clean text');
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    await s.data(body, { dotStuff: true });
    await s.quit();
    s.close();
    const wire = hop.rawData[0]!.toString('latin1');
    const queryId = String(chain.summaries()[0]!['queryId']);
    expect(wire).toMatch(
      new RegExp(
        `^Received: from client\\.example\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby dlp-relay\\.localdomain \\(dlp-relay\\) with ESMTP id ${queryId};\\r\\n\\t(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000\\r\\n`,
      ),
    );
    // The original bytes follow our headers unchanged (the hop still sees them dot-stuffed, ending in CRLF.CRLF).
    expect(wire.endsWith(body + '.\r\n')).toBe(true);
  });

  it('a bare-CR or bare-LF dot inside the message is stuffed on the way out (no smuggled end of data)', async () => {
    const { chain, hop } = await withHop();
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    expect(await s.cmd('DATA')).toMatch(/^354 /);
    // Sent raw, unstuffed on purpose: "\r.\r\n" and "\n.\r\n" are not ends of data, only CRLF.CRLF is.
    s.send(Buffer.from('Subject: smuggle\r\n\r\nfirst\r.\r\nMAIL FROM:<evil@x.test>\r\nsecond\n.\r\nRCPT TO:<v@x.test>\r\n.\r\n'));
    expect(await s.read()).toMatch(/^250 2\.0\.0 Ok: queued as HOP1$/);
    await s.quit();
    s.close();
    // One transaction at the hop, the would-be commands still inside its data, and no lone dot after any CR or
    // LF before the real terminator: a next hop that ends data on <CR>.<CR> or <LF>.<LF> cannot be split either.
    expect(hop.count('MAIL')).toBe(1);
    const wire = hop.rawData[0]!.toString('latin1');
    expect(wire).toContain('MAIL FROM:<evil@x.test>\r\n');
    expect(wire).toContain('RCPT TO:<v@x.test>\r\n.\r\n');
    expect(wire.slice(0, -5)).not.toMatch(/[\r\n]\.[^.]/);
  });
});
