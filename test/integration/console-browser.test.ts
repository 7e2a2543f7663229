// The quarantine console in real headless Chromium against a real relay, sink and store: sign-in, filters, message page, release (delivered once), bulk delete, roles, CSRF, lockout, hostile HTML.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { startChain, eventually, type Chain } from '../helpers/chain.js';
import { launchChromium, SCREENSHOT_DIR } from '../helpers/browser.js';
import { FileUserStore } from '../../src/console/users.js';
import type { NewQuarantineRecord } from '../../src/quarantine/types.js';

const TOKEN = 'console-test-token-0123456789';
const PW = { rita: 'reviewer-password-1', vic: 'viewer-password-22', ada: 'admin-password-333' };

function eml(subject: string, body: string, contentType = 'text/plain; charset=utf-8'): Buffer {
  return Buffer.from(
    `From: alice@corp.example\r\nTo: bob@partner.example\r\nSubject: ${subject}\r\nMIME-Version: 1.0\r\nContent-Type: ${contentType}\r\n\r\n${body}\r\n`,
  );
}

async function hold(chain: Chain, o: { from: string; to: string[]; subject: string; body: Buffer; policy?: string; actionCode?: number }): Promise<string> {
  const id = randomUUID();
  const rec: NewQuarantineRecord = {
    id,
    queryId: id,
    receivedAt: new Date().toISOString(),
    envelope: { from: o.from, to: o.to.map((address) => ({ address })), smtpUtf8: false },
    clientAddress: '192.0.2.10',
    heloName: 'mta1.corp.example',
    subject: o.subject,
    messageId: null,
    actionCode: o.actionCode ?? 6,
    reason: `dlp:${o.actionCode ?? 6}`,
    policies: [{ name: o.policy ?? 'PCI-DSS', severity: 3, actionSettingName: 'Quarantine', numberOfMatches: 2 }],
    instance: 'test:1',
  };
  await chain.relay.quarantine.put(rec, () => Readable.from([o.body]));
  return id;
}

describe('quarantine console in Chromium', () => {
  let chain: Chain;
  let browser: Browser;
  let base: string;
  let usersDir: string;
  // A server that stands for "the Internet": a hostile message's remote loads would land here.
  let tracker: Server;
  const trackerHits: string[] = [];
  let trackerUrl: string;
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    usersDir = mkdtempSync(join(tmpdir(), 'dlp-console-users-'));
    const users = new FileUserStore(join(usersDir, 'users.json'));
    await users.add('rita', 'reviewer', PW.rita);
    await users.add('vic', 'viewer', PW.vic);
    await users.add('ada', 'admin', PW.ada);
    tracker = createServer((req, res) => {
      trackerHits.push(req.url ?? '');
      res.end('x');
    });
    await new Promise<void>((r) => tracker.listen(0, '127.0.0.1', r));
    trackerUrl = `http://127.0.0.1:${(tracker.address() as AddressInfo).port}`;
    chain = await startChain({
      config: { console: { enabled: true, usersFile: join(usersDir, 'users.json'), maxFailures: 3 }, secrets: { adminToken: TOKEN } },
    });
    base = `${chain.relay.admin!.url}/console`;
    ids.invoice = await hold(chain, {
      from: 'alice@corp.example',
      to: ['bob@partner.example', 'carol@partner.example'],
      subject: 'Q3 invoice cards',
      body: eml('Q3 invoice cards', 'Card 4111 1111 1111 1111'),
    });
    ids.hr1 = await hold(chain, { from: 'hr@corp.example', to: ['x@partner.example'], subject: 'salaries 1', body: eml('salaries 1', 'secret'), policy: 'HR' });
    ids.hr2 = await hold(chain, { from: 'hr@corp.example', to: ['y@partner.example'], subject: 'salaries 2', body: eml('salaries 2', 'secret'), policy: 'HR' });
    ids.hostile = await hold(chain, {
      from: 'mallory@evil.example',
      to: ['bob@partner.example'],
      subject: 'look <script>alert(1)</script>',
      policy: 'Phishing',
      actionCode: 4,
      body: eml(
        'hostile',
        `<html><head><style>@import url(${trackerUrl}/css);</style><script>fetch('${trackerUrl}/script');document.title='pwned'</script></head>` +
          `<body><p>Hello <b>friend</b></p><img src="${trackerUrl}/pixel.png"><img src=x onerror="fetch('${trackerUrl}/onerror')">` +
          `<iframe src="${trackerUrl}/frame"></iframe><a href="javascript:fetch('${trackerUrl}/link')">click</a>` +
          // Loads that need no script: a refresh, a stylesheet, a background, a srcset, a form, a plain link out, a base.
          `<meta http-equiv="refresh" content="0;url=${trackerUrl}/refresh"><link rel="stylesheet" href="${trackerUrl}/link.css">` +
          `<div style="background:url(${trackerUrl}/bg.png)">styled</div><img srcset="${trackerUrl}/srcset.png 2x" alt="s">` +
          `<form action="${trackerUrl}/form"><button id="go">go</button></form><a id="out" href="${trackerUrl}/clicked">out</a>` +
          `<img id="inline" alt="dot" src="data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="></body></html>`,
        'text/html; charset=utf-8',
      ),
    });
    browser = await launchChromium();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await chain?.close();
    await new Promise((r) => tracker?.close(r));
    rmSync(usersDir, { recursive: true, force: true });
  });

  async function signIn(user: keyof typeof PW, password: string = PW[user]): Promise<{ ctx: BrowserContext; page: Page }> {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1, javaScriptEnabled: true });
    ctx.setDefaultTimeout(10_000);
    const page = await ctx.newPage();
    await page.goto(`${base}/messages`);
    expect(page.url()).toBe(`${base}/login`);
    await page.fill('input[name=user]', user);
    await page.fill('input[name=password]', password);
    await page.click('button[type=submit]');
    return { ctx, page };
  }

  it('signs in with a session cookie that is HttpOnly and SameSite=Strict, lists and filters', async () => {
    const { ctx, page } = await signIn('rita');
    expect(page.url()).toBe(`${base}/messages`);
    const cookies = await ctx.cookies();
    const session = cookies.find((c) => c.name === 'dlp_console_session');
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/console' });
    expect(await page.locator('#messages tbody tr').count()).toBe(4);
    await page.screenshot({ path: join(SCREENSHOT_DIR, 'console-list.png'), fullPage: true });

    await page.fill('input[name=sender]', 'hr@corp.example');
    await page.click('fieldset button[type=submit]:has-text("Apply")');
    expect(page.url()).toContain('sender=hr%40corp.example');
    const subjects = await page.locator('#messages tbody tr td:nth-child(5)').allInnerTexts();
    expect(subjects.sort()).toEqual(['salaries 1', 'salaries 2']);

    await page.goto(`${base}/messages?policy=PCI-DSS&actionCode=6`);
    expect(await page.locator('#messages tbody tr td:nth-child(5)').allInnerTexts()).toEqual(['Q3 invoice cards']);
    await ctx.close();
  });

  it('opens a message and releases it as the signed-in reviewer: delivered once at the sink, audited with her name', async () => {
    const { ctx, page } = await signIn('rita');
    await page.click('a:has-text("Q3 invoice cards")');
    expect(page.url()).toBe(`${base}/messages/${ids.invoice}`);
    expect(await page.textContent('#body')).toContain('Card 4111 1111 1111 1111');
    expect(await page.textContent('#policies')).toContain('PCI-DSS');
    expect(await page.textContent('#envelope')).toContain('carol@partner.example');
    await page.screenshot({ path: join(SCREENSHOT_DIR, 'console-message.png'), fullPage: true });

    await page.click('#release-form button[type=submit]');
    expect(await page.textContent('#summary')).toContain('1 of 1 done');
    await eventually(() => chain.sink.messages.length >= 1, 5000);
    expect(chain.sink.messages).toHaveLength(1);
    expect(chain.sink.messages[0]!.to.map((t) => t.address).sort()).toEqual(['bob@partner.example', 'carol@partner.example']);
    // A second click (a reload of the POST, a double submit) delivers nothing more.
    await page.goBack();
    await page.reload();
    expect(await page.locator('#release-form').count()).toBe(0);
    expect(chain.sink.messages).toHaveLength(1);

    const audit = await chain.relay.quarantine.listAudit({ target: ids.invoice!, action: 'release' });
    expect(audit.items.map((a) => [a.actor, a.result])).toEqual([['console:rita', 'ok']]);
    expect(audit.items[0]!.source).toBe('127.0.0.1');
    await ctx.close();
  });

  it('bulk-deletes a selection, each message audited', async () => {
    const { ctx, page } = await signIn('rita');
    await page.check(`input[name=id][value="${ids.hr1}"]`);
    await page.check(`input[name=id][value="${ids.hr2}"]`);
    await page.click('button[value=delete]');
    expect(await page.textContent('#summary')).toContain('2 of 2 done');
    expect(await chain.relay.quarantine.get(ids.hr1!)).toBeNull();
    expect(await chain.relay.quarantine.get(ids.hr2!)).toBeNull();
    for (const id of [ids.hr1!, ids.hr2!]) {
      const a = await chain.relay.quarantine.listAudit({ target: id, action: 'delete' });
      expect(a.items.map((x) => [x.actor, x.result])).toEqual([['console:rita', 'ok']]);
    }
    await ctx.close();
  });

  it('a viewer sees messages but cannot release, delete or download', async () => {
    const { ctx, page } = await signIn('vic');
    await page.goto(`${base}/messages/${ids.hostile}`);
    expect(await page.locator('#release-form').count()).toBe(0);
    expect(await page.locator('a:has-text("Download")').count()).toBe(0);
    expect(await page.locator('input[name=id]').count()).toBe(0);
    // Even with a valid CSRF token (the one in the sign-out form) the server refuses.
    const csrf = await page.locator('form[action$="/logout"] input[name=_csrf]').getAttribute('value');
    const r = await page.request.post(`${base}/messages/${ids.hostile}/release`, { form: { _csrf: csrf! }, headers: { origin: new URL(base).origin } });
    expect(r.status()).toBe(403);
    expect((await page.request.get(`${base}/messages/${ids.hostile}/eml`)).status()).toBe(403);
    expect((await page.request.get(`${base}/audit`)).status()).toBe(403);
    expect((await chain.relay.quarantine.get(ids.hostile!))?.status).toBe('held');
    await ctx.close();
  });

  it('refuses a change without the CSRF token, with a wrong one, or from another origin', async () => {
    const { ctx, page } = await signIn('rita');
    await page.goto(`${base}/messages/${ids.hostile}`);
    const csrf = (await page.locator('#release-form input[name=_csrf]').getAttribute('value'))!;
    const url = `${base}/messages/${ids.hostile}/release`;
    const origin = new URL(base).origin;
    expect((await page.request.post(url, { form: { recipient: 'bob@partner.example' }, headers: { origin } })).status()).toBe(403);
    expect((await page.request.post(url, { form: { _csrf: `${csrf}x` }, headers: { origin } })).status()).toBe(403);
    expect((await page.request.post(url, { form: { _csrf: csrf }, headers: { origin: 'https://evil.example' } })).status()).toBe(403);
    expect((await page.request.post(url, { form: { _csrf: csrf }, headers: { origin, 'sec-fetch-site': 'cross-site' } })).status()).toBe(403);
    expect((await chain.relay.quarantine.get(ids.hostile!))?.status).toBe('held');
    const refused = await chain.relay.quarantine.listAudit({ action: 'csrf' });
    expect(refused.items.length).toBeGreaterThanOrEqual(4);
    await ctx.close();
  });

  it('shows a hostile HTML message as text: its scripts never run and its remote content is never fetched', async () => {
    const { ctx, page } = await signIn('rita');
    const requests: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    const dialogs: string[] = [];
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    const res = await page.goto(`${base}/messages/${ids.hostile}`);
    expect(res?.headers()['content-security-policy']).toContain("default-src 'none'");
    await page.waitForLoadState('networkidle');
    expect(await page.textContent('#body')).toContain('Hello friend');
    expect(await page.title()).not.toBe('pwned');
    expect(await page.locator('main script, main img, main iframe, #body a').count()).toBe(0);
    expect(await page.locator('h1').textContent()).toBe('look <script>alert(1)</script>');
    expect(dialogs).toEqual([]);
    expect(requests.filter((u) => u.startsWith(trackerUrl))).toEqual([]);
    expect(trackerHits).toEqual([]);
    await ctx.close();
  });

  it('shows the HTML part in a sandboxed frame on request: its scripts never run and nothing remote is fetched, even on a click', async () => {
    const { ctx, page } = await signIn('rita');
    // The context sees the frame's requests too. Chromium's preload scanner may *start* a request that the CSP then
    // blocks before it leaves the browser (DevTools' "blocked:csp"): what must never happen is one that completes.
    const started: string[] = [];
    const completed: string[] = [];
    const failed: string[] = [];
    ctx.on('request', (r) => started.push(r.url()));
    ctx.on('requestfinished', (r) => completed.push(r.url()));
    ctx.on('requestfailed', (r) => failed.push(r.url()));
    const dialogs: string[] = [];
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    await page.goto(`${base}/messages/${ids.hostile}`);
    await page.click('#views a:has-text("HTML (sandboxed)")');
    expect(page.url()).toBe(`${base}/messages/${ids.hostile}?view=html`);
    const el = page.locator('iframe#html-body');
    expect(await el.getAttribute('sandbox')).toBe('');
    expect(await el.getAttribute('srcdoc')).toContain("default-src 'none'; img-src data:");
    const frame = await (await el.elementHandle()).contentFrame();
    expect(frame).not.toBeNull();
    await page.waitForLoadState('networkidle');
    // The markup is rendered (bold text, a data: image with its pixels), only inert.
    expect(await frame!.textContent('b')).toBe('friend');
    expect(await frame!.locator('#inline').evaluate((img) => (img as unknown as { naturalWidth: number }).naturalWidth)).toBe(1);
    expect(await frame!.title()).not.toBe('pwned');
    expect(await page.title()).not.toBe('pwned');
    await page.screenshot({ path: join(SCREENSHOT_DIR, 'console-message-html.png'), fullPage: true });
    // A click on the form's button, then on a link out (which may replace the frame), leaves nothing at the tracker either.
    await frame!.click('#go', { noWaitAfter: true });
    await frame!.click('#out', { noWaitAfter: true });
    await page.waitForLoadState('networkidle');
    expect(dialogs).toEqual([]);
    expect(trackerHits).toEqual([]);
    const toTracker = (list: string[]) => list.filter((u) => u.startsWith(trackerUrl)).sort();
    expect(toTracker(completed)).toEqual([]);
    expect(toTracker(failed)).toEqual(toTracker(started));
    // The text view stays the default and shows no frame.
    await page.click('#views a:has-text("Text")');
    expect(await page.locator('iframe').count()).toBe(0);
    expect(await page.textContent('#body')).toContain('Hello friend');
    await ctx.close();
  });

  it('locks an account after repeated failures, even for the right password', async () => {
    for (let i = 0; i < 3; i++) {
      const { ctx, page } = await signIn('ada', 'wrong-password-xyz');
      expect(await page.textContent('[role=alert]')).toContain('Wrong user name or password');
      await ctx.close();
    }
    const { ctx, page } = await signIn('ada');
    expect(await page.textContent('[role=alert]')).toContain('locked');
    expect(page.url()).toBe(`${base}/login`);
    const a = await chain.relay.quarantine.listAudit({ actor: 'console:ada', action: 'sign-in' });
    expect(a.items.map((x) => x.result).sort()).toEqual(['failed', 'failed', 'locked', 'locked']);
    await ctx.close();
  });

  it('keeps the bearer-token API working, and the console needs no token', async () => {
    const api = await fetch(`${chain.relay.admin!.url}/api/v1/quarantine`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(api.status).toBe(200);
    expect(((await api.json()) as { items: unknown[] }).items.length).toBeGreaterThan(0);
    expect((await fetch(`${chain.relay.admin!.url}/api/v1/quarantine`)).status).toBe(401);
    const login = await fetch(`${base}/login`);
    expect(login.status).toBe(200);
    expect(login.headers.get('x-frame-options')).toBe('DENY');
  });
});
