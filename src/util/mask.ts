// One masking function for everything printed or logged: passwords in URL userinfo, bearer tokens and key=value secrets in any text.
export const MASK = '********';

/** scheme://user:password@ or scheme://token@ — everything up to the last '@' before the host part. */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s/?#@]*@)/gi;
/** Secrets carried in a query string or a key=value text. */
const KEY_VALUE = /\b((?:access[_-]?key|secret(?:[_-]?key)?|token|api[_-]?key|password|passwd|pass|pwd|sig|signature)=)[^\s&#"',;]+/gi;
const BEARER = /\b(Bearer\s+)[A-Za-z0-9._~+/=-]+/g;

function maskUserinfo(userinfo: string): string {
  const at = userinfo.slice(0, -1);
  const colon = at.indexOf(':');
  // A user name alone may itself be a token (https://TOKEN@host): mask it whole; with a password keep the user for the admin.
  return colon < 0 ? `${MASK}@` : `${at.slice(0, colon)}:${MASK}@`;
}

/** Masks every secret-looking part of free text: URL passwords, bearer tokens, token=/key=/password= values. */
export function maskSecrets(text: string): string {
  if (!text) return text;
  let out = text;
  if (out.includes('://')) out = out.replace(URL_USERINFO, (_m, scheme: string, ui: string) => scheme + maskUserinfo(ui));
  if (out.includes('=')) out = out.replace(KEY_VALUE, `$1${MASK}`);
  if (/bearer/i.test(out)) out = out.replace(BEARER, `$1${MASK}`);
  return out;
}

/** A URL for display: the same masking, and null stays null. */
export function maskUrl(url: string | null | undefined): string {
  return url ? maskSecrets(url) : String(url);
}

/** Every string in a JSON-like value masked (for check-config and similar dumps); returns a new value. */
export function maskDeep<T>(value: T): T {
  if (typeof value === 'string') return maskSecrets(value) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => maskDeep(v)) as T;
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, maskDeep(v)])) as T;
  return value;
}
