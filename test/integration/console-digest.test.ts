// Reviewer digests through the real relay and sink with a fake clock: one mail per period listing new held messages with console links; no repeat after a restart, no skip after downtime or a failed send.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChain, eventually, message, sendMessage, type Chain, type SinkMessage } from '../helpers/chain.js';
import { ReviewerDigest, type DigestSettings } from '../../src/console/reviewer-digest.js';
import { FsQuarantineStore } from '../../src/quarantine/fs-store.js';
import { PgQuarantineStore } from '../../src/quarantine/pg-store.js';
import type { QuarantineStore } from '../../src/quarantine/types.js';
import { freshSchema, dropSchemas, schemaUrl } from '../helpers/pg.js';
import { FileUserStore } from '../../src/console/users.js';

const HOUR = 3_600_000;
const REVIEWERS = ['rita@corp.example', 'rob@corp.example'];

// The digest's state lives in the store's audit: run against both backends.
describe.each(['fs', 'postgres'] as const)('reviewer digest (%s store)', (backend) => {
  let chain: Chain;
  let dir: string;
  let pgUrl: string | null = null;
  let schema: string | null = null;
  const opened: QuarantineStore[] = [];
  // The digest's clock runs `offset` ahead of the real one; tests move it forward by hours instead of waiting.
  let offset = 0;
  const clock = (): Date => new Date(Date.now() + offset);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dlp-digest-'));
    await new FileUserStore(join(dir, 'users.json')).add('rita', 'reviewer', 'correct horse battery 1');
    if (backend === 'postgres') {
      schema = await freshSchema('digest_q');
      pgUrl = schemaUrl(schema);
    }
    chain = await startChain({
      config: {
        ...(pgUrl ? { quarantine: { url: pgUrl } } : {}),
        console: {
          enabled: true,
          usersFile: join(dir, 'users.json'),
          digest: { enabled: true, interval: 'hourly', recipients: REVIEWERS, from: 'dlp-digest@corp.example' },
        },
      },
      start: { clock },
    });
  }, 60_000);

  afterAll(async () => {
    for (const st of opened) await st.close();
    await chain?.close();
    if (schema) await dropSchemas([schema]);
    rmSync(dir, { recursive: true, force: true });
  });

  const digests = (): SinkMessage[] => chain.sink.messages.filter((m) => /^X-DLP-Digest:/m.test(m.data?.toString() ?? ''));

  async function hold(subject: string): Promise<string> {
    const r = await sendMessage(chain.port, message('DLPTEST-ACTION-6 payload').replace('Subject: test', `Subject: ${subject}`), {
      from: 'alice@corp.example',
      to: ['bob@partner.example'],
    });
    expect(r.data).toMatch(/^250 /);
    return /ref ([0-9a-f-]{36})/.exec(r.data)![1]!;
  }

  /** A fresh scheduler on a freshly opened store over the same directory: what a restarted relay would build. */
  function restarted(): ReviewerDigest {
    const settings: DigestSettings = {
      interval: 'hourly',
      dailyHourUtc: 7,
      recipients: REVIEWERS,
      from: 'dlp-digest@corp.example',
      publicUrl: chain.relay.admin!.url,
      basePath: '/console',
      hostname: 'relay.test',
      maxItems: 200,
    };
    const store = pgUrl ? new PgQuarantineStore(pgUrl) : new FsQuarantineStore(chain.dirs.quarantine);
    opened.push(store);
    return new ReviewerDigest({ store, deliver: chain.relay.deliverer.deliver.bind(chain.relay.deliverer), settings, now: clock });
  }

  it('starts without mailing, then sends one digest per period with links to the console pages', async () => {
    const digest = chain.relay.digest!;
    expect(digest).not.toBeNull();
    // The start tick records the mark; messages held before it are not "new".
    await eventually(() => chain.logs.some((l) => l['msg'] === 'reviewer digest started'), 5000);
    const a = await hold('board pack A');
    const b = await hold('board pack B');
    expect(await digest.tick()).toEqual({ status: 'not-due' });
    expect(digests()).toHaveLength(0);

    offset = HOUR + 120_000;
    const run = await digest.tick();
    expect(run).toMatchObject({ status: 'sent', count: 2, accepted: REVIEWERS });
    expect(digests()).toHaveLength(1);
    const mail = digests()[0]!;
    expect(mail.from).toBe('dlp-digest@corp.example');
    expect(mail.to.map((t) => t.address).sort()).toEqual(REVIEWERS);
    const text = mail.data!.toString();
    expect(text).toMatch(/^Subject: \[dlp-relay\] 2 new held messages \(hourly digest\)$/m);
    expect(text).toContain('board pack A');
    expect(text).toContain('policy: Test trigger action 6');
    expect(text).not.toContain('payload'); // metadata only, never content
    const links = [...text.matchAll(/(http:\/\/127\.0\.0\.1:\d+\/console\/messages\/[0-9a-f-]{36})/g)].map((m) => m[1]!);
    expect(links.map((l) => l.slice(-36)).sort()).toEqual([a, b].sort());

    // The link opens that message's console page for a signed-in reviewer.
    const login = await fetch(`${chain.relay.admin!.url}/console/login`);
    const loginCookie = login.headers.getSetCookie()[0]!.split(';')[0]!;
    const token = /name="_login" value="([^"]+)"/.exec(await login.text())![1]!;
    const signIn = await fetch(`${chain.relay.admin!.url}/console/login`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: loginCookie },
      body: new URLSearchParams({ _login: token, user: 'rita', password: 'correct horse battery 1' }).toString(),
    });
    expect(signIn.status).toBe(303);
    const session = signIn.headers
      .getSetCookie()
      .find((c) => c.includes('session'))!
      .split(';')[0]!;
    const pageRes = await fetch(
      links.find((l) => l.endsWith(a))!,
      { headers: { cookie: session } },
    );
    expect(pageRes.status).toBe(200);
    expect(await pageRes.text()).toContain('board pack A');

    // Same period again: nothing new is sent.
    expect(await digest.tick()).toEqual({ status: 'not-due' });
    expect(digests()).toHaveLength(1);
    const audit = await chain.relay.quarantine.listAudit({ action: 'digest' });
    expect(audit.items.map((x) => x.result)).toEqual(['ok', 'started']);
  });

  it('a restart neither repeats the last digest nor skips what came after it, even across several periods', async () => {
    const c = await hold('after the digest C');
    // Restarted within the same period: not due, no mail.
    expect(await restarted().tick()).toEqual({ status: 'not-due' });
    expect(digests()).toHaveLength(1);
    // Down for three periods: one digest covers them, with C only (A and B were in the last one).
    offset += 3 * HOUR;
    const run = await restarted().tick();
    expect(run).toMatchObject({ status: 'sent', count: 1 });
    expect(digests()).toHaveLength(2);
    const text = digests()[1]!.data!.toString();
    expect(text).toContain(`/console/messages/${c}`);
    expect(text).not.toContain('board pack A');
    // The relay's own scheduler reads the same store: in its next tick the new state holds, so no repeat either.
    const again = await restarted().tick();
    expect(again).toEqual({ status: 'not-due' });
  });

  it('a period without new messages sends nothing; a failed send is retried later with the same messages', async () => {
    offset += HOUR;
    expect(await restarted().tick()).toMatchObject({ status: 'empty' });
    expect(digests()).toHaveLength(2);

    const d = await hold('while the hub is down D');
    chain.sink.behaviour.rcpt = (addr) => (REVIEWERS.includes(addr) ? [451, '4.3.0 mailbox busy'] : null);
    offset += HOUR;
    const digest = restarted();
    expect(await digest.tick()).toMatchObject({ status: 'failed' });
    expect(digests()).toHaveLength(2);
    chain.sink.behaviour.rcpt = undefined;
    // Retries wait retryMs (5 minutes) on the digest's clock, not on the wall clock.
    expect(await digest.tick()).toEqual({ status: 'not-due' });
    offset += 6 * 60_000;
    expect(await digest.tick()).toMatchObject({ status: 'sent', count: 1 });
    expect(digests()).toHaveLength(3);
    expect(digests()[2]!.data!.toString()).toContain(`/console/messages/${d}`);
  });
});
