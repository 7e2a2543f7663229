// The CAS simulator's own reading of request bodies, written from shared/reference/cas.md §3, §5 and §11 and NOT from
// the client's checks (cas/items.ts, cas/validate.ts): a rule the client gets wrong cannot pass because both share it.

/** The four lists of POST /v1/remediation/mails (cas.md §3 request example). */
export const REMEDIATION_LISTS = ['senders', 'urls', 'filehashes', 'file256hashes'] as const;
export type RemediationList = (typeof REMEDIATION_LISTS)[number];

/** "A maximum of 2,048 items in each list is supported" (cas.md §3). */
export const MAX_ITEMS_PER_REQUEST_LIST = 2048;

export function isRemediationList(k: string): k is RemediationList {
  return (REMEDIATION_LISTS as readonly string[]).includes(k);
}

/**
 * Strict item format checks (cas.md §11 simulator 4: "email, URL, 40- or 64-hex"). Deliberately plain: an address
 * is one `@` with a dotted domain and no blanks or brackets; a URL is absolute http(s) with a host.
 */
export function remediationItemProblem(list: RemediationList, raw: string): string | null {
  const v = raw.trim();
  if (!v) return 'empty';
  switch (list) {
    case 'senders': {
      const parts = v.split('@');
      if (parts.length !== 2 || v.length > 254) return 'not an email address';
      const [local, domain] = parts as [string, string];
      if (!local || local.length > 64 || /[\s<>()[\]\\,;:"]/.test(local)) return 'not an email address';
      if (!/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(domain)) return 'not an email address';
      return null;
    }
    case 'urls': {
      if (/\s/.test(v)) return 'not a URL';
      let host = '';
      let scheme = '';
      try {
        const u = new URL(v);
        host = u.hostname;
        scheme = u.protocol;
      } catch {
        return 'not a URL';
      }
      return (scheme === 'http:' || scheme === 'https:') && host ? null : 'not an http(s) URL';
    }
    case 'filehashes':
      return /^[0-9a-f]{40}$/i.test(v) ? null : 'not a 40-hex SHA-1';
    case 'file256hashes':
      return /^[0-9a-f]{64}$/i.test(v) ? null : 'not a 64-hex SHA-256';
  }
}

const ACTIONS = ['MAIL_DELETE', 'MAIL_QUARANTINE', 'MAIL_RESTORE'];
const SERVICE_PROVIDER: Record<string, string> = { exchange: 'office365', gmail: 'google' };
const FIELDS = new Set([
  'action_type',
  'service',
  'account_provider',
  'mailbox',
  'mail_message_id',
  'mail_unique_id',
  'mail_message_delivery_time',
  'detection_time',
  'mail_log_id',
]);

/** A date-time with a zone that Date can read: CAS times are UTC ISO 8601 (cas.md §5, §6 examples). */
export function isZonedDateTime(s: string): boolean {
  return /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$/.test(s) && !Number.isNaN(Date.parse(s));
}

/** Problems of one POST /v1/mitigation/mails item (cas.md §5 field table, §11 simulator 6); empty when valid. */
export function mitigationItemProblems(item: unknown): string[] {
  if (!item || typeof item !== 'object' || Array.isArray(item)) return ['must be an object'];
  const o = item as Record<string, unknown>;
  const out: string[] = [];
  for (const k of Object.keys(o)) if (!FIELDS.has(k)) out.push(`${k}: unknown field`);
  const str = (k: string): string | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') {
      out.push(`${k}: must be a string`);
      return undefined;
    }
    return v.trim() || undefined;
  };
  const action = str('action_type');
  const service = str('service');
  const provider = str('account_provider');
  const mailbox = str('mailbox');
  const messageId = str('mail_message_id');
  const uniqueId = str('mail_unique_id');
  if (!action || !ACTIONS.includes(action)) out.push('action_type: MAIL_DELETE, MAIL_QUARANTINE or MAIL_RESTORE');
  if (!service || !(service in SERVICE_PROVIDER)) out.push('service: exchange or gmail');
  if (!provider || (service && service in SERVICE_PROVIDER && SERVICE_PROVIDER[service] !== provider))
    out.push('account_provider: office365 for exchange, google for gmail');
  if (!mailbox || remediationItemProblem('senders', mailbox)) out.push('mailbox: an email address');
  if (!messageId && !uniqueId) out.push('mail_message_id or mail_unique_id required');
  if (service === 'gmail' && action && action !== 'MAIL_DELETE') out.push('action_type: Gmail supports only MAIL_DELETE');
  if (action === 'MAIL_RESTORE') {
    if (service !== 'exchange') out.push('service: MAIL_RESTORE is Exchange Online only');
    if (!str('detection_time')) out.push('detection_time: required for MAIL_RESTORE');
    if (!str('mail_log_id')) out.push('mail_log_id: required for MAIL_RESTORE');
  }
  for (const k of ['mail_message_delivery_time', 'detection_time']) {
    const v = str(k);
    if (v && !isZonedDateTime(v)) out.push(`${k}: ISO 8601 date-time with zone`);
  }
  return out;
}
