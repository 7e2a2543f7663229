// UCWI request signing: the SKG HMAC scheme shared by our client and by the simulator that verifies it.
import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Signature as UCWI's own Python sample computes it: HMAC-SHA256 keyed with the secret over
 * `secret + timestamp`, lowercase hex. The prose on the vendor page disagrees with its code; both
 * public clients follow the code, so we do too (see shared/reference/ucwi.md §1).
 */
export function ucwiSignature(secretKey: string, timestamp: string): string {
  return createHmac('sha256', secretKey).update(secretKey + timestamp).digest('hex');
}

/** The two headers every UCWI call carries, computed fresh for `nowMs`. */
export function ucwiAuthHeaders(accessKey: string, secretKey: string, nowMs = Date.now()): Record<string, string> {
  const timestamp = Math.floor(nowMs / 1000).toString();
  return {
    'x-skg-timestamp': timestamp,
    authorization: `SKG ${accessKey}:${ucwiSignature(secretKey, timestamp)}`,
  };
}

export type AuthCheck = { ok: true } | { ok: false; reason: 'missing' | 'malformed' | 'unknown_key' | 'bad_signature' | 'clock_skew' };

/**
 * Server-side check: header names are case-insensitive (Node lowercases them), the timestamp must be
 * within `maxSkewSec` of our clock (UCWI answers 401 past 5 minutes), and the signature must match.
 */
export function verifyUcwiAuth(
  headers: Record<string, string | string[] | undefined>,
  keys: { accessKey: string; secretKey: string },
  nowMs = Date.now(),
  maxSkewSec = 300,
): AuthCheck {
  const auth = headers['authorization'];
  const ts = headers['x-skg-timestamp'];
  if (typeof auth !== 'string' || typeof ts !== 'string') return { ok: false, reason: 'missing' };
  const m = /^SKG ([^:\s]+):([0-9a-fA-F]{64})$/.exec(auth.trim());
  if (!m || !/^\d{1,12}$/.test(ts)) return { ok: false, reason: 'malformed' };
  if (m[1] !== keys.accessKey) return { ok: false, reason: 'unknown_key' };
  if (Math.abs(nowMs / 1000 - Number(ts)) > maxSkewSec) return { ok: false, reason: 'clock_skew' };
  const expected = Buffer.from(ucwiSignature(keys.secretKey, ts), 'hex');
  const given = Buffer.from(m[2]!.toLowerCase(), 'hex');
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return { ok: false, reason: 'bad_signature' };
  return { ok: true };
}
