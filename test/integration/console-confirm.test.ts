// Sender self-service in real Chromium: an actionCode 3 message is held, the sender's notice carries a signed link, the page shows metadata only, confirm releases once, withdraw deletes, used and expired links are refused.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { startChain, eventually, message, sendMessage, type Chain, type SinkMessage } from '../helpers/chain.js';
import { launchChromium, SCREENSHOT_DIR } from '../helpers/browser.js';
import { ConfirmLinks, loadLinkKey } from '../../src/console/confirm.js';

const BODY_MARKER = 'quarterly-figures-body-7731';

describe('sender confirm links', () => {
  let chain: Chain;
  let browser: Browser;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dlp-confirm-'));
    chain = await startChain({
      config: {
        quarantine: { notifications: { enabled: true, from: 'dlp-notice@corp.example' } },
        console: { enabled: true, usersFile: join(dir, 'users.json'), confirm: { enabled: true, linkKeyFile: join(dir, 'link.key') } },
      },
    });
    browser = await launchChromium();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await chain?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const noticeFor = (marker: string) => (m: SinkMessage) => m.to.some((t) => t.address === 'alice@corp.example') && (m.data?.toString() ?? '').includes(marker);

  /** Sends a DLPTEST-ACTION-3 message as alice and returns the link from the notice she gets. */
  async function holdAndGetLink(subject: string): Promise<string> {
    const r = await sendMessage(chain.port, message(`DLPTEST-ACTION-3 ${BODY_MARKER}`).replace('Subject: test', `Subject: ${subject}`), {
      from: 'alice@corp.example',
      to: ['bob@partner.example'],
    });
    expect(r.data).toMatch(/^250 /);
    const ref = /ref ([0-9a-f-]{36})/.exec(r.data)![1]!;
    await eventually(() => chain.sink.messages.some(noticeFor(ref)), 10_000);
    const notice = chain.sink.messages.find(noticeFor(ref))!.data!.toString();
    expect(notice).toContain('The link works once');
    const link = /(http:\/\/\S+\/console\/confirm\/\S+)/.exec(notice)![1]!;
    expect(link).toContain(ref);
    return link;
  }

  async function open(link: string): Promise<{ page: Page; status: number }> {
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    ctx.setDefaultTimeout(10_000);
    const page = await ctx.newPage();
    const res = await page.goto(link);
    return { page, status: res!.status() };
  }

  const deliveredTo = (addr: string, marker: string) =>
    chain.sink.messages.filter((m) => m.to.some((t) => t.address === addr) && (m.data?.toString() ?? '').includes(marker)).length;

  it('confirm with a justification releases the message once; the link then refuses', async () => {
    const link = await holdAndGetLink('board pack');
    expect(deliveredTo('bob@partner.example', BODY_MARKER)).toBe(0);
    const { page, status } = await open(link);
    expect(status).toBe(200);
    const held = await page.textContent('#held');
    expect(held).toContain('board pack');
    expect(held).toContain('bob@partner.example');
    expect(held).toContain('Test trigger action 3');
    // Never the content: neither the body nor the trigger keyword is on the page.
    expect(await page.content()).not.toContain(BODY_MARKER);
    await page.screenshot({ path: join(SCREENSHOT_DIR, 'console-confirm.png'), fullPage: true });
    await page.fill('textarea[name=justification]', 'Customer asked for it in writing');
    await page.click('button[value=confirm]');
    expect(await page.textContent('[role=status]')).toContain('delivered');
    await eventually(() => deliveredTo('bob@partner.example', BODY_MARKER) >= 1, 5000);
    expect(deliveredTo('bob@partner.example', BODY_MARKER)).toBe(1);
    const id = /confirm\/([0-9a-f-]{36})\./.exec(link)![1]!;
    const audit = await chain.relay.quarantine.listAudit({ target: id, action: 'sender-confirm' });
    expect(audit.items.map((a) => [a.actor, a.result, a.detail])).toEqual([['sender:alice@corp.example', 'ok', 'Customer asked for it in writing']]);

    const again = await open(link);
    expect(again.status).toBe(410);
    expect(await again.page.textContent('[role=alert]')).toContain('already been used');
    // Replaying the POST does nothing either.
    const replay = await again.page.request.post(link, { form: { action: 'confirm', justification: 'again please' } });
    expect(replay.status()).toBe(410);
    expect(deliveredTo('bob@partner.example', BODY_MARKER)).toBe(1);
    await again.page.context().close();
    await page.context().close();
  });

  it('withdraw deletes the held message', async () => {
    const link = await holdAndGetLink('withdraw me');
    const id = /confirm\/([0-9a-f-]{36})\./.exec(link)![1]!;
    const { page } = await open(link);
    await page.click('button[value=withdraw]');
    expect(await page.textContent('[role=status]')).toContain('withdrawn');
    expect(await chain.relay.quarantine.get(id)).toBeNull();
    expect((await open(link)).status).toBe(410);
    await page.context().close();
  });

  it('an expired or tampered link is refused and changes nothing', async () => {
    const link = await holdAndGetLink('too late');
    const id = /confirm\/([0-9a-f-]{36})\./.exec(link)![1]!;
    const settings = { actionCodes: [3], onConfirm: 'release' as const, linkTtlMs: 60_000, publicUrl: chain.relay.admin!.url, basePath: '/console' };
    // Signed with the relay's own key, but two minutes ago with a one-minute lifetime.
    const past = new ConfirmLinks(loadLinkKey(join(dir, 'link.key')), settings, () => Date.now() - 120_000);
    const expired = past.linkFor(3, id)!.url;
    const e = await open(expired);
    expect(e.status).toBe(410);
    expect(await e.page.textContent('[role=alert]')).toContain('expired');
    const post = await e.page.request.post(expired, { form: { action: 'confirm', justification: 'please let it go' } });
    expect(post.status()).toBe(410);
    const tampered = link.replace(/(confirm\/[0-9a-f-]{36})\.(\d+)\./, (_m, head: string, exp: string) => `${head}.${Number(exp) + 86_400}.`);
    expect(tampered).not.toBe(link);
    expect((await open(tampered)).status).toBe(404);
    expect((await chain.relay.quarantine.get(id))?.status).toBe('held');
    await e.page.context().close();
  });
});
