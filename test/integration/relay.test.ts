// End-to-end over real sockets: SMTP client → relay → sink SMTP server, UCWI simulator over HTTP. Exact reply lines, byte-exact delivery, every verdict row, every failure.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SmtpSession, smtpDialog, replyCode } from '../helpers/raw-smtp.js';
import {
  startChain,
  spoolFiles,
  eventually,
  sha256,
  message,
  sendMessage,
  traceLine,
  traceLinePattern,
  queryIdOf,
  type Chain,
  type TraceExpect,
} from '../helpers/chain.js';
import { writeBigMessage } from '../helpers/big-message.js';

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';

const send = sendMessage;

/** The signed loop header value our relay writes (src/policy/loop-token.ts) for this queryId. */
const loopValue = (qid: string) => `v1; t=\\d+; q=${qid}; mac=[A-Za-z0-9_-]{43}`;
/** The loop header line exactly as delivered, right after our Received: line, so byte-exact checks can rebuild the prefix. */
function loopLine(data: Buffer, qid: string, trace: TraceExpect = {}): string {
  const rest = data.toString('latin1').slice(traceLine(data, qid, trace).length);
  return /^X-DLP-Relay-Scanned: [^\r\n]*\r\n/.exec(rest)![0];
}
/** The exact prefix a relayed copy gets: our Received: line, the loop header, the verdict headers. */
function relayPrefix(data: Buffer, qid: string, code: number, action = 'relay', trace: TraceExpect = {}): string {
  return `${traceLine(data, qid, trace)}${loopLine(data, qid, trace)}X-DLP-Query-ID: ${qid}\r\nX-DLP-Action-Code: ${code}\r\nX-DLP-Action: ${action}\r\n`;
}

function headersOf(data: Buffer): string {
  const s = data.toString('latin1');
  return s.slice(0, s.indexOf('\r\n\r\n'));
}

describe('relay chain: verdict table', () => {
  let chain: Chain;
  beforeAll(async () => {
    chain = await startChain();
  });
  afterAll(async () => {
    await chain.close();
  });

  it('actionCode 1 relays with verdict headers prepended, bytes otherwise unchanged', async () => {
    const input = message('Clean body.\r\n.leading dot line\r\n8-bit: caf\u00e9 \u00fcber');
    const r = await send(chain.port, input);
    // The next hop's own final reply, passed through verbatim (no ref of ours in it).
    expect(chain.sink.messages).toHaveLength(1);
    expect(r.data).toBe('250 2.6.0 Ok: queued as SINK1');
    const got = chain.sink.messages[0]!;
    const qid = queryIdOf(got.data!);
    await eventually(() => chain.summaries().length === 1);
    expect(chain.summaries().at(-1)).toMatchObject({ queryId: qid, reply: '250 2.6.0 Ok: queued as SINK1' });
    expect(loopLine(got.data!, qid)).toMatch(new RegExp(`^X-DLP-Relay-Scanned: ${loopValue(qid)}\r\n$`));
    const prefix = relayPrefix(got.data!, qid, 1);
    // Byte-exact: what the sink got is our Received: line and prepended headers plus the input, compared by SHA-256.
    expect(got.sha256).toBe(sha256(Buffer.concat([Buffer.from(prefix, 'latin1'), Buffer.from(input)])));
    expect(got.from).toBe('alice@example.test');
    expect(got.to.map((t) => t.address)).toEqual(['bob@example.test']);
    await eventually(() => spoolFiles(chain).length === 0);
  });

  it('actionCode 2 rejects with 550 5.7.1 naming the queryID and no policy internals', async () => {
    const before = chain.sink.messages.length;
    const r = await send(chain.port, message('Card: 4111 1111 1111 1111'));
    expect(r.data).toMatch(new RegExp(`^550 5\\.7\\.1 Message rejected by data-loss-prevention policy \\(ref ${UUID}\\)$`));
    expect(r.data).not.toMatch(/PCI|card/i);
    expect(chain.sink.messages.length).toBe(before);
  });

  it.each([3, 6])('actionCode %i quarantines: 250, not delivered, stored with metadata (mode 0600)', async (code) => {
    const before = chain.sink.messages.length;
    const input = message(`trigger DLPTEST-ACTION-${code}`);
    const r = await send(chain.port, input);
    expect(r.data).toMatch(new RegExp(`^250 2\\.0\\.0 Ok: message held for review \\(ref ${UUID}\\)$`));
    const qid = /ref ([0-9a-f-]{36})/.exec(r.data)![1]!;
    expect(chain.sink.messages.length).toBe(before);
    const eml = join(chain.dirs.quarantine, `${qid}.eml`);
    const meta = JSON.parse(readFileSync(join(chain.dirs.quarantine, `${qid}.json`), 'utf8')) as Record<string, unknown>;
    // The held copy is our Received: line (and nothing else of ours) followed by the input, byte for byte.
    const stored = readFileSync(eml);
    expect(stored.toString('latin1')).toBe(traceLine(stored, qid) + Buffer.from(input).toString('latin1'));
    expect(statSync(eml).mode & 0o777).toBe(0o600);
    expect(meta).toMatchObject({
      id: qid,
      queryId: qid,
      actionCode: code,
      reason: `dlp:${code}`,
      status: 'held',
      sha256: sha256(stored),
      envelope: { from: 'alice@example.test', to: [{ address: 'bob@example.test' }] },
    });
    expect((meta['policies'] as unknown[]).length).toBeGreaterThan(0);
  });

  it.each([5, 8])('actionCode %i relays with the encryption-route header', async (code) => {
    const r = await send(chain.port, message(`trigger DLPTEST-ACTION-${code}`));
    expect(replyCode(r.data)).toBe(250);
    const got = chain.sink.messages.at(-1)!;
    const qid = queryIdOf(got.data!);
    expect(headersOf(got.data!)).toMatch(
      new RegExp(
        `${traceLinePattern(qid)}X-DLP-Relay-Scanned: ${loopValue(qid)}\r\nX-DLP-Query-ID: ${qid}\r\nX-DLP-Action-Code: ${code}\r\nX-DLP-Action: relay-encrypt\r\nX-DLP-Encrypt: required\r\nFrom:`,
      ),
    );
  });

  it.each([7, 9])('actionCode %i (endpoint encryption) relays with the encryption-route header', async (code) => {
    const r = await send(chain.port, message(`trigger DLPTEST-ACTION-${code}`));
    expect(replyCode(r.data)).toBe(250);
    expect(headersOf(chain.sink.messages.at(-1)!.data!)).toContain(`X-DLP-Action-Code: ${code}\r\nX-DLP-Action: relay-encrypt\r\nX-DLP-Encrypt: required\r\n`);
  });

  it('an unknown actionCode quarantines', async () => {
    chain.sim.setFaults({ forceActionCode: 42 });
    try {
      const r = await send(chain.port, message('anything'));
      expect(r.data).toMatch(/^250 2\.0\.0 Ok: message held for review/);
      const qid = /ref ([0-9a-f-]{36})/.exec(r.data)![1]!;
      const meta = JSON.parse(readFileSync(join(chain.dirs.quarantine, `${qid}.json`), 'utf8')) as Record<string, unknown>;
      expect(meta).toMatchObject({ actionCode: 42, reason: 'unknown-action:42' });
    } finally {
      chain.sim.resetFaults();
    }
  });

  it('sends UCWI the envelope, a fresh queryID and the MD5 of the message', async () => {
    const input = message('md5 check');
    await send(chain.port, input, { to: ['bob@example.test', 'carol@example.test'] });
    const meta = chain.sim.stats().lastMetadata as Record<string, unknown>;
    const { createHash } = await import('node:crypto');
    expect(meta).toMatchObject({
      sender: 'alice@example.test',
      recipients: ['bob@example.test', 'carol@example.test'],
      md5: createHash('md5').update(input).digest('hex'),
    });
    expect(meta['queryID']).toMatch(new RegExp(`^${UUID}$`));
  });

  it('writes one summary line per message with the agreed fields and no body', async () => {
    const before = chain.summaries().length;
    await send(chain.port, message('SUMMARY-BODY-MARKER 4111 1111 1111 1111'));
    await eventually(() => chain.summaries().length === before + 1);
    const line = chain.summaries().at(-1)!;
    // Per recipient: its address and the reply it got at RCPT time (the next hop's, in lockstep).
    expect(line).toMatchObject({
      event: 'message',
      sender: 'alice@example.test',
      to: [{ address: 'bob@example.test', reply: '250 2.1.5 Accepted' }],
      actionCode: 2,
      action: 'reject',
      replyClass: '5xx',
    });
    expect(line).not.toHaveProperty('rcpts');
    expect(line).not.toHaveProperty('refusedRecipients');
    expect(line['queryId']).toMatch(new RegExp(`^${UUID}$`));
    expect(line['reply']).toMatch(/^550 5\.7\.1 /);
    expect(typeof line['size']).toBe('number');
    expect(typeof line['dlpMs']).toBe('number');
    expect('relayMs' in line).toBe(true);
    expect(chain.rawLogs()).not.toContain('SUMMARY-BODY-MARKER');
    expect(chain.rawLogs()).not.toContain('test-secret-key');
  });

  it('the spool is empty after every transaction', async () => {
    // Its own relayed and rejected messages, so the check does not pass merely because nothing was spooled;
    // spoolFiles() reads [] for a missing directory, hence the existence check.
    expect(existsSync(chain.dirs.spool)).toBe(true);
    expect((await send(chain.port, message('Spool check: clean.'))).data).toMatch(/^250 /);
    expect((await send(chain.port, message('Card: 4111 1111 1111 1111'))).data).toMatch(/^550 5\.7\.1 /);
    await eventually(() => spoolFiles(chain).length === 0);
  });
});

describe('relay chain: UCWI failures', () => {
  const cases: Array<{ name: string; faults: Record<string, unknown> }> = [
    { name: 'HTTP 500', faults: { status: 500 } },
    { name: '401 (wrong keys)', faults: { status: 401 } },
    { name: 'garbage body', faults: { body: 'garbage' } },
    { name: 'truncated body', faults: { body: 'truncated' } },
    { name: 'slow past the deadline', faults: { latencyMs: 3000 } },
    { name: 'connection dropped', faults: { dropConnection: true } },
  ];
  let chain: Chain;
  beforeAll(async () => {
    chain = await startChain({ config: { ucwi: { timeouts: { deadlineMs: 1000 } } } });
  });
  afterAll(async () => {
    await chain.close();
  });
  afterEach(() => chain.sim.resetFaults());

  it.each(cases)('$name → 451 4.7.1 tempfail (default), nothing delivered', async ({ faults }) => {
    chain.sim.setFaults(faults);
    const before = chain.sink.messages.length;
    const r = await send(chain.port, message('hello'));
    expect(r.data).toMatch(new RegExp(`^451 4\\.7\\.1 Content inspection unavailable, try again later \\(ref ${UUID}\\)$`));
    expect(chain.sink.messages.length).toBe(before);
  });

  it('wrong secret key → 401 from UCWI → tempfail', async () => {
    const other = await startChain({ config: { secrets: { ucwiSecretKey: 'not-the-right-one' } }, sim: chain.sim });
    try {
      const r = await send(other.port, message('hello'));
      expect(r.data).toMatch(/^451 4\.7\.1 /);
      expect(other.summaries().at(-1)).toMatchObject({ errorClass: 'auth' });
    } finally {
      await other.close();
    }
  });

  it('UCWI down (connection refused) → tempfail', async () => {
    const other = await startChain({ config: { ucwi: { url: 'http://127.0.0.1:1' } } });
    try {
      const r = await send(other.port, message('hello'));
      expect(r.data).toMatch(/^451 4\.7\.1 /);
      expect(other.summaries().at(-1)).toMatchObject({ errorClass: 'unreachable' });
    } finally {
      await other.close();
    }
  });
});

describe('relay chain: configured DLP failure actions', () => {
  it('onDlpError relay delivers marked unscanned', async () => {
    const chain = await startChain({ config: { policy: { onDlpError: 'relay' } } });
    try {
      chain.sim.setFaults({ status: 503 });
      const r = await send(chain.port, message('hello'));
      expect(replyCode(r.data)).toBe(250);
      expect(headersOf(chain.sink.messages[0]!.data!)).toMatch(/X-DLP-Action-Code: none\r\nX-DLP-Action: relay-unscanned\r\n/);
    } finally {
      await chain.close();
    }
  });

  it('onDlpError quarantine stores it with the error class', async () => {
    const chain = await startChain({ config: { policy: { onDlpError: 'quarantine' } } });
    try {
      chain.sim.setFaults({ body: 'garbage' });
      const r = await send(chain.port, message('hello'));
      expect(r.data).toMatch(/^250 2\.0\.0 Ok: message held for review/);
      const qid = /ref ([0-9a-f-]{36})/.exec(r.data)![1]!;
      expect(JSON.parse(readFileSync(join(chain.dirs.quarantine, `${qid}.json`), 'utf8'))).toMatchObject({
        actionCode: null,
        reason: 'dlp-error:bad_response',
      });
      expect(chain.sink.messages).toHaveLength(0);
    } finally {
      await chain.close();
    }
  });

  it('the end-of-DATA deadline answers 451 4.4.7, never a late 250', async () => {
    const chain = await startChain({ config: { limits: { dataDeadlineMs: 500 } }, sink: { dataDelayMs: 3000 } });
    try {
      const r = await send(chain.port, message('hello'));
      expect(r.data).toMatch(new RegExp(`^451 4\\.4\\.7 Processing deadline exceeded, try again later \\(ref ${UUID}\\)$`));
    } finally {
      await chain.close();
    }
  });
});

describe('relay chain: next hop failures', () => {
  it('next hop down → 451 4.4.1 at MAIL FROM, before any data or DLP call', async () => {
    const chain = await startChain({ config: { nextHop: { port: 1 } } });
    try {
      const r = await send(chain.port, message('hello'));
      // Lockstep: the transaction is opened at the next hop at MAIL FROM; the ref is the session id (no message yet).
      const m = /^451 4\.4\.1 Next hop unavailable, try again later \(ref ([0-9a-f]{10})\)$/.exec(r.mail);
      expect(m, r.mail).not.toBeNull();
      expect(chain.logs.some((l) => l['cid'] === m![1] && l['command'] === 'MAIL FROM')).toBe(true);
      // No transaction: RCPT and DATA are out of sequence, nothing was spooled or scanned.
      expect(r.rcpts[0]).toBe('503 5.5.1 Bad sequence of commands');
      expect(r.data).toBe('503 5.5.1 Bad sequence of commands');
      expect(chain.sim.stats().requests).toBe(0);
      expect(chain.summaries()).toHaveLength(0);
    } finally {
      await chain.close();
    }
  });

  it("next hop 4xx at the final dot is passed back unchanged (the next hop's own reply)", async () => {
    const chain = await startChain({ sink: { data: () => [452, 'Insufficient system storage'] } });
    try {
      const r = await send(chain.port, message('hello'));
      // smtp-server adds its enhanced code 4.2.2 for 452: this is the sink's line verbatim, not one of ours.
      expect(r.data).toBe('452 4.2.2 Insufficient system storage');
      expect(chain.sink.messages).toHaveLength(0);
      await eventually(() => chain.summaries().length === 1);
      expect(chain.summaries()[0]).toMatchObject({
        action: 'relay-deferred',
        actionCode: 1,
        reply: '452 4.2.2 Insufficient system storage',
        replyClass: '4xx',
      });
    } finally {
      await chain.close();
    }
  });

  it("next hop 5xx at DATA is passed back as the next hop's 5xx", async () => {
    const chain = await startChain({ sink: { data: () => [554, 'Content refused downstream'] } });
    try {
      const r = await send(chain.port, message('hello'));
      expect(r.data).toBe('554 5.6.0 Content refused downstream');
      expect(chain.sink.messages).toHaveLength(0);
    } finally {
      await chain.close();
    }
  });

  it("all recipients refused with 5xx → each gets the next hop's 5xx at RCPT, DATA 554 5.5.1, nothing scanned", async () => {
    const chain = await startChain({ sink: { rcpt: () => [550, 'No such user'] } });
    try {
      const r = await send(chain.port, message('hello'), { to: ['bob@example.test', 'carol@example.test'] });
      expect(r.mail).toBe('250 2.1.0 Accepted');
      expect(r.rcpts).toEqual(['550 5.1.1 No such user', '550 5.1.1 No such user']);
      expect(r.data).toBe('554 5.5.1 No valid recipients');
      expect(chain.sim.stats().requests).toBe(0);
      expect(chain.sink.messages).toHaveLength(0);
    } finally {
      await chain.close();
    }
  });

  it("partial refusal: the refused recipient gets the next hop's 5xx at RCPT, the others are delivered once, no DSN", async () => {
    const chain = await startChain({ sink: { rcpt: (a) => (a.startsWith('gone@') ? [550, '<gone@example.test>: no such user'] : null) } });
    try {
      const r = await send(chain.port, message('hello'), { to: ['bob@example.test', 'gone@example.test', 'carol@example.test'] });
      expect(r.rcpts).toEqual(['250 2.1.5 Accepted', '550 5.1.1 <gone@example.test>: no such user', '250 2.1.5 Accepted']);
      expect(r.data).toBe('250 2.6.0 Ok: queued as SINK1');
      await eventually(() => chain.summaries().length === 1);
      expect(chain.summaries()[0]).toMatchObject({
        to: [
          { address: 'bob@example.test', reply: '250 2.1.5 Accepted' },
          { address: 'gone@example.test', reply: '550 5.1.1 <gone@example.test>: no such user' },
          { address: 'carol@example.test', reply: '250 2.1.5 Accepted' },
        ],
      });
      // The relay generates no DSN: give a late one a bounded chance to show up, then check there is none.
      await new Promise((res) => setTimeout(res, 300));
      expect(chain.sink.messages).toHaveLength(1);
      expect(chain.sink.messages[0]!.from).toBe('alice@example.test');
      expect(chain.sink.messages[0]!.to.map((t) => t.address)).toEqual(['bob@example.test', 'carol@example.test']);
    } finally {
      await chain.close();
    }
  });
});

describe('relay chain: envelope fidelity', () => {
  let chain: Chain;
  beforeAll(async () => {
    chain = await startChain();
  });
  afterAll(async () => {
    await chain.close();
  });

  it('passes DSN parameters per recipient, RET and ENVID', async () => {
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client');
    expect(await s.cmd('MAIL FROM:<alice@example.test> RET=HDRS ENVID=env123')).toMatch(/^250 /);
    expect(await s.cmd('RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test')).toMatch(/^250 /);
    expect(await s.cmd('RCPT TO:<carol@example.test> NOTIFY=NEVER')).toMatch(/^250 /);
    expect(await s.data(message('dsn'))).toMatch(/^250 /);
    s.close();
    const got = chain.sink.messages.at(-1)!;
    expect(got.mailArgs).toMatchObject({ RET: 'HDRS', ENVID: 'env123' });
    expect(got.to[0]!.args).toMatchObject({ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;bob@example.test' });
    expect(got.to[1]!.args).toMatchObject({ NOTIFY: 'NEVER' });
    expect(got.to[1]!.args).not.toHaveProperty('ORCPT');
  });

  it('passes SMTPUTF8 and 8BITMIME', async () => {
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client');
    expect(await s.cmd('MAIL FROM:<jos\u00e9@example.test> SMTPUTF8 BODY=8BITMIME')).toMatch(/^250 /);
    expect(await s.cmd('RCPT TO:<bob@example.test>')).toMatch(/^250 /);
    expect(await s.data(message('Gr\u00fc\u00dfe'))).toMatch(/^250 /);
    s.close();
    const got = chain.sink.messages.at(-1)!;
    expect(got.from).toBe('jos\u00e9@example.test');
    expect(got.mailArgs).toMatchObject({ SMTPUTF8: true, BODY: '8BITMIME' });
  });

  it('advertises the ESMTP extensions and the size limit', async () => {
    const [greeting, ehlo] = await smtpDialog(chain.port, ['EHLO client']);
    expect(greeting).toMatch(/^220 /);
    const lines = ehlo!.split('\n').map((l) => l.slice(4));
    for (const ext of ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'DSN', 'SIZE 52428800']) expect(lines).toContain(ext);
    // No AUTH and no STARTTLS without a certificate: nothing is advertised that we cannot honour.
    expect(lines.some((l) => l.startsWith('AUTH') || l === 'STARTTLS')).toBe(false);
  });

  it('keeps pipelined commands in order', async () => {
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client');
    s.send('MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n');
    expect(await s.read()).toMatch(/^250 /);
    expect(await s.read()).toMatch(/^250 /);
    expect(await s.read()).toMatch(/^250 /);
    expect(await s.read()).toMatch(/^354 /);
    s.send(message('pipelined') + '.\r\n');
    expect(await s.read()).toMatch(/^250 2\.6\.0 Ok: queued as SINK/);
    s.close();
  });
});

describe('relay chain: limits and access', () => {
  it('refuses a declared SIZE over the limit and drains an oversized DATA with 552 5.3.4', async () => {
    const chain = await startChain({ config: { smtp: { maxMessageBytes: 4096 } } });
    try {
      const s = await SmtpSession.connect(chain.port);
      await s.cmd('EHLO client');
      expect(await s.cmd('MAIL FROM:<alice@example.test> SIZE=999999')).toMatch(/^552 5\.3\.4 /);
      expect(await s.cmd('MAIL FROM:<alice@example.test>')).toMatch(/^250 /);
      expect(await s.cmd('RCPT TO:<bob@example.test>')).toMatch(/^250 /);
      const big = message('x'.repeat(76) + '\r\n' + ('y'.repeat(76) + '\r\n').repeat(200));
      expect(await s.data(big)).toMatch(/^552 5\.3\.4 /);
      // The session is still usable: the over-size DATA was read to the end.
      expect(await s.cmd('MAIL FROM:<alice@example.test>')).toMatch(/^250 /);
      s.close();
      expect(chain.sink.messages).toHaveLength(0);
      expect(chain.sim.stats().requests).toBe(0);
      await eventually(() => spoolFiles(chain).length === 0);
    } finally {
      await chain.close();
    }
  });

  it('refuses a client outside the allowed networks at connect: never an open relay', async () => {
    const chain = await startChain({ config: { smtp: { allowedClients: ['10.0.0.0/8'] } } });
    try {
      const s = await SmtpSession.connect(chain.port);
      expect(s.greeting).toBe('554 5.7.1 Access denied: client host is not allowed to relay');
      s.close();
      expect(chain.sink.messages).toHaveLength(0);
    } finally {
      await chain.close();
    }
  });

  it('too many recipients → 452 4.5.3', async () => {
    const chain = await startChain({ config: { smtp: { maxRecipients: 2 } } });
    try {
      const r = await send(chain.port, message('hi'), { to: ['a@example.test', 'b@example.test', 'c@example.test'] });
      expect(r.rcpts[2]).toMatch(/^452 4\.5\.3 /);
    } finally {
      await chain.close();
    }
  });

  it('quarantine store failure → 451, never 250', async () => {
    const chain = await startChain();
    try {
      rmSync(chain.dirs.quarantine, { recursive: true, force: true });
      writeFileSync(chain.dirs.quarantine, 'not a directory');
      const r = await send(chain.port, message('DLPTEST-ACTION-6'));
      expect(r.data).toMatch(new RegExp(`^451 4\\.3\\.0 Quarantine storage unavailable, try again later \\(ref ${UUID}\\)$`));
    } finally {
      await chain.close();
    }
  });

  it('UCWI saturated: new sessions get 421 4.3.2 while those in flight still finish', async () => {
    const chain = await startChain({ config: { ucwi: { maxConcurrent: 1 } } });
    try {
      chain.sim.setFaults({ latencyMs: 1500 });
      // One message holds the only UCWI slot, a second waits for it: the queue is as long as the cap.
      const inFlight = [send(chain.port, message('first')), send(chain.port, message('second'))];
      await eventually(() => chain.relay.ucwi.waiting >= 1);
      const late = await SmtpSession.connect(chain.port);
      expect(late.greeting).toBe('421 4.3.2 Too many connections, try again later');
      late.close();
      for (const r of await Promise.all(inFlight)) expect(replyCode(r.data)).toBe(250);
      expect(chain.sink.messages).toHaveLength(2);
    } finally {
      await chain.close();
    }
  });

  it('50 concurrent sessions are all answered correctly', async () => {
    const chain = await startChain();
    try {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          send(chain.port, message(i % 5 === 0 ? `card 4111 1111 1111 1111 #${i}` : `clean #${i}`), { to: [`user${i}@example.test`] }).then((r) => ({ i, r })),
        ),
      );
      for (const { i, r } of results) expect(replyCode(r.data)).toBe(i % 5 === 0 ? 550 : 250);
      expect(chain.sink.messages).toHaveLength(40);
      expect(new Set(chain.sink.messages.map((m) => m.to[0]!.address)).size).toBe(40);
      await eventually(() => spoolFiles(chain).length === 0);
    } finally {
      await chain.close();
    }
  });
});

// The loop header (signed, forged, reflected, expired, rotated) is tested in loop-header.test.ts.

describe('relay chain: local outbox and large messages', () => {
  it('without a next hop, accepted mail lands in the outbox as one .eml each', async () => {
    const chain = await startChain({ noNextHop: true });
    try {
      const input = message('to the outbox');
      const r = await send(chain.port, input);
      expect(r.data).toMatch(/^250 2\.0\.0 Ok: stored in local outbox \(ref /);
      const emls = readdirSync(chain.dirs.outbox).filter((f) => f.endsWith('.eml'));
      expect(emls).toHaveLength(1);
      expect(readFileSync(join(chain.dirs.outbox, emls[0]!), 'utf8').endsWith(input)).toBe(true);
    } finally {
      await chain.close();
    }
  });

  it('relays a ~20 MB message byte-exact', async () => {
    const chain = await startChain();
    try {
      const file = join(chain.dirs.root, 'big.eml');
      const { sha256: inputSha, size } = await writeBigMessage(file, 20 * 1024 * 1024);
      expect(existsSync(file)).toBe(true);
      const s = await SmtpSession.connect(chain.port, { timeoutMs: 60_000 });
      await s.cmd('EHLO client');
      await s.cmd('MAIL FROM:<alice@example.test>');
      await s.cmd('RCPT TO:<bob@example.test>');
      const r = await s.data(readFileSync(file), { dotStuff: true });
      s.close();
      expect(replyCode(r)).toBe(250);
      expect(r).toBe('250 2.6.0 Ok: queued as SINK1');
      const got = chain.sink.messages[0]!;
      const qid = queryIdOf(got.head);
      const prefix = Buffer.from(relayPrefix(got.head, qid, 1, 'relay', { helo: 'client' }), 'latin1');
      expect(got.size).toBe(size + prefix.length);
      const { createHash } = await import('node:crypto');
      const h = createHash('sha256').update(prefix).update(readFileSync(file)).digest('hex');
      expect(got.sha256).toBe(h);
      expect(inputSha).toBe(sha256(readFileSync(file)));
    } finally {
      await chain.close();
    }
  });
});
