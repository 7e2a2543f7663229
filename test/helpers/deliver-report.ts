// DeliveryReport builders for quarantine tests: what a deliver function says when the next hop takes (or answers) every recipient.
import type { DeliveryReport } from '../../src/quarantine/operations.js';
import type { StoredEnvelope } from '../../src/quarantine/types.js';

/** Every recipient accepted; the response doubles as the final DATA reply. */
export function acceptAll(env: StoredEnvelope, response = '250 2.0.0 Ok'): DeliveryReport {
  const code = Number(/^\d{3}/.exec(response)?.[0] ?? 250);
  return { response, recipients: env.to.map((r) => ({ address: r.address, status: 'accepted', code, response })) };
}
