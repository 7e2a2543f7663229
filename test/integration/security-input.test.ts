// Issue 5 §3, hostile input: bare LF/CR, NUL, a 1 MB header line, 10,000 recipients, deep MIME nesting, broken base64, an SMTP-smuggling attempt. Each is relayed byte-exact or refused with a clear code; the relay never crashes or hangs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { startChain, eventually, spoolFiles, traceLine, queryIdOf, type Chain } from '../helpers/chain.js';
import { SmtpSession, replyCode, dotStuff } from '../helpers/raw-smtp.js';
import { startTcpGate, type TcpGate } from '../helpers/tcp-gate.js';
import { startScriptHop, type ScriptHop } from '../helpers/script-hop.js';

interface InputCase {
  name: string;
  payload: () => Buffer;
  rcpts?: number;
}

const HEAD = 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: hostile input\r\nMIME-Version: 1.0\r\n';

function deepMime(levels: number): Buffer {
  let s = `${HEAD}Content-Type: multipart/mixed; boundary="b0"\r\n\r\npreamble\r\n`;
  for (let i = 0; i < levels; i++) s += `--b${i}\r\nContent-Type: multipart/mixed; boundary="b${i + 1}"\r\n\r\n`;
  s += `--b${levels}\r\nContent-Type: text/plain\r\n\r\nat the bottom\r\n--b${levels}--\r\n`;
  for (let i = levels - 1; i >= 0; i--) s += `--b${i}--\r\n`;
  return Buffer.from(s);
}

const CASES: InputCase[] = [
  {
    name: 'bare LF line endings',
    payload: () => Buffer.from('From: Alice <alice@example.test>\nTo: Bob <bob@example.test>\nSubject: bare LF\n\nline one\nline two\n.dot after bare LF\n'),
  },
  { name: 'bare CR inside lines', payload: () => Buffer.from(`${HEAD}Subject2: a\rb\r\n\r\nline one\rstill line one\r\n\r\r\n`) },
  { name: 'NUL bytes in the body', payload: () => Buffer.concat([Buffer.from(`${HEAD}\r\nbefore `), Buffer.from([0, 0, 0x41, 0]), Buffer.from(' after\r\n')]) },
  { name: 'a 1 MB header line', payload: () => Buffer.from(`${HEAD}X-Long: ${'a'.repeat(1024 * 1024)}\r\n\r\nbody\r\n`) },
  { name: '10,000 recipients (pipelined RCPT)', payload: () => Buffer.from(`${HEAD}\r\nto many\r\n`), rcpts: 10_000 },
  { name: 'MIME nested 200 levels deep', payload: () => deepMime(200) },
  {
    name: 'malformed base64 in an attachment',
    payload: () =>
      Buffer.from(
        `${HEAD}Content-Type: multipart/mixed; boundary="XX"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n` +
          `--XX\r\nContent-Type: application/octet-stream; name="x.bin"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="x.bin"\r\n\r\n` +
          `!!!!not*base64@@@\r\nQUJD=RE==\r\n====\r\nYWJj ZGVm%%%\r\n--XX--\r\n`,
      ),
  },
];

/** The bytes the relay spooled: what the client sent after unstuffing, ending with the CRLF before the final dot. */
function received(payload: Buffer): Buffer {
  const endsCrlf = payload.length >= 2 && payload[payload.length - 2] === 0x0d && payload[payload.length - 1] === 0x0a;
  return endsCrlf ? payload : Buffer.concat([payload, Buffer.from('\r\n')]);
}

/**
 * Our prepended lines: the Received: line, the loop header, the verdict headers. The date and the loop header's
 * signed value are taken from what was delivered (they vary); everything else must be exactly as expected.
 */
function prefix(qid: string, head: Buffer): string {
  const trace = traceLine(head, qid);
  const loop = /^X-DLP-Relay-Scanned: v1; t=\d+; q=([0-9a-f-]{36}); mac=[A-Za-z0-9_-]{43}\r\n/.exec(head.toString('latin1').slice(trace.length));
  expect(loop?.[1]).toBe(qid);
  return `${trace}${loop![0]}X-DLP-Query-ID: ${qid}\r\nX-DLP-Action-Code: 1\r\nX-DLP-Action: relay\r\n`;
}

/** One transaction; RCPTs are pipelined in one write, as an MTA with many recipients does. */
async function sendRaw(
  port: number,
  payload: Buffer,
  rcpts = 1,
  dotStuff = true,
): Promise<{ rcptReplies: string[]; reply: string; after: string | undefined }> {
  const s = await SmtpSession.connect(port, { timeoutMs: 30_000 });
  try {
    await s.cmd('EHLO client.example.test');
    expect(replyCode(await s.cmd('MAIL FROM:<alice@example.test>'))).toBe(250);
    const lines = Array.from({ length: rcpts }, (_, i) => `RCPT TO:<rcpt${i}@example.test>\r\n`);
    s.send(lines.join(''));
    const rcptReplies: string[] = [];
    for (let i = 0; i < rcpts; i++) rcptReplies.push(await s.read(`RCPT ${i}`));
    const reply = await s.data(payload, { dotStuff });
    // The session is still in step: the next command gets its own reply (nothing left over from DATA).
    const after = await s.quit();
    return { rcptReplies, reply, after };
  } finally {
    s.close();
  }
}

describe('input hardening: relayed byte-exact or refused with a clear code, never a crash or a hang', () => {
  let chain: Chain;
  beforeAll(async () => {
    chain = await startChain({ config: { smtp: { maxRecipients: 10_000 }, nextHop: { timeouts: { connectMs: 5000, greetingMs: 5000, socketMs: 20_000 } } } });
  });
  afterAll(async () => {
    await chain.close();
  });

  it.for(CASES)('$name', async (c) => {
    const before = chain.sink.messages.length;
    const payload = c.payload();
    const r = await sendRaw(chain.port, payload, c.rcpts ?? 1);
    for (const rr of r.rcptReplies) expect(rr).toMatch(/^250 /);
    expect(r.after).toMatch(/^221 /);
    const input = received(payload);
    // Every one of these is relayed (a refusal with a clear enhanced code would also be acceptable, but
    // none is needed): then the next hop must get exactly our header lines plus what was received.
    // The next hop's own reply, passed through: the sink's id for exactly this message.
    expect(chain.sink.messages.length).toBe(before + 1);
    expect(r.reply).toBe(`250 2.6.0 Ok: queued as SINK${before + 1}`);
    const got = chain.sink.messages.at(-1)!;
    const qid = queryIdOf(got.head);
    const want = createHash('sha256').update(prefix(qid, got.head)).update(input).digest('hex');
    expect(got.sha256, `${c.name}: bytes at the next hop differ from prefix + input`).toBe(want);
    expect(got.size).toBe(Buffer.byteLength(prefix(qid, got.head)) + input.length);
    if (c.rcpts) expect(got.to.map((t) => t.address)).toEqual(Array.from({ length: c.rcpts }, (_, i) => `rcpt${i}@example.test`));
    // Still alive and serving: a fresh session is greeted.
    const fresh = await SmtpSession.connect(chain.port);
    expect(fresh.greeting).toMatch(/^220 /);
    fresh.close();
    await eventually(() => spoolFiles(chain).length === 0);
  });
});

describe('line endings and dots in every combination', () => {
  let chain: Chain;
  let hop: ScriptHop;
  beforeAll(async () => {
    // A raw next hop that keeps the DATA bytes exactly as they came over the wire (still dot-stuffed).
    hop = await startScriptHop();
    chain = await startChain({ config: { nextHop: { port: hop.port } } });
  });
  afterAll(async () => {
    await chain.close();
    await hop.close();
  });

  it('seeded random mixes of ".", CR, LF and other bytes are relayed byte-exact (dot-stuffing is transparent)', async () => {
    // A small LCG: the same 20 messages on every run, so a failure can be reproduced.
    let seed = 0x5eed;
    const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const alphabet = [0x2e, 0x2e, 0x0d, 0x0a, 0x0a, 0x61, 0x20, 0x00, 0xff];
    const s = await SmtpSession.connect(chain.port);
    try {
      await s.cmd('EHLO client.example.test');
      for (let n = 0; n < 20; n++) {
        const body = Buffer.from(Array.from({ length: 200 + Math.floor(next() * 1800) }, () => alphabet[Math.floor(next() * alphabet.length)]!));
        const payload = Buffer.concat([Buffer.from(`Subject: mix ${n}\r\n\r\n`), body, Buffer.from('\r\n')]);
        expect(replyCode(await s.cmd('MAIL FROM:<alice@example.test>'))).toBe(250);
        expect(replyCode(await s.cmd('RCPT TO:<bob@example.test>'))).toBe(250);
        // Stuffed by the engine's rule (a line starts after CRLF, bare LF or bare CR), so the relay receives `payload`.
        const reply = await s.data(payload, { dotStuff: true, afterBareCr: true });
        expect(reply).toBe(`250 2.0.0 Ok: queued as HOP${n + 1}`);
        const wire = hop.rawData[n]!;
        const qid = queryIdOf(wire);
        // Byte-exact on the wire: our prefix plus exactly what was received, stuffed by the same rule, then the
        // terminator. A receiver unstuffing by that rule gets prefix + payload back; no dot is lost or invented.
        const want = Buffer.concat([dotStuff(Buffer.concat([Buffer.from(prefix(qid, wire), 'latin1'), payload]), { afterBareCr: true }), Buffer.from('.\r\n')]);
        expect(wire.equals(want), `message ${n}`).toBe(true);
      }
      expect(hop.rawData).toHaveLength(20);
    } finally {
      await s.quit();
    }
  });
});

describe('SMTP smuggling: "<LF>.<CR><LF>" inside a message never reaches the next hop as an end of data', () => {
  let chain: Chain;
  let gate: TcpGate;
  beforeAll(async () => {
    gate = await startTcpGate(0, { capture: true });
    chain = await startChain({ config: { nextHop: { port: gate.port } } });
    gate.target = chain.sink.port;
  });
  afterAll(async () => {
    await chain.close();
    await gate.close();
  });

  const smuggle = (dot: string) =>
    Buffer.from(
      `${HEAD}\r\nfirst part\n${dot}\r\nMAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n`,
    );

  it('one message in, one message out, from the real sender; the sequence is dot-stuffed on the wire', async () => {
    // What a smuggling client sends, unstuffed on purpose: a bare-LF "end of data" and a second transaction.
    // Only CRLF.CRLF ends data; the dot after the bare LF is read as stuffing and removed (semantics §6).
    const r = await sendRaw(chain.port, smuggle('.'), 1, false);
    expect(r.after).toMatch(/^221 /);
    expect(chain.sink.messages).toHaveLength(1);
    expect(r.reply).toBe('250 2.6.0 Ok: queued as SINK1');
    const got = chain.sink.messages[0]!;
    expect(got.from).toBe('alice@example.test');
    expect(got.to.map((t) => t.address)).toEqual(['rcpt0@example.test']);
    const qid = queryIdOf(got.head);
    expect(got.sha256).toBe(createHash('sha256').update(prefix(qid, got.head)).update(smuggle('')).digest('hex'));

    // A client that stuffs the same text keeps its dot, and the relay stuffs it again on the way out.
    const r2 = await sendRaw(chain.port, smuggle('.'), 1, true);
    expect(r2.reply).toBe('250 2.6.0 Ok: queued as SINK2');
    expect(chain.sink.messages).toHaveLength(2);
    const got2 = chain.sink.messages[1]!;
    expect(got2.from).toBe('alice@example.test');
    expect(got2.sha256).toBe(
      createHash('sha256')
        .update(prefix(queryIdOf(got2.head), got2.head))
        .update(smuggle('.'))
        .digest('hex'),
    );

    // On the wire to the next hop, every dot after a line feed is doubled: "\n.\r\n" never appears unstuffed.
    const wire = Buffer.concat(gate.captured()).toString('latin1');
    expect(wire).toContain('smuggled body');
    expect(/(?<!\r)\n\.\r\n/.test(wire)).toBe(false);
    expect(wire).toContain('first part\n\r\nMAIL FROM:<smuggler@evil.test>');
    expect(wire).toContain('first part\n..\r\nMAIL FROM:<smuggler@evil.test>');
  });
});
