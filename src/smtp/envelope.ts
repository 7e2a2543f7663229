// The one transaction model: the envelope as the client gave it, shared by ingress, pipeline, egress and quarantine (a leaf module: imports nothing).

/**
 * One ESMTP parameter exactly as it arrived: keyword upper-cased, value verbatim (still xtext-encoded
 * where the extension uses xtext), null for a keyword without "=". Relaying sends these back out byte
 * for byte, so a parameter we do not understand still reaches the next hop unchanged.
 */
export type EsmtpParam = readonly [keyword: string, value: string | null];

export interface Recipient {
  address: string;
  /** DSN NOTIFY values as the client sent them (upper case), e.g. ['FAILURE','DELAY'] or ['NEVER']. */
  notify?: string[];
  /** DSN ORCPT, xtext-decoded, e.g. 'rfc822;user@example.com'. */
  orcpt?: string;
  /** The RCPT TO parameters verbatim (absent in records written before the SMTP engine). */
  params?: EsmtpParam[];
}

export interface Envelope {
  /** '' = null sender. */
  from: string;
  to: Recipient[];
  smtpUtf8: boolean;
  bodyType?: '7bit' | '8bitmime';
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  /** Declared or known size in bytes (MAIL FROM SIZE=). */
  size?: number;
  /** The MAIL FROM parameters verbatim (absent in records written before the SMTP engine). */
  params?: EsmtpParam[];
}

/** xtext (RFC 3461 §4): "+XX" for octets outside "!".."~", "+" and "=". Decoded one char per octet (latin1). */
export function decodeXText(value: string): string {
  return value.replace(/\+([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/**
 * Encodes for xtext. Strings whose chars all fit in a byte are encoded octet for octet (latin1), so a
 * decoded value round-trips exactly; anything wider can only be real Unicode and goes out as UTF-8.
 */
export function encodeXText(value: string): string {
  const buf = Buffer.from(value, /^[\u0000-\u00ff]*$/.test(value) ? 'latin1' : 'utf8');
  let out = '';
  for (const c of buf) {
    out += c < 0x21 || c > 0x7e || c === 0x2b || c === 0x3d ? '+' + c.toString(16).toUpperCase().padStart(2, '0') : String.fromCharCode(c);
  }
  return out;
}

/** The parameters of a MAIL FROM or RCPT TO line as one string (" KEY=VALUE KEY"), empty when there are none. */
export function formatParams(params: readonly EsmtpParam[]): string {
  return params.map(([k, v]) => ` ${k}${v === null ? '' : `=${v}`}`).join('');
}

/** The client's MAIL FROM line with its parameters, byte for byte. */
export function mailLine(from: string, params: readonly EsmtpParam[]): string {
  return `MAIL FROM:<${from}>${formatParams(params)}`;
}

/** The client's RCPT TO line with its parameters, byte for byte. */
export function rcptLine(to: string, params: readonly EsmtpParam[]): string {
  return `RCPT TO:<${to}>${formatParams(params)}`;
}

/** A copy that shares nothing mutable with the original. */
export function cloneEnvelope(env: Envelope): Envelope {
  const out: Envelope = {
    ...env,
    to: env.to.map((r) => ({
      ...r,
      ...(r.notify ? { notify: [...r.notify] } : {}),
      ...(r.params ? { params: r.params.map((p) => [...p] as unknown as EsmtpParam) } : {}),
    })),
  };
  if (env.params) out.params = env.params.map((p) => [...p] as unknown as EsmtpParam);
  return out;
}
