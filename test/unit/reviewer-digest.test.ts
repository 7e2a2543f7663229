// The digest's pure parts: period boundaries (hourly, daily at an hour UTC) and the mail (metadata only, one line per value whatever the sender put in).
import { describe, it, expect } from 'vitest';
import { buildDigest, periodBoundary, type DigestSettings } from '../../src/console/reviewer-digest.js';
import type { QuarantineRecord } from '../../src/quarantine/types.js';

const settings: DigestSettings = {
  interval: 'daily',
  dailyHourUtc: 7,
  recipients: ['rita@corp.example'],
  from: 'dlp@corp.example',
  publicUrl: 'https://mail-admin.example/',
  basePath: '/quarantine',
  hostname: 'relay.example',
  maxItems: 2,
};

function rec(id: string, subject: string | null, from = 'alice@corp.example'): QuarantineRecord {
  return {
    id,
    queryId: id,
    receivedAt: '2025-03-01T10:00:00.000Z',
    quarantinedAt: '2025-03-01T10:00:01.000Z',
    envelope: {
      from,
      to: [{ address: 'bob@partner.example' }, { address: 'c@p.example' }, { address: 'd@p.example' }, { address: 'e@p.example' }],
      smtpUtf8: false,
    },
    clientAddress: '127.0.0.1',
    heloName: null,
    size: 10,
    sha256: 'x',
    md5: 'y',
    subject,
    messageId: null,
    actionCode: 6,
    reason: 'dlp:6',
    policies: [{ name: 'PCI', severity: 4, actionSettingName: null, numberOfMatches: 1 }],
    status: 'held',
    instance: 'h:1',
  };
}

describe('periodBoundary', () => {
  it('hourly: the top of the hour at or before', () => {
    expect(periodBoundary('hourly', 7, new Date('2025-03-01T10:59:59.999Z')).toISOString()).toBe('2025-03-01T10:00:00.000Z');
    expect(periodBoundary('hourly', 7, new Date('2025-03-01T11:00:00.000Z')).toISOString()).toBe('2025-03-01T11:00:00.000Z');
  });
  it('daily: dailyHourUtc of the same day, or of the day before when earlier', () => {
    expect(periodBoundary('daily', 7, new Date('2025-03-01T06:59:00Z')).toISOString()).toBe('2025-02-28T07:00:00.000Z');
    expect(periodBoundary('daily', 7, new Date('2025-03-01T07:00:00Z')).toISOString()).toBe('2025-03-01T07:00:00.000Z');
    expect(periodBoundary('daily', 0, new Date('2025-03-01T23:59:00Z')).toISOString()).toBe('2025-03-01T00:00:00.000Z');
  });
});

describe('buildDigest', () => {
  const uuid = (n: number) => `00000000-0000-4000-8000-00000000000${n}`;
  const win = { since: new Date('2025-03-01T07:00:00Z'), until: new Date('2025-03-02T07:00:00Z'), moreCount: 3, more: false };

  it('lists up to maxItems with links under the public URL and counts the rest', () => {
    const { envelope, message } = buildDigest({ ...win, items: [rec(uuid(1), 'Q3 figures'), rec(uuid(2), null)] }, settings, {
      now: new Date('2025-03-02T07:01:00Z'),
      messageId: 'm1',
    });
    const text = message.toString();
    expect(envelope).toEqual({ from: 'dlp@corp.example', to: [{ address: 'rita@corp.example' }], smtpUtf8: false, bodyType: '7bit' });
    expect(text).toMatch(/^Subject: \[dlp-relay\] 5 new held messages \(daily digest\)\r$/m);
    expect(text).toContain(`https://mail-admin.example/quarantine/messages/${uuid(1)}\r\n`);
    expect(text).toContain('(no subject)');
    expect(text).toContain('to bob@partner.example, c@p.example, d@p.example and 1 more');
    expect(text).toContain('... and 3 more in the console.');
    expect(text).toContain('Auto-Submitted: auto-generated');
    expect(text).toContain('Content-Transfer-Encoding: 7bit');
  });

  it('a hostile subject or sender cannot add headers or lines (7bit body, so the check reads the real lines)', () => {
    const { message } = buildDigest(
      { ...win, moreCount: 0, items: [rec(uuid(3), 'hi\r\nBcc: victim@x.example\r\n\r\nfake link https://evil.example', 'a\r\nX-Evil: 1@x')] },
      settings,
    );
    const text = message.toString();
    expect(text).toContain('Content-Transfer-Encoding: 7bit');
    expect(text).toContain('hi Bcc: victim@x.example fake link');
    expect(text).not.toMatch(/^Bcc:/m);
    expect(text).not.toMatch(/^X-Evil/m);
    expect(text).not.toMatch(/^fake link/m);
    expect(text.split('\r\n\r\n')[0]).not.toContain('victim');
  });
});
