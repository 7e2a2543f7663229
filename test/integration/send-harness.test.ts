// The EML harness (`dlp-relay send`), the raw SMTP helper and the big-message generator against the test SMTP peer on 127.0.0.1.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { simpleParser } from 'mailparser';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseServer, readHeaderEnvelope, runSend, UsageError, type SendOptions } from '../../src/cli/send.js';
import { writeBigMessage } from '../helpers/big-message.js';
import { SmtpSession, smtpDialog, lastLine, replyCode } from '../helpers/raw-smtp.js';
import { mtaReplies, startSmtpPeer, type PathArgs, type SmtpPeer } from '../helpers/smtp-peer.js';
import { makeTestPki } from '../helpers/tls-certs.js';

const FIXTURES = fileURLToPath(new URL('../../fixtures', import.meta.url));
const SIZE_LIMIT = 256 * 1024;
const REJECT_REPLY = '550 5.7.1 Recipient rejected by test policy';
const TEMPFAIL_REPLY = '451 4.3.0 Temporary failure requested by message';

interface Received {
  from: string;
  mailArgs: PathArgs;
  to: string[];
  sha256: string;
  bytes: number;
  secure: boolean;
  helo: string | null;
}

const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

let server: SmtpPeer;
let port: number;
let tmp: string;
const received: Received[] = [];

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'dlp-send-'));
  const pki = makeTestPki(tmp);
  // smtp-server's replies without enhanced codes (the harness ran against that package before): the assertions see
  // exact lines such as "250 Accepted" and its 552 for a declared SIZE over the limit.
  server = await startSmtpPeer({
    name: hostname(),
    replies: mtaReplies({ enhanced: false, queued: (n) => `2.0.0 Ok: queued as T${n}` }),
    extensions: { dsn: false, enhancedStatusCodes: false, size: SIZE_LIMIT },
    tls: { key: await readFile(pki.keyFile), cert: await readFile(pki.certFile) },
    script: {
      rcpt: (address) => (address.address.toLowerCase().startsWith('reject') ? REJECT_REPLY : undefined),
      message: (m) => {
        received.push({
          from: m.from,
          mailArgs: m.mailArgs,
          to: m.to.map((r) => r.address),
          sha256: m.sha256,
          bytes: m.size,
          secure: m.secure,
          helo: m.helo,
        });
        return m.data.includes('TEMPFAIL') ? TEMPFAIL_REPLY : undefined;
      },
    },
  });
  port = server.port;

  const msg = (headers: string[], body: string[]): string => [...headers, 'Subject: test', '', ...body].join('\r\n') + '\r\n';
  await writeFile(join(tmp, 'ok.eml'), msg(['From: Sender <sender@example.test>', 'To: ok@example.test'], ['hello']));
  await writeFile(join(tmp, 'rcpt-rejected.eml'), msg(['From: sender@example.test', 'To: reject-me@example.test'], ['hello']));
  await writeFile(join(tmp, 'tempfail.eml'), msg(['From: sender@example.test', 'To: ok@example.test'], ['please TEMPFAIL this']));
  await writeFile(
    join(tmp, 'partial.eml'),
    msg(['From: sender@example.test', 'To: a@example.test,', ' "B" <reject-b@example.test>', 'Cc: c@example.test'], ['hi']),
  );
  await writeFile(join(tmp, 'no-rcpt.eml'), msg(['From: sender@example.test'], ['nobody to send to']));
  await writeFile(join(tmp, 'dotted.eml'), msg(['From: sender@example.test', 'To: ok@example.test'], ['.leading dot', '..two', '.']));
  await mkdir(join(tmp, 'empty-dir'));
});

afterAll(async () => {
  await server.close();
  await rm(tmp, { recursive: true, force: true });
});

beforeEach(() => {
  received.length = 0;
});

function capture(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
}

async function run(paths: string[], extra: Partial<SendOptions> = {}): Promise<{ code: number; lines: string[]; stderr: string }> {
  const out = capture();
  const err = capture();
  const opts: SendOptions = {
    server: `127.0.0.1:${port}`,
    to: [],
    timeoutMs: 10_000,
    starttls: false,
    insecure: false,
    paths,
    ...extra,
  };
  const code = await runSend(opts, out.stream, err.stream);
  return {
    code,
    lines: out
      .text()
      .split('\n')
      .filter((l) => l !== ''),
    stderr: err.text(),
  };
}

const t = (name: string): string => join(tmp, name);

describe('runSend', () => {
  it('sends every *.eml of a directory in sorted order, one accept line each, streamed byte for byte', async () => {
    const names = (await readdir(FIXTURES)).filter((n) => n.endsWith('.eml')).sort();
    expect(names).toHaveLength(7);
    const { code, lines, stderr } = await run([FIXTURES]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(lines).toHaveLength(names.length);
    names.forEach((name, i) => {
      expect(lines[i]).toMatch(new RegExp(`^accept ${escapeRe(join(FIXTURES, name))} 250 2\\.0\\.0 Ok: queued as T\\d+$`));
    });
    expect(received).toHaveLength(names.length);
    for (const [i, name] of names.entries()) {
      const file = await readFile(join(FIXTURES, name));
      const got = received[i]!;
      expect(got.sha256, name).toBe(sha256(file));
      expect(got.from).toBe('alice@example.test');
      // SIZE= declared with the file size, and BODY=8BITMIME for the 8bit fixtures.
      expect(got.mailArgs && got.mailArgs.SIZE).toBe(String(file.length));
      expect(got.mailArgs && got.mailArgs.BODY).toBe('8BITMIME');
      expect(got.secure).toBe(false);
    }
    const many = received[names.indexOf('many-recipients.eml')]!;
    expect(many.to).toEqual(Array.from({ length: 60 }, (_, i) => `user${String(i + 1).padStart(2, '0')}@example.test`));
  });

  it('prints the real final reply for accept, reject and tempfail and exits 1 when --expect differs', async () => {
    const { code, lines } = await run([t('ok.eml'), t('rcpt-rejected.eml'), t('tempfail.eml')], { expect: 'accept' });
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(new RegExp(`^accept ${escapeRe(t('ok.eml'))} 250 2\\.0\\.0 Ok: queued as T\\d+$`));
    expect(lines[1]).toBe(`reject ${t('rcpt-rejected.eml')} ${REJECT_REPLY} (expected accept)`);
    expect(lines[2]).toBe(`tempfail ${t('tempfail.eml')} ${TEMPFAIL_REPLY} (expected accept)`);
    expect(code).toBe(1);
  });

  it('exits 0 when every file matches --expect', async () => {
    expect(await run([t('rcpt-rejected.eml')], { expect: 'reject' })).toEqual({
      code: 0,
      lines: [`reject ${t('rcpt-rejected.eml')} ${REJECT_REPLY}`],
      stderr: '',
    });
    const tf = await run([t('tempfail.eml')], { expect: 'tempfail' });
    expect(tf.code).toBe(0);
    expect(tf.lines).toEqual([`tempfail ${t('tempfail.eml')} ${TEMPFAIL_REPLY}`]);
  });

  it('counts a partial recipient refusal as accept and lists the refused recipients under the line', async () => {
    const { code, lines } = await run([t('partial.eml')], { expect: 'accept' });
    expect(code).toBe(0);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^accept \S+partial\.eml 250 2\.0\.0 Ok: queued as T\d+$/);
    expect(lines[1]).toBe(`  rejected reject-b@example.test ${REJECT_REPLY}`);
    expect(received[0]!.to).toEqual(['a@example.test', 'c@example.test']);
  });

  it('without --expect exits 0 for replies of any class but 1 when a file ends in error', async () => {
    expect((await run([t('ok.eml'), t('rcpt-rejected.eml'), t('tempfail.eml')])).code).toBe(0);
    received.length = 0;
    const { code, lines } = await run([t('no-rcpt.eml'), t('ok.eml')]);
    expect(code).toBe(1);
    expect(lines[0]).toBe(`error ${t('no-rcpt.eml')} no recipients: no --to given and no To:/Cc:/Bcc: addresses in the file`);
    expect(lines[1]).toMatch(/^accept /);
    expect(received).toHaveLength(1);
  });

  it('uses --from, --to and --helo instead of the headers', async () => {
    const { code } = await run([t('ok.eml')], { from: 'override@example.test', to: ['x@example.test', 'y@example.test'], helo: 'harness.test' });
    expect(code).toBe(0);
    expect(received[0]).toMatchObject({ from: 'override@example.test', to: ['x@example.test', 'y@example.test'], helo: 'harness.test' });
  });

  it('greets with the local host name when --helo is not given', async () => {
    expect((await run([t('ok.eml')])).code).toBe(0);
    expect(received[0]!.helo).toBe(hostname());
  });

  it('falls back to harness@localhost without a From: header and sends the null sender for --from ""', async () => {
    const noFrom = t('no-from.eml');
    await writeFile(noFrom, 'To: ok@example.test\r\nSubject: x\r\n\r\nbody\r\n');
    await run([noFrom]);
    await run([noFrom], { from: '' });
    expect(received.map((r) => r.from)).toEqual(['harness@localhost', '']);
  });

  it('streams lines starting with a dot intact (dot-stuffed on the wire)', async () => {
    const { code } = await run([t('dotted.eml')]);
    expect(code).toBe(0);
    expect(received[0]!.sha256).toBe(sha256(await readFile(t('dotted.eml'))));
  });

  it('reports the server 552 for a declared SIZE over its limit instead of refusing locally', async () => {
    const big = t('too-big.eml');
    await writeBigMessage(big, SIZE_LIMIT + 10_000, { to: 'ok@example.test' });
    const { code, lines } = await run([big], { expect: 'reject' });
    expect(lines).toEqual([`reject ${big} 552 Error: message exceeds fixed maximum message size ${SIZE_LIMIT}`]);
    expect(code).toBe(0);
    expect(received).toHaveLength(0);
  });

  it('upgrades with --starttls, and fails closed on a self-signed certificate without --insecure', async () => {
    const ok = await run([t('ok.eml')], { starttls: true, insecure: true });
    expect(ok.code).toBe(0);
    expect(ok.lines[0]).toMatch(/^accept /);
    expect(received[0]!.secure).toBe(true);
    const strict = await run([t('ok.eml')], { starttls: true });
    expect(strict.code).toBe(1);
    expect(strict.lines).toHaveLength(1);
    expect(strict.lines[0]).toMatch(new RegExp(`^error ${escapeRe(t('ok.eml'))} \\S`));
  });

  it('prints an error line when the server cannot be reached', async () => {
    const closedPort = await freePort();
    const { code, lines } = await run([t('ok.eml')], { server: `127.0.0.1:${closedPort}` });
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^error ${escapeRe(t('ok.eml'))} .*ECONNREFUSED`));
  });

  it('classifies a 421 or 554 greeting by its code, as the relay sends when saturated or refusing the client', async () => {
    for (const [greeting, outcome] of [
      ['421 4.3.2 Too many connections, try again later', 'tempfail'],
      ['554 5.7.1 Access denied: client host is not allowed to relay', 'reject'],
    ] as const) {
      const fake = await scriptedServer(greeting, () => undefined, true);
      try {
        const { code, lines } = await run([t('ok.eml')], { server: `127.0.0.1:${fake.port}`, expect: outcome });
        expect(lines).toEqual([`${outcome} ${t('ok.eml')} ${greeting}`]);
        expect(code).toBe(0);
      } finally {
        await fake.close();
      }
    }
  });

  it('gives up with an error line when no final reply arrives within --timeout', async () => {
    // Answers the envelope, then never answers the end of DATA.
    const fake = await scriptedServer('220 fake ESMTP', (line) => {
      if (/^EHLO/i.test(line)) return '250-fake\r\n250 8BITMIME';
      if (/^(MAIL|RCPT)/i.test(line)) return '250 OK';
      if (/^DATA/i.test(line)) return '354 go ahead';
      return undefined;
    });
    try {
      const { code, lines } = await run([t('ok.eml')], { server: `127.0.0.1:${fake.port}`, timeoutMs: 300 });
      expect(code).toBe(1);
      expect(lines).toEqual([`error ${t('ok.eml')} timed out after 300 ms without a final reply`]);
    } finally {
      await fake.close();
    }
  });

  it('exits 2 on usage errors, naming the problem on stderr and sending nothing', async () => {
    const missing = t('does-not-exist.eml');
    const r1 = await run([t('ok.eml'), missing]);
    expect(r1.code).toBe(2);
    expect(r1.lines).toEqual([]);
    expect(r1.stderr).toContain(missing);
    expect(r1.stderr).toMatch(/no such file/);
    expect(received).toHaveLength(0);

    const r2 = await run([]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/no FILE or DIR/);

    const r3 = await run([t('ok.eml')], { server: 'not-a-server' });
    expect(r3.code).toBe(2);
    expect(r3.stderr).toMatch(/bad --server "not-a-server"/);

    const r4 = await run([t('empty-dir')]);
    expect(r4.code).toBe(2);
    expect(r4.stderr).toContain('empty-dir');
  });
});

describe('parseServer and readHeaderEnvelope', () => {
  it('parses host:port and [v6]:port and rejects the rest', () => {
    expect(parseServer('127.0.0.1:2525')).toEqual({ host: '127.0.0.1', port: 2525 });
    expect(parseServer('relay.example.test:25')).toEqual({ host: 'relay.example.test', port: 25 });
    expect(parseServer('[::1]:2525')).toEqual({ host: '::1', port: 2525 });
    for (const bad of ['', 'localhost', ':25', 'localhost:0', 'localhost:70000', 'localhost:x', '::1:25', 'a b:25']) {
      expect(() => parseServer(bad), bad).toThrow(UsageError);
    }
  });

  it('reads From/To/Cc/Bcc from folded headers only, deduplicated', async () => {
    const f = t('headers.eml');
    await writeFile(
      f,
      'From: "Doe, Jane" <jane@example.test>\r\nTo: a@example.test,\r\n  B <b@example.test>\r\nCc: A@example.test\r\n' +
        'Bcc: list: c@example.test, d@example.test;\r\nSubject: x\r\n\r\nTo: body@example.test\r\n',
    );
    expect(await readHeaderEnvelope(f)).toEqual({
      from: 'jane@example.test',
      to: ['a@example.test', 'b@example.test', 'c@example.test', 'd@example.test'],
    });
  });
});

describe('writeBigMessage', () => {
  it('writes exactly the requested size with the declared sha256, as a parseable MIME message', async () => {
    for (const bytes of [2_000, 2_001, 2_002, 2_003, 2_004, 2_005, 2_077, 100_000, 1_000_003]) {
      const f = t(`big-${bytes}.eml`);
      const r = await writeBigMessage(f, bytes);
      const content = await readFile(f);
      expect(r.size, String(bytes)).toBe(bytes);
      expect((await stat(f)).size).toBe(bytes);
      expect(r.sha256).toBe(sha256(content));
      expect(/(?<!\r)\n/.test(content.toString('latin1'))).toBe(false);
      const parsed = await simpleParser(content);
      expect(parsed.attachments).toHaveLength(1);
      expect(parsed.attachments[0]!.filename).toBe('random.bin');
    }
    await expect(writeBigMessage(t('tiny.eml'), 100)).rejects.toThrow(RangeError);
  });

  it('is deterministic per seed, and goes through the harness intact', async () => {
    const a = await writeBigMessage(t('seed-a.eml'), 200_000, { to: 'ok@example.test' });
    const b = await writeBigMessage(t('seed-b.eml'), 200_000, { to: 'ok@example.test' });
    const c = await writeBigMessage(t('seed-c.eml'), 200_000, { to: 'ok@example.test', seed: 'other' });
    expect(a.sha256).toBe(b.sha256);
    expect(c.sha256).not.toBe(a.sha256);
    const { code, lines } = await run([t('seed-a.eml')], { expect: 'accept' });
    expect(code).toBe(0);
    expect(lines).toHaveLength(1);
    expect(received[0]!.sha256).toBe(a.sha256);
    expect(received[0]!.mailArgs && received[0]!.mailArgs.SIZE).toBe('200000');
  });
});

describe('raw SMTP helper', () => {
  it('SmtpSession gives exact reply lines, including a refused RCPT', async () => {
    const s = await SmtpSession.connect(port);
    try {
      expect(replyCode(s.greeting)).toBe(220);
      const ehlo = await s.cmd('EHLO raw.test');
      expect(ehlo).toMatch(/^250-/);
      expect(ehlo.split('\n').length).toBeGreaterThan(1);
      expect(lastLine(ehlo)).toMatch(/^250 /);
      expect(await s.cmd('MAIL FROM:<sender@example.test>')).toBe('250 Accepted');
      expect(await s.cmd('RCPT TO:<reject-me@example.test>')).toBe(REJECT_REPLY);
      expect(await s.cmd('RCPT TO:<ok@example.test>')).toBe('250 Accepted');
      const payload = 'Subject: raw\r\n\r\n.starts with a dot\r\nend\r\n';
      expect(await s.data(payload, { dotStuff: true })).toMatch(/^250 2\.0\.0 Ok: queued as T\d+$/);
      expect(received[0]!.sha256).toBe(sha256(payload));
      expect(received[0]!.to).toEqual(['ok@example.test']);
      expect(replyCode((await s.quit()) ?? '')).toBe(221);
    } finally {
      s.close();
    }
  });

  it('smtpDialog returns the greeting and one reply per step', async () => {
    const replies = await smtpDialog(port, [
      'EHLO raw.test',
      'MAIL FROM:<sender@example.test>',
      'RCPT TO:<reject@example.test>',
      'RCPT TO:<ok@example.test>',
      { data: 'Subject: tempfail\r\n\r\nTEMPFAIL\r\n' },
      { send: 'RSET\r\n' },
    ]);
    expect(replies).toHaveLength(7);
    expect(replyCode(replies[0]!)).toBe(220);
    expect(replies[3]).toBe(REJECT_REPLY);
    expect(replies[5]).toBe(TEMPFAIL_REPLY);
    expect(replyCode(replies[6]!)).toBe(250);
  });

  it('fails a wait with a clear error instead of hanging when the server stays silent', async () => {
    const silent = await startSmtpPeer({ greeting: null });
    try {
      await expect(SmtpSession.connect(silent.port, { timeoutMs: 200 })).rejects.toThrow(/no complete reply to greeting/);
    } finally {
      await silent.close();
    }
  });
});

/** A line-scripted server for replies smtp-server will not produce: no reply where `answer` gives none, never one to a final dot; `hangUp` closes right after the greeting. */
async function scriptedServer(greeting: string, answer: (line: string) => string | undefined, hangUp = false): Promise<SmtpPeer> {
  return startSmtpPeer({
    script: {
      greeting: () => ({ reply: greeting, ...(hangUp ? { close: 'end' as const } : {}) }),
      command: (line) => answer(line) ?? null,
      message: () => null,
    },
  });
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** A port nothing listens on: bind one, then release it. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const p = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return p;
}
