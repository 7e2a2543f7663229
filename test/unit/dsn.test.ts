// Failure DSNs: RFC 3464 structure, RFC 3461 NOTIFY rules, and never bouncing a bounce.
import { describe, it, expect } from 'vitest';
import { simpleParser } from 'mailparser';
import { buildFailureDsn, shouldNotify, rfc5322Date, type FailureDsnInput } from '../../src/egress/dsn.js';

const originalHeaders = Buffer.from(
  'From: Sender <sender@example.com>\r\nTo: a@example.net, b@example.net, c@example.net\r\nSubject: quarterly numbers\r\nMessage-ID: <orig-1@example.com>\r\n\r\n',
);

function input(over: Partial<FailureDsnInput> = {}): FailureDsnInput {
  return {
    reportingMta: 'relay.example.org',
    originalEnvelope: {
      from: 'sender@example.com',
      to: [
        { address: 'a@example.net', notify: ['FAILURE'], orcpt: 'rfc822;A@Example.NET' },
        { address: 'b@example.net' },
        { address: 'c@example.net' },
      ],
      smtpUtf8: false,
      envid: 'ENV-42',
    },
    arrivalDate: new Date(Date.UTC(2025, 0, 2, 3, 4, 5)),
    failed: [
      { address: 'a@example.net', code: 550, response: '550 5.1.1 <a@example.net>: Recipient address rejected: User unknown' },
      { address: 'b@example.net', code: 450, response: '450 mailbox busy' },
    ],
    originalHeaders,
    queryId: 'q-123',
    ...over,
  };
}

interface Part {
  headers: string;
  body: string;
}

/** Minimal MIME split: enough to check each part's headers and content exactly. */
function parts(message: Buffer): { top: string; parts: Part[] } {
  const text = message.toString('utf8');
  const headerEnd = text.indexOf('\r\n\r\n');
  const top = text.slice(0, headerEnd);
  const boundary = /boundary="([^"]+)"/.exec(top)![1]!;
  const sections = text.split(`--${boundary}`);
  // [preamble, part1, part2, part3, "--\r\n"]
  expect(sections).toHaveLength(5);
  expect(sections[4]).toBe('--\r\n');
  return {
    top,
    parts: sections.slice(1, 4).map((s) => {
      const body = s.replace(/^\r\n/, '');
      const i = body.indexOf('\r\n\r\n');
      return { headers: body.slice(0, i), body: body.slice(i + 4) };
    }),
  };
}

describe('shouldNotify (RFC 3461 §4.1)', () => {
  it('defaults to failures and delays, never successes', () => {
    expect(shouldNotify(undefined)).toBe(true);
    expect(shouldNotify([], 'failure')).toBe(true);
    expect(shouldNotify(undefined, 'delay')).toBe(true);
    expect(shouldNotify(undefined, 'success')).toBe(false);
  });

  it('honours explicit lists and NEVER', () => {
    expect(shouldNotify(['NEVER'])).toBe(false);
    expect(shouldNotify(['SUCCESS'])).toBe(false);
    expect(shouldNotify(['DELAY'])).toBe(false);
    expect(shouldNotify(['SUCCESS', 'DELAY'])).toBe(false);
    expect(shouldNotify(['FAILURE'])).toBe(true);
    expect(shouldNotify(['success', 'failure'])).toBe(true);
    expect(shouldNotify(['SUCCESS'], 'success')).toBe(true);
    expect(shouldNotify(['NEVER'], 'success')).toBe(false);
  });
});

describe('buildFailureDsn', () => {
  it('builds a multipart/report with text, delivery-status and the original headers', async () => {
    const dsn = buildFailureDsn(input())!;
    expect(dsn).not.toBeNull();
    expect(dsn.envelope).toEqual({ from: '', to: [{ address: 'sender@example.com' }], smtpUtf8: false, bodyType: '7bit', size: dsn.message.length });

    // Every line ends in CRLF: the message goes out over SMTP as is.
    expect(/(^|[^\r])\n/.test(dsn.message.toString('latin1'))).toBe(false);

    const { top, parts: [human, status, headers] } = parts(dsn.message);
    expect(top).toMatch(/^From: Mail Delivery System <MAILER-DAEMON@relay\.example\.org>$/m);
    expect(top).toMatch(/^To: <sender@example\.com>$/m);
    expect(top).toMatch(/^Auto-Submitted: auto-replied$/m);
    expect(top).toMatch(/^MIME-Version: 1\.0$/m);
    expect(top).toMatch(/^Content-Type: multipart\/report; report-type=delivery-status;\r\n\tboundary="/m);
    expect(top).toMatch(/^Message-ID: <q-123\.\d+\.[0-9a-f]+@relay\.example\.org>$/m);

    expect(human!.headers).toContain('Content-Type: text/plain; charset=utf-8');
    expect(human!.body).toContain('q-123');
    expect(human!.body).toContain('550 5.1.1 <a@example.net>: Recipient address rejected: User unknown');
    expect(human!.body).toContain('<b@example.net>');
    expect(human!.body).not.toContain('c@example.net');

    expect(status!.headers).toBe('Content-Description: Delivery report\r\nContent-Type: message/delivery-status');
    const [perMessage, rcptA, rcptB, ...rest] = status!.body.trimEnd().split('\r\n\r\n');
    expect(rest).toEqual([]);
    expect(perMessage!.split('\r\n')).toEqual([
      'Reporting-MTA: dns; relay.example.org',
      'X-DLP-Relay-Query-ID: q-123',
      'Original-Envelope-Id: ENV-42',
      'Arrival-Date: Thu, 2 Jan 2025 03:04:05 +0000',
    ]);
    expect(rcptA!.split('\r\n')).toEqual([
      'Original-Recipient: rfc822; A@Example.NET',
      'Final-Recipient: rfc822; a@example.net',
      'Action: failed',
      'Status: 5.1.1',
      'Diagnostic-Code: smtp; 550 5.1.1 <a@example.net>: Recipient address rejected: User unknown',
    ]);
    // No ORCPT → no Original-Recipient; no enhanced code in the reply → the class default.
    expect(rcptB!.split('\r\n')).toEqual([
      'Final-Recipient: rfc822; b@example.net',
      'Action: failed',
      'Status: 4.0.0',
      'Diagnostic-Code: smtp; 450 mailbox busy',
    ]);

    expect(headers!.headers).toContain('Content-Type: text/rfc822-headers');
    expect(headers!.body).toBe(originalHeaders.toString('utf8'));
  });

  it('is a MIME message a real parser understands', async () => {
    const dsn = buildFailureDsn(input())!;
    const parsed = await simpleParser(dsn.message);
    expect(parsed.subject).toBe('Delivery Status Notification (Failure)');
    expect(parsed.text).toContain('q-123');
    // mailparser shows message/delivery-status inline as text and keeps the headers part as an attachment.
    expect(parsed.text).toContain('Reporting-MTA: dns; relay.example.org');
    expect(parsed.text).toContain('Final-Recipient: rfc822; a@example.net');
    const headersPart = parsed.attachments.find((a) => a.contentType === 'text/rfc822-headers');
    expect(headersPart?.content.toString('utf8')).toContain('Subject: quarterly numbers');
  });

  it('skips recipients whose NOTIFY does not include FAILURE', () => {
    const base = input();
    const dsn = buildFailureDsn({
      ...base,
      originalEnvelope: {
        ...base.originalEnvelope,
        to: [
          { address: 'a@example.net', notify: ['NEVER'] },
          { address: 'b@example.net', notify: ['SUCCESS', 'DELAY'] },
          { address: 'c@example.net', notify: ['SUCCESS', 'FAILURE'] },
          { address: 'd@example.net' },
        ],
      },
      failed: ['a', 'b', 'c', 'd'].map((x) => ({ address: `${x}@example.net`, code: 550, response: '550 5.1.1 unknown' })),
    })!;
    const text = dsn.message.toString('utf8');
    expect(text).not.toContain('Final-Recipient: rfc822; a@example.net');
    expect(text).not.toContain('Final-Recipient: rfc822; b@example.net');
    expect(text).toContain('Final-Recipient: rfc822; c@example.net');
    expect(text).toContain('Final-Recipient: rfc822; d@example.net');
  });

  it('returns null when every failed recipient opted out', () => {
    const base = input();
    expect(
      buildFailureDsn({
        ...base,
        originalEnvelope: { ...base.originalEnvelope, to: [{ address: 'a@example.net', notify: ['NEVER'] }, { address: 'b@example.net', notify: ['SUCCESS'] }] },
      }),
    ).toBeNull();
  });

  it('returns null when there is nothing to report', () => {
    expect(buildFailureDsn(input({ failed: [] }))).toBeNull();
  });

  it('never bounces a bounce: null original sender → null', () => {
    const base = input();
    expect(buildFailureDsn({ ...base, originalEnvelope: { ...base.originalEnvelope, from: '' } })).toBeNull();
  });

  it('keeps a hostile reply on its own line', () => {
    const dsn = buildFailureDsn(input({ failed: [{ address: 'a@example.net', code: 550, response: '550 5.1.1 bad\r\nX-Injected: yes' }] }))!;
    const text = dsn.message.toString('utf8');
    expect(text).not.toMatch(/^X-Injected/m);
    expect(text).toContain('Diagnostic-Code: smtp; 550 5.1.1 bad X-Injected: yes');
  });

  it('omits Original-Envelope-Id without ENVID and finds ORCPT from the envelope when the caller did not pass it', () => {
    const base = input();
    const dsn = buildFailureDsn({
      ...base,
      originalEnvelope: { from: 'sender@example.com', to: [{ address: 'a@example.net', orcpt: 'rfc822;alias@example.net' }], smtpUtf8: false },
      failed: [{ address: 'A@example.net', code: 550, response: '550 5.1.1 unknown' }],
    })!;
    const text = dsn.message.toString('utf8');
    expect(text).not.toContain('Original-Envelope-Id');
    expect(text).toContain('Original-Recipient: rfc822; alias@example.net');
  });

  it('uses the global types and 8BITMIME when the original headers are 8-bit, normalising bare LF', () => {
    const raw = Buffer.concat([Buffer.from('Subject: caf'), Buffer.from([0xc3, 0xa9]), Buffer.from('\nFrom: x@example.com\n\n')]);
    const dsn = buildFailureDsn(input({ originalHeaders: raw }))!;
    expect(dsn.envelope.bodyType).toBe('8bitmime');
    const { parts: p } = parts(dsn.message);
    expect(p[2]!.headers).toContain('Content-Type: message/global-headers');
    expect(p[2]!.body).toBe('Subject: caf\u00e9\r\nFrom: x@example.com\r\n\r\n');
  });

  it('formats dates as RFC 5322 with a numeric zone', () => {
    expect(rfc5322Date(new Date(Date.UTC(2024, 11, 31, 23, 59, 9)))).toBe('Tue, 31 Dec 2024 23:59:09 +0000');
  });
});
