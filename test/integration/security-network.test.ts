// Issue 5 §3, the network side: no open relay from a real outside address, STARTTLS on ingress, SMTP AUTH after TLS only, and verified TLS to the next hop and to UCWI.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChain, eventually, type Chain } from '../helpers/chain.js';
import { SmtpSession, replyCode } from '../helpers/raw-smtp.js';
import { makeBatch, attemptOnce } from '../helpers/accounting.js';
import { makeTestPki, type TestPki } from '../helpers/tls-certs.js';
import { startSecureSink, startHttpsFront } from '../helpers/secure-peers.js';
import { createNetNs, netnsUnavailable, writeSmtpClientScript, type NetNs } from '../helpers/netns.js';
import { hashPassword } from '../../src/ingress/auth.js';

const REF = '\\(ref [0-9a-f-]{36}\\)';
const RELAYED = new RegExp(`^250 2\\.6\\.0 Ok: queued as SINK\\d+$`);
/** What test/helpers/secure-peers.ts's sink answers to a final dot; the relay passes it through unchanged. */
const SECURE_SINK_QUEUED = '250 2.6.0 2.0.0 Ok: queued';

let dir: string;
let pki: TestPki;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dlp-sec-net-'));
  pki = makeTestPki(dir);
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** EHLO keywords without the "250-" prefixes. */
function keywords(ehlo: string): string[] {
  return ehlo.split('\n').map((l) => l.slice(4));
}

/** MAIL, RCPT and DATA on an already greeted (and possibly upgraded/authenticated) session. */
async function transaction(s: SmtpSession, body: string): Promise<string> {
  const mail = await s.cmd('MAIL FROM:<alice@example.test>');
  if (replyCode(mail) !== 250) return mail;
  const rcpt = await s.cmd('RCPT TO:<bob@example.test>');
  if (replyCode(rcpt) !== 250) return rcpt;
  return s.data(body, { dotStuff: true });
}

describe('no open relay: a client outside the allowed networks (network namespace)', () => {
  const unavailable = netnsUnavailable();
  let ns: NetNs | undefined;
  let setupError: string | null = null;
  let script = '';
  beforeAll(() => {
    if (unavailable) return;
    try {
      ns = createNetNs('r');
      script = writeSmtpClientScript(dir);
    } catch (e) {
      setupError = (e as Error).message;
    }
  });
  afterAll(() => {
    // Always removed, whatever the tests did.
    ns?.destroy();
  });

  const skipReason = (): string | null => unavailable ?? (setupError ? `could not create the namespace: ${setupError}` : null);

  it('default allowedClients: the outside address gets 554 5.7.1 at greeting and nothing is relayed', async (ctx) => {
    const why = skipReason();
    if (why) {
      console.warn(`SKIPPED network-namespace open-relay test: ${why}`);
      return ctx.skip();
    }
    const chain = await startChain({ config: { listen: { host: ns!.hostAddr, port: 0 } } });
    try {
      const out = JSON.parse(await ns!.runNode(script, [ns!.hostAddr, String(chain.port)])) as { greeting: string; replies: string[] };
      expect(out.greeting).toBe('554 5.7.1 Access denied: client host is not allowed to relay');
      expect(out.replies).toEqual([]);
      expect(chain.sink.messages).toHaveLength(0);
      expect(chain.sim.stats().requests).toBe(0);
    } finally {
      await chain.close();
    }
  });

  it("with the namespace's network in allowedClients the same client is served", async (ctx) => {
    const why = skipReason();
    if (why) {
      console.warn(`SKIPPED network-namespace open-relay test: ${why}`);
      return ctx.skip();
    }
    const chain = await startChain({ config: { listen: { host: ns!.hostAddr, port: 0 }, smtp: { allowedClients: ['127.0.0.0/8', ns!.cidr] } } });
    try {
      const out = JSON.parse(await ns!.runNode(script, [ns!.hostAddr, String(chain.port)])) as { greeting: string; replies: string[] };
      expect(out.greeting).toMatch(/^220 /);
      expect(out.replies.at(-1)).toMatch(RELAYED);
      expect(chain.sink.messages).toHaveLength(1);
      expect(chain.summaries().at(-1)).toMatchObject({ client: ns!.clientAddr });
    } finally {
      await chain.close();
    }
  });
});

describe('STARTTLS on ingress', () => {
  it('advertised with a certificate; used, a message goes through', async () => {
    const chain = await startChain({ config: { smtp: { tls: { certFile: pki.certFile, keyFile: pki.keyFile } } } });
    try {
      const s = await SmtpSession.connect(chain.port);
      expect(keywords(await s.cmd('EHLO client.example.test'))).toContain('STARTTLS');
      expect(await s.startTls({ ca: [readFileSync(pki.caFile)], rejectUnauthorized: true, servername: 'localhost' })).toMatch(/^220 /);
      expect(keywords(await s.cmd('EHLO client.example.test'))).not.toContain('STARTTLS');
      const [m] = makeBatch('tls', ['clean']);
      expect(await transaction(s, m!.body)).toMatch(RELAYED);
      await s.quit();
    } finally {
      await chain.close();
    }
  });

  it('smtp.tls.require: MAIL FROM before STARTTLS gets 530 5.7.0; after STARTTLS the message goes through', async () => {
    const chain = await startChain({ config: { smtp: { tls: { certFile: pki.certFile, keyFile: pki.keyFile, require: true } } } });
    try {
      const s = await SmtpSession.connect(chain.port);
      await s.cmd('EHLO client.example.test');
      expect(await s.cmd('MAIL FROM:<alice@example.test>')).toBe('530 5.7.0 Must issue a STARTTLS command first');
      expect(await s.startTls()).toMatch(/^220 /);
      await s.cmd('EHLO client.example.test');
      const [m] = makeBatch('tlsreq', ['clean']);
      expect(await transaction(s, m!.body)).toMatch(RELAYED);
      await s.quit();
      expect(chain.sink.messages).toHaveLength(1);
    } finally {
      await chain.close();
    }
  });
});

describe('SMTP AUTH (submission): PLAIN and LOGIN, only after TLS', () => {
  let chain: Chain;
  beforeAll(async () => {
    const usersFile = join(dir, 'users');
    writeFileSync(usersFile, `alice:${hashPassword('s3cret')}\n`);
    chain = await startChain({
      config: { smtp: { tls: { certFile: pki.certFile, keyFile: pki.keyFile }, auth: { enabled: true, required: true, usersFile } } },
    });
  });
  afterAll(async () => {
    await chain.close();
  });
  const b64 = (s: string) => Buffer.from(s).toString('base64');

  it('not advertised or accepted in clear; advertised after STARTTLS; MAIL without AUTH gets 530 5.7.0', async () => {
    const s = await SmtpSession.connect(chain.port);
    try {
      const clear = keywords(await s.cmd('EHLO client.example.test'));
      expect(clear.some((k) => k.startsWith('AUTH'))).toBe(false);
      // Even when a client tries it in clear, no credentials are checked (nothing to sniff is accepted).
      const inClear = await s.cmd(`AUTH PLAIN ${b64('\0alice\0s3cret')}`);
      expect(replyCode(inClear)).toBeGreaterThanOrEqual(500);
      expect(await s.cmd('MAIL FROM:<alice@example.test>')).toBe('530 5.7.0 Authentication required');
      await s.startTls();
      const secure = keywords(await s.cmd('EHLO client.example.test'));
      expect(secure).toContain('AUTH PLAIN LOGIN');
      expect(await s.cmd('MAIL FROM:<alice@example.test>')).toBe('530 5.7.0 Authentication required');
    } finally {
      s.close();
    }
  });

  it('wrong password → 535 5.7.8; AUTH PLAIN with the right one → 235 and the message goes through', async () => {
    const s = await SmtpSession.connect(chain.port);
    try {
      await s.cmd('EHLO client.example.test');
      await s.startTls();
      await s.cmd('EHLO client.example.test');
      expect(await s.cmd(`AUTH PLAIN ${b64('\0alice\0wrong')}`)).toBe('535 5.7.8 Authentication credentials invalid');
      expect(await s.cmd(`AUTH PLAIN ${b64('\0mallory\0s3cret')}`)).toBe('535 5.7.8 Authentication credentials invalid');
      expect(await s.cmd(`AUTH PLAIN ${b64('\0alice\0s3cret')}`)).toMatch(/^235 /);
      const [m] = makeBatch('authplain', ['clean']);
      expect(await transaction(s, m!.body)).toMatch(RELAYED);
      await s.quit();
    } finally {
      s.close();
    }
  });

  it('AUTH LOGIN with the right password → 235 and the message goes through', async () => {
    const s = await SmtpSession.connect(chain.port);
    try {
      await s.cmd('EHLO client.example.test');
      await s.startTls();
      await s.cmd('EHLO client.example.test');
      expect(await s.cmd('AUTH LOGIN')).toBe(`334 ${b64('Username:')}`);
      expect(await s.cmd(b64('alice'))).toBe(`334 ${b64('Password:')}`);
      expect(await s.cmd(b64('wrong'))).toBe('535 5.7.8 Authentication credentials invalid');
      expect(await s.cmd('AUTH LOGIN')).toMatch(/^334 /);
      await s.cmd(b64('alice'));
      expect(await s.cmd(b64('s3cret'))).toMatch(/^235 /);
      const [m] = makeBatch('authlogin', ['clean']);
      expect(await transaction(s, m!.body)).toMatch(RELAYED);
      await s.quit();
    } finally {
      s.close();
    }
  });
});

describe('TLS to the next hop, verified', () => {
  it('self-signed next hop without its CA → 451 4.4.1, nothing delivered; with nextHop.tls.caFile → delivered over TLS', async () => {
    const sink = await startSecureSink({ tls: { keyFile: pki.keyFile, certFile: pki.certFile } });
    const [m1, m2] = makeBatch('hoptls', ['clean', 'clean']);
    try {
      const noCa = await startChain({ config: { nextHop: { port: sink.port, starttls: 'required', tls: { rejectUnauthorized: true } } } });
      try {
        const a = await attemptOnce(noCa.port, m1!);
        // Lockstep: the next hop is opened at MAIL FROM, so the failed TLS check answers there, with the session id as ref.
        const ref = /^451 4\.4\.1 Next hop unavailable, try again later \(ref ([0-9a-f]{10})\)$/.exec(a.reply ?? '');
        expect(ref, String(a.reply)).not.toBeNull();
        expect(sink.messages).toHaveLength(0);
        expect(noCa.logs.find((l) => l['cid'] === ref![1] && l['command'] === 'MAIL FROM')).toMatchObject({ level: 40, phase: 'tls' });
        expect(noCa.summaries()).toHaveLength(0);
      } finally {
        await noCa.close();
      }
      const withCa = await startChain({
        config: { nextHop: { port: sink.port, starttls: 'required', tls: { rejectUnauthorized: true, caFile: pki.caFile } } },
      });
      try {
        const a = await attemptOnce(withCa.port, m2!);
        // The secure sink's own final reply, verbatim (smtp-server puts its 2.6.0 before the sink's "2.0.0 Ok: queued").
        expect(a.reply).toBe(SECURE_SINK_QUEUED);
        expect(sink.messages).toHaveLength(1);
        expect(sink.messages[0]!.secure).toBe(true);
      } finally {
        await withCa.close();
      }
    } finally {
      await sink.close();
    }
  });
});

describe('TLS to UCWI, verified', () => {
  it('HTTPS UCWI with a self-signed certificate: without the CA → 451 4.7.1 (unreachable); with ucwi.tls.caFile → verdicts work', async () => {
    const probe = await startChain();
    const front = await startHttpsFront(probe.sim.port, { keyFile: pki.keyFile, certFile: pki.certFile });
    const [clean1, clean2, block] = makeBatch('ucwitls', ['clean', 'clean', 'block']);
    try {
      const noCa = await startChain({ sim: probe.sim, config: { ucwi: { url: front.url } } });
      try {
        const a = await attemptOnce(noCa.port, clean1!);
        expect(a.reply).toMatch(new RegExp(`^451 4\\.7\\.1 Content inspection unavailable, try again later ${REF}$`));
        expect(noCa.summaries().at(-1)).toMatchObject({ errorClass: 'unreachable' });
        expect(noCa.sink.messages).toHaveLength(0);
      } finally {
        await noCa.close();
      }
      const before = probe.sim.stats().requests;
      const withCa = await startChain({ sim: probe.sim, config: { ucwi: { url: front.url, tls: { caFile: pki.caFile } } } });
      try {
        expect((await attemptOnce(withCa.port, clean2!)).reply).toMatch(RELAYED);
        expect((await attemptOnce(withCa.port, block!)).reply).toMatch(/^550 5\.7\.1 /);
        // Both verdicts came from the simulator behind the HTTPS front.
        await eventually(() => probe.sim.stats().requests === before + 2);
      } finally {
        await withCa.close();
      }
    } finally {
      await front.close();
      await probe.close();
    }
  });
});
