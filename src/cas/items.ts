// Blocked-list item kinds, format checks and normalisation: one definition shared by the CLI, the outbox, the extractor and the simulator.

/** The four lists of POST /v1/remediation/mails, in the order the vendor documents them (cas.md §3). */
export const CAS_LISTS = ['senders', 'urls', 'filehashes', 'file256hashes'] as const;
export type CasList = (typeof CAS_LISTS)[number];

export type CasRuleAction = 'create' | 'delete';

/** The `rules` object of a remediation request; every key optional, at least one non-empty on the wire. */
export type CasRules = Partial<Record<CasList, string[]>>;

/** "A maximum of 2,048 items in each list is supported" (seed 001/002); we treat it as a per-request cap. */
export const MAX_ITEMS_PER_LIST = 2048;

export function isCasList(s: unknown): s is CasList {
  return typeof s === 'string' && (CAS_LISTS as readonly string[]).includes(s);
}

// Pragmatic address syntax: a dot-atom-ish local part and a dotted host name. Quoted local parts and
// address literals are legal in RFC 5321 but never appear as spam senders worth blocking, and CAS's
// own acceptance rules are unknown (cas.md §3), so we refuse rather than risk a 400 for the batch.
const EMAIL_RE = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;

export function isEmailAddress(s: string): boolean {
  if (s.length > 254 || !EMAIL_RE.test(s)) return false;
  const local = s.slice(0, s.lastIndexOf('@'));
  return local.length <= 64 && !local.startsWith('.') && !local.endsWith('.') && !local.includes('..');
}

/** Absolute http(s) URL with a host: the only kind the vendor examples and integrations send (cas.md §3). */
export function isHttpUrl(s: string): boolean {
  if (s.length > 2048 || /\s/.test(s)) return false;
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return false;
  }
  return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname.length > 0;
}

export const SHA1_RE = /^[0-9a-fA-F]{40}$/;
export const SHA256_RE = /^[0-9a-fA-F]{64}$/;

/** Why `value` is not acceptable for `list`, or null when it is. */
export function itemProblem(list: CasList, value: string): string | null {
  switch (list) {
    case 'senders':
      return isEmailAddress(value) ? null : 'not an email address';
    case 'urls':
      return isHttpUrl(value) ? null : 'not an absolute http(s) URL';
    case 'filehashes':
      return SHA1_RE.test(value) ? null : 'not a SHA-1 hash (40 hex digits)';
    case 'file256hashes':
      return SHA256_RE.test(value) ? null : 'not a SHA-256 hash (64 hex digits)';
  }
}

/**
 * The form we store and send: trimmed; addresses and hashes lowercased so that de-duplication and the
 * comparison with GET output are case-insensitive (Siemplify compares case-insensitively too). URLs keep
 * their case: paths are case-sensitive.
 */
export function normalizeItem(list: CasList, value: string): string {
  const v = value.trim();
  return list === 'urls' ? v : v.toLowerCase();
}

/**
 * Key for "is this already on the list": CAS was observed to return URLs without scheme and with a
 * trailing slash appended (cas.md §3), so URLs compare on lowercased host+path without either.
 */
export function compareKey(list: CasList, value: string): string {
  const v = normalizeItem(list, value);
  if (list !== 'urls') return v;
  const noScheme = v.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = noScheme.indexOf('/');
  const host = (slash < 0 ? noScheme : noScheme.slice(0, slash)).toLowerCase();
  const rest = slash < 0 ? '' : noScheme.slice(slash);
  return (host + rest).replace(/\/+$/, '');
}

/** Count of items per list, for logs and the simulator's request log. */
export function ruleCounts(rules: CasRules): Record<CasList, number> {
  return {
    senders: rules.senders?.length ?? 0,
    urls: rules.urls?.length ?? 0,
    filehashes: rules.filehashes?.length ?? 0,
    file256hashes: rules.file256hashes?.length ?? 0,
  };
}
