// Issue 5 §3: secrets never reach the logs (traffic, failures and trace level included; a test greps for them), and the admin endpoints require the token.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChain, eventually, type Chain } from '../helpers/chain.js';
import { SmtpSession } from '../helpers/raw-smtp.js';
import { makeBatch, attemptOnce } from '../helpers/accounting.js';
import { startTcpGate, type TcpGate } from '../helpers/tcp-gate.js';
import { startSecureSink, type SecureSink } from '../helpers/secure-peers.js';
import { makeTestPki } from '../helpers/tls-certs.js';
import { startUcwiSim, type UcwiSim } from '../../src/engine/server.js';
import { startCasSim, type CasSim } from '../sim/cas/server.js';
import { hashPassword } from '../../src/ingress/auth.js';
import { spawn } from 'node:child_process';
import { startSink, SIM_KEYS, type Sink } from '../helpers/chain.js';
import { spawnRelay, relayEnv, type CliRelay } from '../helpers/cli-relay.js';
import { maskSecrets, maskUrl } from '../../src/util/mask.js';

/** Distinctive values: if any of them shows up in a log line, the grep finds it. */
const S = {
  ucwiAccessKey: 'ucwi-ACCESS-c0ffee5a1e',
  ucwiSecretKey: 'ucwi-SECRET-7f3a9c2e51d04b8e',
  nextHopPass: 'nh-PASS-5e8d1f0a9b7c',
  nextHopWrongPass: 'nh-WRONGPASS-3c4b2a1908',
  adminToken: 'admin-TOKEN-0d9e8f7a6b5c4d3e2f1a',
  adminWrongToken: 'admin-WRONGTOKEN-11223344aabb',
  casToken: 'cas-TOKEN-' + 'q'.repeat(30),
  casOtherToken: 'cas-OTHERTOKEN-' + 'z'.repeat(25),
  smtpUserPass: 'smtp-USERPASS-9a8b7c6d',
  smtpWrongPass: 'smtp-WRONGPASS-1f2e3d4c',
  ucwiUrlPass: 'ucwi-URLPASS-6b5a4c3d2e1f',
};
const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('secrets never reach the logs', () => {
  let dir: string;
  let sim: UcwiSim;
  let gate: TcpGate;
  let sink: SecureSink;
  let cas: CasSim;
  let chain: Chain;
  let wrongHop: Chain;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dlp-secrets-'));
    const pki = makeTestPki(dir);
    const usersFile = join(dir, 'users');
    writeFileSync(usersFile, `alice:${hashPassword(S.smtpUserPass)}\n`);
    sim = await startUcwiSim({ accessKey: S.ucwiAccessKey, secretKey: S.ucwiSecretKey, policiesFile: 'fixtures/detectors-test.yaml' });
    // The gate records what the relay sends to UCWI, so the HMAC signatures it computed can be grepped for too.
    gate = await startTcpGate(sim.port, { capture: true });
    // Our SMTP client sends AUTH only over TLS (it refuses to put credentials in clear), so the next hop offers STARTTLS.
    sink = await startSecureSink({ tls: { keyFile: pki.keyFile, certFile: pki.certFile }, auth: { user: 'relayuser', pass: S.nextHopPass } });
    const nextHop = { port: sink.port, authUser: 'relayuser', starttls: 'required', tls: { caFile: pki.caFile } };
    // CAS answers 401 to our token: the failure path is the one most likely to log a request.
    cas = await startCasSim({ token: S.casOtherToken });
    const common = {
      // Credentials written into the URL itself (issue 10 §3): the client must not need them, nothing may print them.
      ucwi: { url: `http://ucwi-user:${S.ucwiUrlPass}@127.0.0.1:${gate.port}` },
      log: { level: 'trace' },
      smtp: { tls: { certFile: pki.certFile, keyFile: pki.keyFile }, auth: { enabled: true, required: false, usersFile } },
    };
    chain = await startChain({
      sim,
      config: {
        ...common,
        nextHop,
        cas: {
          enabled: true,
          url: cas.url,
          exemptDomains: ['ourcorp.test'],
          outbox: { dir: join(dir, 'cas-outbox'), intervalMs: 100, baseMs: 100 },
          retry: { maxAttempts: 1, baseMs: 10, maxMs: 10, totalMs: 2000 },
        },
        secrets: { ucwiAccessKey: S.ucwiAccessKey, ucwiSecretKey: S.ucwiSecretKey, nextHopPass: S.nextHopPass, adminToken: S.adminToken, casToken: S.casToken },
      },
    });
    wrongHop = await startChain({
      sim,
      config: {
        ...common,
        nextHop,
        secrets: { ucwiAccessKey: S.ucwiAccessKey, ucwiSecretKey: S.ucwiSecretKey, nextHopPass: S.nextHopWrongPass, adminToken: S.adminToken },
      },
    });
  });
  afterAll(async () => {
    await chain?.close();
    await wrongHop?.close();
    await sink?.close();
    await cas?.close();
    await gate?.close();
    await sim?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('after traffic and failures of every kind, no secret, no signature and no encoded credential is in the log', async () => {
    const [clean, block, ucwi401, hopFail] = makeBatch('secrets', ['clean', 'block', 'clean', 'clean']);
    // Success through next-hop AUTH; a block verdict (which queues a CAS push that CAS refuses with 401).
    // The secure sink's own final reply, passed through verbatim.
    expect((await attemptOnce(chain.port, clean!)).reply).toBe('250 2.6.0 2.0.0 Ok: queued');
    expect(sink.messages.at(-1)).toMatchObject({ secure: true, user: 'relayuser' });
    expect((await attemptOnce(chain.port, block!)).reply).toMatch(/^550 5\.7\.1 /);
    expect(sink.auths.some((a) => a.ok)).toBe(true);
    // UCWI answers 401.
    sim.setFaults({ status: 401 });
    expect((await attemptOnce(chain.port, ucwi401!)).reply).toMatch(/^451 4\.7\.1 /);
    sim.resetFaults();
    // The next hop refuses our credentials.
    expect((await attemptOnce(wrongHop.port, hopFail!)).reply).toMatch(/^451 4\.4\.\d /);
    expect(sink.auths.some((a) => !a.ok)).toBe(true);
    // Ingress AUTH, right and wrong password.
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.startTls();
    await s.cmd('EHLO client.example.test');
    expect(await s.cmd(`AUTH PLAIN ${b64(`\0alice\0${S.smtpWrongPass}`)}`)).toMatch(/^535 /);
    expect(await s.cmd(`AUTH PLAIN ${b64(`\0alice\0${S.smtpUserPass}`)}`)).toMatch(/^235 /);
    await s.quit();
    // Admin API with the right and a wrong token; readiness probes UCWI with a signed request.
    const admin = chain.relay.admin!.url;
    expect((await fetch(`${admin}/metrics`, { headers: { authorization: `Bearer ${S.adminToken}` } })).status).toBe(200);
    expect((await fetch(`${admin}/api/v1/quarantine`, { headers: { authorization: `Bearer ${S.adminWrongToken}` } })).status).toBe(401);
    await fetch(`${admin}/readyz`);
    // Wait until CAS has refused at least one push (the pusher runs on its own schedule).
    await eventually(() => cas.requestLog.some((r) => r.status === 401), 10_000);

    // Every HMAC signature the relay computed for UCWI, taken from the wire.
    const wire = Buffer.concat(gate.captured()).toString('latin1');
    const signatures = [...wire.matchAll(/authorization: *SKG [^:\r\n]+:([0-9a-f]{64})/gi)].map((m) => m[1]!);
    expect(signatures.length).toBeGreaterThanOrEqual(3);

    const logs = chain.rawLogs() + wrongHop.rawLogs();
    expect(logs.length).toBeGreaterThan(1000);
    const forbidden: Record<string, string> = {
      ...S,
      // Next-hop AUTH PLAIN / LOGIN encodings, ingress AUTH PLAIN blobs.
      nextHopPlain: b64(`\0relayuser\0${S.nextHopPass}`),
      nextHopWrongPlain: b64(`\0relayuser\0${S.nextHopWrongPass}`),
      nextHopLoginPass: b64(S.nextHopPass),
      smtpPlain: b64(`\0alice\0${S.smtpUserPass}`),
      smtpWrongPlain: b64(`\0alice\0${S.smtpWrongPass}`),
      ...Object.fromEntries(signatures.map((sig, i) => [`signature${i}`, sig])),
    };
    const leaks = Object.entries(forbidden)
      .filter(([, v]) => logs.includes(v))
      .map(([k]) => k);
    expect(leaks).toEqual([]);
  });
});

describe('the admin endpoints require the token', () => {
  let chain: Chain;
  const TOKEN = 'admin-token-for-endpoint-tests-42';
  beforeAll(async () => {
    chain = await startChain({ config: { secrets: { adminToken: TOKEN } } });
  });
  afterAll(async () => {
    await chain.close();
  });

  const get = (path: string, token?: string) =>
    fetch(`${chain.relay.admin!.url}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });

  it.for(['/metrics', '/api/v1/quarantine'])('%s: 401 without a token and with a wrong one, 200 with it', async (path) => {
    const none = await get(path);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer /);
    expect((await get(path, 'wrong-token')).status).toBe(401);
    expect((await get(path, TOKEN.slice(0, -1))).status).toBe(401);
    expect((await get(path, `${TOKEN}x`)).status).toBe(401);
    const ok = await get(path, TOKEN);
    expect(ok.status).toBe(200);
    const body = await ok.text();
    if (path === '/metrics') expect(body).toMatch(/^# HELP /m);
    else expect(JSON.parse(body)).toHaveProperty('items');
  });

  it('/healthz answers 200 without a token', async () => {
    const r = await get('/healthz');
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ok' });
  });

  it('/readyz: 200 when UCWI, next hop and store are fine; 503 naming the next hop when the sink is down', async () => {
    const ok = await get('/readyz');
    const okBody = (await ok.json()) as { ready: boolean; checks: Record<string, { ok: boolean }> };
    expect(ok.status).toBe(200);
    expect(okBody.ready).toBe(true);
    expect(Object.keys(okBody.checks).sort()).toEqual(['nextHop', 'quarantine', 'spool', 'ucwi']);
    await chain.sink.close();
    // Readiness results are cached for a moment; poll (bounded) until the outage shows.
    let status = 0;
    let body: { ready: boolean; checks: Record<string, { ok: boolean; detail: string }> } | null = null;
    for (let i = 0; i < 60 && status !== 503; i++) {
      const r = await get('/readyz');
      status = r.status;
      body = (await r.json()) as typeof body;
      if (status !== 503) await new Promise((res) => setTimeout(res, 100));
    }
    expect(status).toBe(503);
    expect(body!.ready).toBe(false);
    expect(body!.checks['nextHop']!.ok).toBe(false);
    expect(body!.checks['ucwi']!.ok).toBe(true);
    expect(body!.checks['quarantine']!.ok).toBe(true);
  });
});

/** Runs the CLI once (bounded) and returns everything it printed. */
function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

describe('a password inside a URL never appears in CLI output or logs (issue 10 §3)', () => {
  const URL_PASS = 'url-SECRET-a1b2c3d4e5f6';
  let dir: string;
  let sim: UcwiSim;
  let sink: Sink;
  let relay: CliRelay | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dlp-urlsecret-'));
    sim = await startUcwiSim({ ...SIM_KEYS, policiesFile: 'fixtures/detectors-test.yaml' });
    sink = await startSink();
  });
  afterAll(async () => {
    relay?.kill();
    if (relay) await relay.exited;
    await sink?.close();
    await sim?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the start banner and the started log line show the URL with its password masked', async () => {
    const url = sim.url.replace('http://', `http://ucwi-user:${URL_PASS}@`);
    relay = await spawnRelay(relayEnv(dir, sink.port, url));
    // A message through it: the client works without the URL's credentials (it signs its own requests).
    const { reply } = await attemptOnce(relay.port, makeBatch('urlpass', ['clean'])[0]!);
    expect(reply).toMatch(/^250 /);
    expect(relay.stderr()).toContain(`DLP:        ${sim.url.replace('http://', 'http://ucwi-user:********@')}`);
    const started = relay.logs().find((l) => l['event'] === 'started');
    expect(started?.['ucwi']).toBe(sim.url.replace('http://', 'http://ucwi-user:********@'));
    expect(relay.stderr() + relay.stdout()).not.toContain(URL_PASS);
  });

  it('check-config masks passwords in every URL, and a config error quoting one masks it too', async () => {
    const env = {
      DLP_RELAY_UCWI_URL: `https://ucwi-user:${URL_PASS}@ucwi.example:5443`,
      DLP_RELAY_UCWI_ACCESS_KEY: SIM_KEYS.accessKey,
      DLP_RELAY_UCWI_SECRET_KEY: SIM_KEYS.secretKey,
      DLP_RELAY_QUARANTINE_URL: `postgres://dbuser:${URL_PASS}@db.example/dlp`,
      DLP_RELAY_CAS_URL: `https://${URL_PASS}@cas.example`,
    };
    const ok = await runCli(['check-config'], env);
    expect(ok.code).toBe(0);
    // The JSON goes to stdout; the line naming the config file goes to stderr (both are captured in `out`).
    const cfg = JSON.parse(ok.out.slice(ok.out.indexOf('{'))) as { ucwi: { url: string }; quarantine: { url: string }; cas: { url: string } };
    expect(cfg.ucwi.url).toBe('https://ucwi-user:********@ucwi.example:5443');
    expect(cfg.quarantine.url).toBe('postgres://dbuser:********@db.example/dlp');
    expect(cfg.cas.url).toBe('https://********@cas.example');
    expect(ok.out).not.toContain(URL_PASS);
    const bad = await runCli(['check-config'], { ...env, DLP_RELAY_LISTEN: `http://u:${URL_PASS}@nowhere` });
    expect(bad.code).toBe(1); // a config error exits 1 (usage errors 2), issue 11
    expect(bad.out).toMatch(/DLP_RELAY_LISTEN: expected host:port/);
    expect(bad.out).not.toContain(URL_PASS);
  });

  it('maskSecrets: URL userinfo, bearer tokens and key=value secrets in free text', () => {
    expect(maskUrl('https://user:pw@host:1/p?q=1')).toBe('https://user:********@host:1/p?q=1');
    expect(maskUrl('https://tok@host')).toBe('https://********@host');
    expect(maskUrl('https://host/path')).toBe('https://host/path');
    expect(maskSecrets('connect postgres://a:b@c/d failed; Authorization: Bearer abc.def; ?token=xyz&x=1')).toBe(
      'connect postgres://a:********@c/d failed; Authorization: Bearer ********; ?token=********&x=1',
    );
  });
});
