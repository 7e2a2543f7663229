// The UCWI simulator's own check of the SKG signature, written from shared/reference/ucwi.md §1 (the vendor's Python
// get_auth) and NOT from the client's signing code (dlp/auth.ts): a wrong scheme in the client fails against it.
import { createHmac, timingSafeEqual } from 'node:crypto';

export type UcwiAuthVerdict = { ok: true } | { ok: false; reason: 'missing' | 'malformed' | 'unknown_key' | 'bad_signature' | 'clock_skew' };

/** First value of a header, whatever case the client used (ucwi.md §1: `X-Skg-Timestamp` / `authorization` occur). */
function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== name) continue;
    return Array.isArray(v) ? v[0] : v;
  }
  return undefined;
}

/** The last MAC computed: it depends on the secret and the timestamp only, and a busy client sends the same timestamp for a whole second. */
let lastMac: { secretKey: string; timestamp: string; mac: Buffer } | null = null;

function expectedMac(secretKey: string, timestamp: string): Buffer {
  if (lastMac?.timestamp === timestamp && lastMac.secretKey === secretKey) return lastMac.mac;
  const hmac = createHmac('sha256', Buffer.from(secretKey, 'utf8'));
  hmac.update(Buffer.from(`${secretKey}${timestamp}`, 'utf8'));
  lastMac = { secretKey, timestamp, mac: hmac.digest() };
  return lastMac.mac;
}

/**
 * `Authorization: SKG <access_key>:<hex>` where hex = HMAC-SHA256(key = secret_key, message = secret_key + timestamp),
 * and `x-skg-timestamp` = Unix seconds within `maxSkewSec` (UCWI: 401 past 5 minutes).
 */
export function checkSkgAuth(
  headers: Record<string, string | string[] | undefined>,
  keys: { accessKey: string; secretKey: string },
  nowMs: number,
  maxSkewSec = 300,
): UcwiAuthVerdict {
  const authorization = header(headers, 'authorization');
  const timestamp = header(headers, 'x-skg-timestamp');
  if (authorization === undefined || timestamp === undefined) return { ok: false, reason: 'missing' };
  const value = authorization.trim();
  if (!value.startsWith('SKG ') || !/^\d+$/.test(timestamp)) return { ok: false, reason: 'malformed' };
  const colon = value.lastIndexOf(':');
  if (colon < 0) return { ok: false, reason: 'malformed' };
  const accessKey = value.slice(4, colon);
  const mac = value.slice(colon + 1);
  if (!/^[0-9a-fA-F]{64}$/.test(mac)) return { ok: false, reason: 'malformed' };
  if (accessKey !== keys.accessKey) return { ok: false, reason: 'unknown_key' };
  if (Math.abs(Math.floor(nowMs / 1000) - Number(timestamp)) > maxSkewSec) return { ok: false, reason: 'clock_skew' };
  const expected = expectedMac(keys.secretKey, timestamp);
  const given = Buffer.from(mac, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected) ? { ok: true } : { ok: false, reason: 'bad_signature' };
}
