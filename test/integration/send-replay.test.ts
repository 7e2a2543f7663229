// Policy replay: `dlp-relay send` over fixtures/ with a manifest (and X-DLP-Expect headers) against a running relay, with the expected-vs-actual table; quarantine is its own outcome.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runSend, type SendOptions } from '../../src/cli/send.js';
import { message, startChain, type Chain } from '../helpers/chain.js';

let chain: Chain;
const dir = mkdtempSync(join(tmpdir(), 'replay-'));
beforeAll(async () => {
  chain = await startChain();
});
afterAll(async () => {
  await chain.close();
  rmSync(dir, { recursive: true, force: true });
});

async function replay(paths: string[], extra: Partial<SendOptions> = {}): Promise<{ code: number; out: string; err: string }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (c: Buffer) => (o += c.toString()));
  err.on('data', (c: Buffer) => (e += c.toString()));
  const code = await runSend({ server: `127.0.0.1:${chain.port}`, to: [], timeoutMs: 20_000, starttls: false, insecure: false, paths, ...extra }, out, err);
  return { code, out: o, err: e };
}

describe('dlp-relay send as a policy replay', () => {
  it('replays fixtures/ against its manifest: every outcome as expected, quarantine on its own, refs shown', async () => {
    const r = await replay(['fixtures'], { manifest: 'fixtures/expectations.yaml' });
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const table = r.out.slice(r.out.indexOf('RESULT'));
    expect(table).toMatch(/^RESULT\s+EXPECTED\s+ACTUAL\s+REF\s+FILE\n/);
    expect(table).toMatch(/\nok\s+quarantine\s+quarantine\s+[0-9a-f-]{36}\s+fixtures\/quoted-printable\.eml\n/);
    expect(table).toMatch(/\nok\s+reject\s+reject\s+[0-9a-f-]{36}\s+fixtures\/card-in-body\.eml\n/);
    // A relayed message's reply is the next hop's own: no ref in it.
    expect(table).toMatch(/\nok\s+accept\s+accept\s+-\s+fixtures\/clean\.eml\n/);
    expect(table).toContain('summary: 7 files, 7 with an expectation, 7 as expected, 0 mismatched');
    expect(r.out.split('\n')[0]).toMatch(/^(accept|reject|quarantine) fixtures\//);
  }, 60_000);

  it('reads X-DLP-Expect from a fixture, reports a mismatch in the table and exits 1', async () => {
    writeFileSync(join(dir, 'a-held.eml'), message('trigger DLPTEST-ACTION-6', 'X-DLP-Expect: quarantine\r\n'));
    writeFileSync(join(dir, 'b-wrong.eml'), message('trigger DLPTEST-ACTION-6', 'X-DLP-Expect: accept\r\n'));
    writeFileSync(join(dir, 'c-none.eml'), message('nothing'));
    const r = await replay([dir]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/\nquarantine \S+b-wrong\.eml 250 2\.0\.0 Ok: message held for review \(ref [0-9a-f-]{36}\) \(expected accept\)\n/);
    expect(r.out).toMatch(/\nok\s+quarantine\s+quarantine\s+[0-9a-f-]{36}\s+\S+a-held\.eml\n/);
    expect(r.out).toMatch(/\nMISMATCH\s+accept\s+quarantine\s+[0-9a-f-]{36}\s+\S+b-wrong\.eml\n/);
    expect(r.out).toMatch(/\n-\s+-\s+accept\s+-\s+\S+c-none\.eml\n/);
    expect(r.out).toContain('summary: 3 files, 2 with an expectation, 1 as expected, 1 mismatched');
  }, 60_000);

  it('refuses a manifest with an unknown outcome before sending anything', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'clean.eml: delivered\n');
    const before = chain.sink.messages.length;
    const r = await replay(['fixtures/clean.eml'], { manifest: bad });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/expects "delivered"; use accept, reject, tempfail, quarantine/);
    expect(chain.sink.messages.length).toBe(before);
  });
});
