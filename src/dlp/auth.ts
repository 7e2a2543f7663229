// UCWI request signing: the SKG HMAC scheme (the embedded engine verifies it with its own code, engine/verify-auth.ts).
import { createHmac } from 'node:crypto';

/**
 * Signature as UCWI's own Python sample computes it: HMAC-SHA256 keyed with the secret over
 * `secret + timestamp`, lowercase hex. The prose on the vendor page disagrees with its code; both
 * public clients follow the code, so we do too (see shared/reference/ucwi.md §1).
 */
export function ucwiSignature(secretKey: string, timestamp: string): string {
  return createHmac('sha256', secretKey)
    .update(secretKey + timestamp)
    .digest('hex');
}

/** The last signature made: the timestamp has one-second resolution, so a busy relay signs once a second, not once a message. */
let last: { secretKey: string; timestamp: string; signature: string } | null = null;

/** The two headers every UCWI call carries, for `nowMs` (the signature is reused within the same second). */
export function ucwiAuthHeaders(accessKey: string, secretKey: string, nowMs = Date.now()): Record<string, string> {
  const timestamp = Math.floor(nowMs / 1000).toString();
  if (last?.timestamp !== timestamp || last.secretKey !== secretKey) last = { secretKey, timestamp, signature: ucwiSignature(secretKey, timestamp) };
  return {
    'x-skg-timestamp': timestamp,
    authorization: `SKG ${accessKey}:${last.signature}`,
  };
}
