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

/** The two headers every UCWI call carries, computed fresh for `nowMs`. */
export function ucwiAuthHeaders(accessKey: string, secretKey: string, nowMs = Date.now()): Record<string, string> {
  const timestamp = Math.floor(nowMs / 1000).toString();
  return {
    'x-skg-timestamp': timestamp,
    authorization: `SKG ${accessKey}:${ucwiSignature(secretKey, timestamp)}`,
  };
}
