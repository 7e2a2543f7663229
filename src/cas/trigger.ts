// The pure decision whether a UCWI verdict triggers a blocked-list push, and which senders are never pushed.

/**
 * Whether a verdict triggers a push. A missing actionCode (UCWI unavailable, fail-open) never does:
 * we only block what the DLP server actually judged.
 */
export function shouldPush(actionCode: number | null, triggerCodes: readonly number[]): boolean {
  return actionCode !== null && Number.isInteger(actionCode) && triggerCodes.includes(actionCode);
}

/**
 * Whether an envelope sender is ours and therefore never pushed. Domains match case-insensitively,
 * including subdomains (`example.com` exempts `mail.example.com`); a leading `@` or `.` is tolerated.
 */
export function isExemptSender(sender: string, exemptDomains: readonly string[], exemptSenders: readonly string[]): boolean {
  const s = sender.trim().toLowerCase();
  if (exemptSenders.some((e) => e.trim().toLowerCase() === s)) return true;
  const at = s.lastIndexOf('@');
  if (at < 0) return false;
  const domain = s.slice(at + 1);
  return exemptDomains.some((d) => {
    const e = d
      .trim()
      .toLowerCase()
      .replace(/^[@.]+/, '');
    return e.length > 0 && (domain === e || domain.endsWith(`.${e}`));
  });
}
