// CAS settings defaults and the pure push decisions: which verdicts trigger a push, which senders are exempt.
import { describe, expect, it } from 'vitest';
import { isExemptSender, shouldPush } from '../../src/cas/trigger.js';
import { DEFAULT_CAS_SETTINGS, parseCasSettings, CAS_REGION_HOSTS } from '../../src/config/cas-schema.js';
import { casBaseUrl } from '../../src/cas/client.js';

describe('shouldPush', () => {
  it('pushes only for configured action codes, block (2) by default', () => {
    const t = DEFAULT_CAS_SETTINGS.triggers;
    expect(t).toEqual([2]);
    expect(shouldPush(2, t)).toBe(true);
    for (const code of [1, 3, 4, 5, 6, 7, 8, 9]) expect(shouldPush(code, t)).toBe(false);
  });

  it('never pushes without a verdict', () => {
    expect(shouldPush(null, [2, 6])).toBe(false);
    expect(shouldPush(Number.NaN, [2])).toBe(false);
  });

  it('honours a custom trigger list, including an empty one', () => {
    expect(shouldPush(6, [2, 6])).toBe(true);
    expect(shouldPush(2, [])).toBe(false);
  });
});

describe('CasSettings', () => {
  it('is off by default and pushes only the sender', () => {
    const s = parseCasSettings({});
    expect(s.enabled).toBe(false);
    expect(s.push).toEqual({ sender: true, attachmentHashes: false, urls: false, maxUrls: 50 });
    expect(s.ttlDays).toBeNull();
    expect(s.rate).toEqual({ limit: 20, windowMs: 60_000 });
    expect(s.retry.maxAttempts).toBeGreaterThan(1);
    expect(s.region).toBeNull();
    expect(s.url).toBeNull();
    expect(s.exemptDomains).toEqual([]);
  });

  it('fills nested defaults around partial input', () => {
    const s = parseCasSettings({ enabled: true, rate: { limit: 5 }, push: { urls: true }, region: 'eu', ttlDays: 30 });
    expect(s.rate).toEqual({ limit: 5, windowMs: 60_000 });
    expect(s.push.sender).toBe(true);
    expect(s.push.urls).toBe(true);
    expect(s.ttlDays).toBe(30);
    expect(casBaseUrl(s)).toBe('https://api-eu.tmcas.trendmicro.com');
  });

  it('rejects unknown keys, bad regions and non-http URLs', () => {
    expect(() => parseCasSettings({ enable: true })).toThrow();
    expect(() => parseCasSettings({ region: 'mars' })).toThrow();
    expect(() => parseCasSettings({ url: 'ftp://x.example' })).toThrow();
    expect(() => parseCasSettings({ rate: { limit: 0 } })).toThrow();
  });
});

describe('casBaseUrl', () => {
  it('maps every region to its documented host, without /api/', () => {
    expect(Object.keys(CAS_REGION_HOSTS).sort()).toEqual(['au', 'ca', 'eu', 'in', 'jp', 'sg', 'uk', 'us']);
    expect(casBaseUrl({ region: 'us' })).toBe('https://api.tmcas.trendmicro.com');
    expect(casBaseUrl({ region: 'jp' })).toBe('https://api.tmcas.trendmicro.co.jp');
    expect(casBaseUrl({ region: 'sg' })).toBe('https://api.tmcas.trendmicro.com.sg');
    expect(casBaseUrl({ region: 'in' })).toBe('https://api-in.tmcas.trendmicro.com');
  });

  it('prefers an explicit URL and drops a trailing slash', () => {
    expect(casBaseUrl({ region: 'us', url: 'http://127.0.0.1:8080/' })).toBe('http://127.0.0.1:8080');
    expect(casBaseUrl({ url: 'https://proxy.example/cas/' })).toBe('https://proxy.example/cas');
    expect(() => casBaseUrl({})).toThrow(/region or a URL/);
  });
});

describe('isExemptSender', () => {
  const domains = ['example.com', '@corp.example'];
  it('exempts our domains and their subdomains, case-insensitively', () => {
    expect(isExemptSender('Alice@Example.COM', domains, [])).toBe(true);
    expect(isExemptSender('bob@mail.example.com', domains, [])).toBe(true);
    expect(isExemptSender('carol@corp.example', domains, [])).toBe(true);
  });
  it('does not exempt look-alike domains', () => {
    expect(isExemptSender('mallory@evilexample.com', domains, [])).toBe(false);
    expect(isExemptSender('mallory@example.com.evil.test', domains, [])).toBe(false);
  });
  it('exempts listed addresses', () => {
    expect(isExemptSender('Partner@Vendor.test', [], ['partner@vendor.test'])).toBe(true);
    expect(isExemptSender('other@vendor.test', [], ['partner@vendor.test'])).toBe(false);
  });
});
