// Sender notices: template filling, header safety, encoding, null-sender and automated-sender rules, and that sending never throws.
import { describe, it, expect } from 'vitest';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { PACKAGE_ROOT } from '../../src/config/load.js';
import { silentLogger } from '../../src/observability/logger.js';
import {
  buildNotice,
  createNotifier,
  loadNoticeTemplates,
  noticeSuppressedBecause,
  parseTemplate,
  sendNotice,
  type NoticeInput,
} from '../../src/quarantine/notify.js';
import { buildPreview, type DeliverFn } from '../../src/quarantine/operations.js';
import { acceptAll } from '../helpers/deliver-report.js';

const NOW = new Date('2025-03-04T05:06:07Z');
const TEMPLATE = [
  '// a comment line that never reaches the sender',
  'Subject: Held: {subject} (ref {queryId})',
  '',
  'Your message "{subject}" to {recipients} was held.',
  'Reason: {reason}',
  'Help: {helpContact}',
  '',
].join('\n');

function input(over: Partial<NoticeInput> = {}): NoticeInput {
  return {
    kind: 'quarantine',
    queryId: '0b5e3c1e-1111-4222-8333-944455556666',
    sender: 'alice@example.com',
    recipients: ['bob@example.org', 'carol@example.net'],
    subject: 'Quarterly numbers',
    reason: 'the message matched a data-protection policy',
    ...over,
  };
}

const OPTS = {
  from: 'dlp-notice@example.com',
  helpContact: 'helpdesk@example.com',
  hostname: 'relay.example.com',
  template: TEMPLATE,
  now: NOW,
  messageId: 'fixed',
};

function split(message: Buffer): { head: string; body: string } {
  const text = message.toString();
  const i = text.indexOf('\r\n\r\n');
  return { head: text.slice(0, i), body: text.slice(i + 4) };
}

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('buildNotice', () => {
  it('fills the template, addresses the envelope sender from the null reverse-path, and marks itself automatic', () => {
    const n = buildNotice(input(), OPTS)!;
    expect(n.envelope).toEqual({ from: '', to: [{ address: 'alice@example.com' }], smtpUtf8: false, bodyType: '7bit' });
    const { head, body } = split(n.message);
    expect(head.split('\r\n')).toEqual([
      'From: <dlp-notice@example.com>',
      'To: <alice@example.com>',
      'Subject: Held: Quarterly numbers (ref 0b5e3c1e-1111-4222-8333-944455556666)',
      'Date: Tue, 4 Mar 2025 05:06:07 +0000',
      'Message-ID: <fixed@relay.example.com>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 7bit',
      'Auto-Submitted: auto-replied',
      'X-Auto-Response-Suppress: All',
      'X-DLP-Notice: quarantine; ref=0b5e3c1e-1111-4222-8333-944455556666',
    ]);
    expect(body).toBe(
      'Your message "Quarterly numbers" to bob@example.org, carol@example.net was held.\r\n' +
        'Reason: the message matched a data-protection policy\r\nHelp: helpdesk@example.com\r\n',
    );
    expect(n.message.toString()).not.toContain('comment line');
  });

  it('is pure: same input, same bytes', () => {
    expect(buildNotice(input(), OPTS)!.message.equals(buildNotice(input(), OPTS)!.message)).toBe(true);
  });

  it('can use a configured envelope sender', () => {
    expect(buildNotice(input(), { ...OPTS, envelopeFrom: 'bounces@example.com' })!.envelope.from).toBe('bounces@example.com');
  });

  it('never lets sender-controlled values break headers or expand placeholders twice', () => {
    const n = buildNotice(input({ subject: 'hi\r\nBcc: victim@example.org\r\n\r\n{reason} {helpContact}', queryId: 'q\r\nX-Evil: 1' }), OPTS)!;
    const { head, body } = split(n.message);
    expect(head).not.toMatch(/^Bcc:/m);
    expect(head).not.toMatch(/^X-Evil:/m);
    expect(body).toContain('"hi Bcc: victim@example.org {reason} {helpContact}"');
    expect(head.split('\r\n').every((l) => l.length <= 998)).toBe(true);
  });

  it('encodes a non-ASCII subject as RFC 2047 words and the body as base64, and the result parses', async () => {
    const subject = 'Zahlen für das Quartal – vertraulich ✓ '.repeat(3).trim();
    const n = buildNotice(input({ subject }), OPTS)!;
    const { head, body } = split(n.message);
    expect(head).toMatch(/^Subject: =\?UTF-8\?B\?/m);
    expect(head).toContain('Content-Transfer-Encoding: base64');
    expect(head.split('\r\n').every((l) => /^[\x20-\x7e]*$/.test(l) && l.length <= 998)).toBe(true);
    expect(Buffer.from(body.replace(/\r\n/g, ''), 'base64').toString()).toContain(subject);
    const preview = await buildPreview(Readable.from([n.message]));
    expect(preview.text).toContain(subject);
    expect(preview.attachments).toEqual([]);
  });

  it('limits the recipient list', () => {
    const many = Array.from({ length: 25 }, (_, i) => `r${i}@example.org`);
    const { body } = split(buildNotice(input({ recipients: many }), OPTS)!.message);
    expect(body).toContain('r9@example.org and 15 more');
    expect(body).not.toContain('r10@example.org');
  });

  it('falls back to a default subject when the template has none', () => {
    const n = buildNotice(input({ kind: 'reject' }), { ...OPTS, template: 'Rejected, ref {queryId}.\n' })!;
    expect(split(n.message).head).toContain('Subject: Your message was not delivered (ref 0b5e3c1e-1111-4222-8333-944455556666)');
  });
});

describe('who gets no notice', () => {
  const cases: Array<[string, Partial<NoticeInput>]> = [
    ['null sender', { sender: '' }],
    ['null sender in brackets', { sender: '<>' }],
    ['MAILER-DAEMON', { sender: 'MAILER-DAEMON@mx.example.com' }],
    ['postmaster', { sender: 'Postmaster@example.com' }],
    ['postmaster with a tag', { sender: 'postmaster+bounces@example.com' }],
    ['list owner', { sender: 'owner-staff@lists.example.com' }],
    ['list bounce', { sender: 'staff-bounces@lists.example.com' }],
    ['no-reply', { sender: 'no-reply@example.com' }],
    ['not an address', { sender: 'alice' }],
    ['the notice address itself', { sender: 'DLP-Notice@example.com' }],
    ['Auto-Submitted', { autoSubmitted: 'auto-generated' }],
    ['Precedence: bulk', { precedence: 'bulk' }],
    ['List-Id', { listId: '<staff.lists.example.com>' }],
  ];
  it.each(cases)('%s', (_name, over) => {
    expect(noticeSuppressedBecause(input(over), OPTS.from)).not.toBeNull();
    expect(buildNotice(input(over), OPTS)).toBeNull();
  });

  it('a normal sender with Auto-Submitted: no is notified', () => {
    expect(noticeSuppressedBecause(input({ autoSubmitted: 'no' }), OPTS.from)).toBeNull();
  });
});

describe('sending', () => {
  it('hands the notice to the deliver function with its envelope', async () => {
    const got: Buffer[] = [];
    const deliver: DeliverFn = async (env, open) => {
      expect(env.to).toEqual([{ address: 'alice@example.com' }]);
      got.push(await readAll(open()));
      return acceptAll(env, '250 ok');
    };
    const n = buildNotice(input(), OPTS)!;
    expect(await sendNotice(n, deliver, { logger: silentLogger() })).toBe(true);
    expect(got[0]!.equals(n.message)).toBe(true);
  });

  it('counts a notice as sent only when the next hop accepted it', async () => {
    const n = buildNotice(input(), OPTS)!;
    const refusing: DeliverFn = async (env) => ({
      response: '',
      recipients: env.to.map((r) => ({ address: r.address, status: 'refused' as const, code: 550, response: '550 5.1.1 no such user' })),
    });
    expect(await sendNotice(n, refusing, { logger: silentLogger() })).toBe(false);
  });

  it('never throws when delivery fails', async () => {
    const n = buildNotice(input(), OPTS)!;
    expect(await sendNotice(n, async () => Promise.reject(new Error('next hop down')))).toBe(false);
  });

  it('does nothing when disabled (the default) and respects per-kind switches', async () => {
    let calls = 0;
    const deliver: DeliverFn = async (env) => {
      calls++;
      return acceptAll(env, '250');
    };
    const base = {
      onQuarantine: true,
      onReject: false,
      from: 'dlp-notice@example.com',
      helpContact: 'helpdesk@example.com',
      hostname: 'relay.example.com',
      templateDir: join(PACKAGE_ROOT, 'config'),
    };
    const off = await createNotifier({ ...base, enabled: false }, deliver);
    expect(await off.notify(input())).toBe(false);
    const on = await createNotifier({ ...base, enabled: true }, deliver, silentLogger());
    expect(await on.notify(input({ kind: 'reject' }))).toBe(false);
    expect(await on.notify(input({ sender: '' }))).toBe(false);
    expect(await on.notify(input())).toBe(true);
    expect(calls).toBe(1);
  });
});

describe('shipped templates', () => {
  it('have a subject, use every placeholder, and carry no leftover braces once filled', async () => {
    const t = await loadNoticeTemplates(join(PACKAGE_ROOT, 'config'));
    for (const [kind, text] of Object.entries(t) as Array<['quarantine' | 'reject', string]>) {
      const parsed = parseTemplate(text);
      expect(parsed.subject).toMatch(/\{queryId\}/);
      for (const p of ['{subject}', '{recipients}', '{helpContact}', '{reason}', '{queryId}']) expect(text).toContain(p);
      const n = buildNotice(input({ kind }), { ...OPTS, template: text })!;
      expect(n.message.toString()).not.toMatch(/[{}]/);
      expect(n.message.toString()).not.toContain('//');
    }
  });
});
