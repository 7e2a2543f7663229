// Makes smtp-server send our enhanced status codes: a reply text that starts with "x.y.z " is sent with exactly that code.
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const ENHANCED_PREFIX = /^([245]\.\d{1,3}\.\d{1,3}) ([\s\S]*)$/;
let installed = false;

/**
 * smtp-server picks the enhanced code from the basic code alone (550 → 5.1.1 "mailbox unavailable"),
 * which is wrong for a DLP block (5.7.1) or a next-hop pass-through. Our catalogue puts the right code
 * at the start of the text; this wrapper sends it as the enhanced code, or drops it when the session
 * did not enable ENHANCEDSTATUSCODES. smtp-server is pinned exactly; test/integration asserts the
 * exact reply lines, so a change in its internals fails the suite instead of the mail flow.
 */
export function installEnhancedReplyPatch(): void {
  if (installed) return;
  installed = true;
  const proto = SMTPConnection.prototype;
  const original = proto.send;
  proto.send = function patchedSend(this: SMTPConnection, code: number, data?: string | string[], context?: string | false) {
    if (typeof data === 'string') {
      const m = ENHANCED_PREFIX.exec(data);
      if (m) {
        // context false = "add no enhanced code of your own"; ours is already in the text when enabled.
        return original.call(this, code, this._useEnhancedStatusCodes() ? data : m[2], false);
      }
    }
    return original.call(this, code, data, context);
  };
}
