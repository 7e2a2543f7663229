// Issue 10 §1 through the real relay chain: only a signed, fresh loop header from a trusted network skips the scan; forged, expired, wrong-key and untrusted ones are cut out and scanned.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChain, message, sendMessage, sha256, traceLine, traceLinePattern, queryIdOf, type Chain } from '../helpers/chain.js';
import { replyCode } from '../helpers/raw-smtp.js';
import { mintLoopValue } from '../../src/policy/loop-token.js';

const KEY = 'loop-key-shared-by-relays-0123456789';
const OLD_KEY = 'loop-key-before-rotation-9876543210';
const CARD = 'Card: 4111 1111 1111 1111';
const nowS = () => Math.floor(Date.now() / 1000);
const QID = '0f0f0f0f-1111-2222-3333-444444444444';

function withMessageId(body: string, messageId: string, loopHeader: string | null): string {
  return (
    `${loopHeader === null ? '' : `X-DLP-Relay-Scanned: ${loopHeader}\r\n`}From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: loop\r\n` +
    `Message-ID: ${messageId}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n${body}\r\n`
  );
}

const forgeries = (chain: Chain) => chain.logs.filter((l) => l['msg'] === 'loop header forgery');

describe('loop header from a trusted network (the reflecting deployment)', () => {
  let chain: Chain;
  beforeAll(async () => {
    chain = await startChain({ config: { policy: { loop: { trustedNetworks: ['127.0.0.0/8'] } }, secrets: { loopKey: KEY } } });
  });
  afterAll(async () => {
    await chain?.close();
  });

  it('a forged value is removed, the message scanned (and rejected), and the attempt logged at warn', async () => {
    const before = chain.sim.stats().requests;
    const r = await sendMessage(chain.port, message(CARD, 'X-DLP-Relay-Scanned: whatever\r\n'));
    expect(r.data).toMatch(/^550 5\.7\.1 /);
    expect(chain.sim.stats().requests).toBe(before + 1);
    const f = forgeries(chain);
    expect(f.length).toBeGreaterThanOrEqual(1);
    expect(f.at(-1)).toMatchObject({ level: 40, trusted: true, reasons: ['malformed'] });
  });

  it('a genuine reflected copy is relayed without a second scan, byte for byte', async () => {
    const input = withMessageId('clean text going out', '<reflect-1@example.test>', null);
    const first = await sendMessage(chain.port, input);
    expect(first.data).toBe(`250 2.6.0 Ok: queued as SINK${chain.sink.messages.length}`);
    const scans = chain.sim.stats().requests;
    const relayed = chain.sink.messages.at(-1)!.data!;
    const qid = queryIdOf(relayed);
    expect(relayed.toString('latin1')).toMatch(new RegExp(`${traceLinePattern(qid)}X-DLP-Relay-Scanned: v1; t=\\d+; q=${qid}; mac=[A-Za-z0-9_-]{43}\r\n`));
    // The MTA behind us sends the relayed message back in, exactly as it got it.
    const back = await sendMessage(chain.port, relayed);
    expect(back.data).toBe(`250 2.6.0 Ok: queued as SINK${chain.sink.messages.length}`);
    expect(chain.sim.stats().requests).toBe(scans);
    // Byte for byte: the second copy is the first one under one more Received: line of ours (a new queryId).
    const again = chain.sink.messages.at(-1)!;
    const qid2 = String(chain.summaries().at(-1)!['queryId']);
    expect(qid2).not.toBe(qid);
    expect(again.sha256).toBe(sha256(Buffer.concat([Buffer.from(traceLine(again.data!, qid2), 'latin1'), relayed])));
  });

  it('a genuine header copied onto another message (other Message-ID) is a forgery', async () => {
    const input = withMessageId('clean', '<original@example.test>', null);
    await sendMessage(chain.port, input);
    const copy = chain.sink.messages.at(-1)!.data!;
    const loop = /^X-DLP-Relay-Scanned: ([^\r\n]*)\r\n/.exec(copy.toString('latin1').slice(traceLine(copy, queryIdOf(copy)).length))![1]!;
    const before = chain.sim.stats().requests;
    const r = await sendMessage(chain.port, withMessageId(CARD, '<other@example.test>', loop));
    expect(r.data).toMatch(/^550 5\.7\.1 /);
    expect(chain.sim.stats().requests).toBe(before + 1);
    expect(forgeries(chain).at(-1)).toMatchObject({ reasons: ['bad-mac'] });
  });

  it.each([
    ['expired (older than maxAgeSeconds)', () => mintLoopValue(Buffer.from(KEY), QID, '<x@example.test>', nowS() - 3600 - 120), 'expired'],
    ['signed with a key we do not have', () => mintLoopValue(Buffer.from('some-other-relays-key-000000000'), QID, '<x@example.test>', nowS()), 'bad-mac'],
    ['minted in the future', () => mintLoopValue(Buffer.from(KEY), QID, '<x@example.test>', nowS() + 3600), 'future'],
  ])('%s: scanned and rejected', async (_name, value, reason) => {
    const before = chain.sim.stats().requests;
    const input = withMessageId(CARD, '<x@example.test>', value());
    const r = await sendMessage(chain.port, input);
    expect(r.data).toMatch(/^550 5\.7\.1 /);
    expect(chain.sim.stats().requests).toBe(before + 1);
    expect(forgeries(chain).at(-1)).toMatchObject({ reasons: [reason] });
  });

  it('a valid value lets a trusted message skip the scan (control for the cases above)', async () => {
    const before = chain.sim.stats().requests;
    const input = withMessageId(CARD, '<x@example.test>', mintLoopValue(Buffer.from(KEY), QID, '<x@example.test>', nowS()));
    const r = await sendMessage(chain.port, input);
    expect(r.data).toMatch(/^250 /);
    expect(chain.sim.stats().requests).toBe(before);
  });
});

describe('loop header key rotation', () => {
  const old = (mid: string) => withMessageId(CARD, mid, mintLoopValue(Buffer.from(OLD_KEY), QID, mid, nowS()));

  it('the previous key is accepted until previousKeyUntil', async () => {
    const until = new Date(Date.now() + 86_400_000).toISOString();
    const chain = await startChain({
      config: { policy: { loop: { trustedNetworks: ['127.0.0.0/8'], previousKeyUntil: until } }, secrets: { loopKey: KEY, loopPreviousKey: OLD_KEY } },
    });
    try {
      const r = await sendMessage(chain.port, old('<rot-1@example.test>'));
      expect(r.data).toMatch(/^250 /);
      expect(chain.sim.stats().requests).toBe(0);
    } finally {
      await chain.close();
    }
  });

  it('after previousKeyUntil the previous key is a forgery', async () => {
    const until = new Date(Date.now() - 60_000).toISOString();
    const chain = await startChain({
      config: { policy: { loop: { trustedNetworks: ['127.0.0.0/8'], previousKeyUntil: until } }, secrets: { loopKey: KEY, loopPreviousKey: OLD_KEY } },
    });
    try {
      const r = await sendMessage(chain.port, old('<rot-2@example.test>'));
      expect(r.data).toMatch(/^550 5\.7\.1 /);
      expect(chain.sim.stats().requests).toBe(1);
      expect(forgeries(chain).at(-1)).toMatchObject({ reasons: ['bad-mac'] });
    } finally {
      await chain.close();
    }
  });
});

describe('loop header from a client outside trustedNetworks', () => {
  it('even a valid value is removed and the message scanned', async () => {
    const chain = await startChain({ config: { secrets: { loopKey: KEY } } });
    try {
      const value = mintLoopValue(Buffer.from(KEY), QID, '<u@example.test>', nowS());
      const input = withMessageId('clean text', '<u@example.test>', value);
      const r = await sendMessage(chain.port, input);
      expect(replyCode(r.data)).toBe(250);
      expect(chain.sim.stats().requests).toBe(1);
      const got = chain.sink.messages[0]!.data!.toString();
      expect(got).not.toContain(value);
      expect(got.endsWith(input.replace(`X-DLP-Relay-Scanned: ${value}\r\n`, ''))).toBe(true);
    } finally {
      await chain.close();
    }
  });

  it('without a configured key a random one is used, with a warning naming the setting', async () => {
    const chain = await startChain();
    try {
      expect(chain.logs.some((l) => l['level'] === 40 && l['setting'] === 'policy.loop.keyFile')).toBe(true);
    } finally {
      await chain.close();
    }
  });
});
