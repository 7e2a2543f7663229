// What crosses from the client to the next hop and back: parameters the next hop can take, its replies passed on to our client, and failures as DeliveryError.
import { SmtpClientError, type Reply, type SmtpClient } from '../smtp/client.js';
import { encodeXText, type Envelope, type EsmtpParam, type Recipient } from '../smtp/envelope.js';
import { catalogueReply, type SmtpReply, DlpError } from '../errors.js';

export type DeliveryPhase = 'connect' | 'tls' | 'auth' | 'pool' | 'mail' | 'rcpt' | 'data' | 'timeout' | 'aborted';

export interface DeliveryErrorInit {
  kind: 'permanent' | 'transient';
  phase: DeliveryPhase;
  code?: number;
  enhanced?: string;
  response?: string;
  cause?: unknown;
}

/** A next-hop failure that no reply of the next hop decided (or one that makes the connection unusable). */
export class DeliveryError extends DlpError {
  readonly errorCode = 'DLP_ERR_NEXT_HOP' as const;
  kind: 'permanent' | 'transient';
  phase: DeliveryPhase;
  code?: number;
  enhanced?: string;
  /** The next hop's reply as one line, when a reply caused the failure. */
  response?: string;
  constructor(message: string, init: DeliveryErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'DeliveryError';
    this.kind = init.kind;
    this.phase = init.phase;
    if (init.code !== undefined) this.code = init.code;
    if (init.enhanced !== undefined) this.enhanced = init.enhanced;
    if (init.response !== undefined) this.response = init.response;
  }
}

/** Maps an SmtpClientError (or anything thrown) to a DeliveryError; never permanent, since no 5xx decided it. */
export function fromClientError(err: unknown, fallback: DeliveryPhase): DeliveryError {
  if (err instanceof DeliveryError) return err;
  if (err instanceof SmtpClientError) {
    const phase: DeliveryPhase =
      err.kind === 'aborted'
        ? 'aborted'
        : err.kind === 'timeout'
          ? 'timeout'
          : err.kind === 'tls'
            ? 'tls'
            : err.kind === 'auth'
              ? 'auth'
              : err.phase === 'connect' || err.phase === 'greeting' || err.phase === 'ehlo'
                ? 'connect'
                : err.phase === 'mail' || err.phase === 'rcpt'
                  ? err.phase
                  : err.phase === 'data' || err.phase === 'message'
                    ? 'data'
                    : fallback;
    return new DeliveryError(`next hop ${err.kind} during ${err.phase}: ${err.message}`, {
      kind: 'transient',
      phase,
      ...(err.reply ? { code: err.reply.code, response: String(err.reply), ...(err.reply.enhanced ? { enhanced: err.reply.enhanced } : {}) } : {}),
      cause: err,
    });
  }
  return new DeliveryError(`next-hop delivery failed: ${(err as Error)?.message ?? String(err)}`, { kind: 'transient', phase: fallback, cause: err });
}

/** Which EHLO keyword a MAIL/RCPT parameter needs before it may be sent (RFC 1870, 6152, 6531, 3461, 4954). */
const NEEDS: Record<string, string> = {
  SIZE: 'SIZE',
  BODY: '8BITMIME',
  SMTPUTF8: 'SMTPUTF8',
  RET: 'DSN',
  ENVID: 'DSN',
  NOTIFY: 'DSN',
  ORCPT: 'DSN',
  AUTH: 'AUTH',
};

/** Keeps the client's parameters byte for byte, minus those the next hop did not announce (it would answer 555). */
function supported(params: readonly EsmtpParam[], client: Pick<SmtpClient, 'has'>): EsmtpParam[] {
  return params.filter(([k]) => client.has(NEEDS[k] ?? k));
}

/** MAIL FROM parameters: the client's own when we have them, else rebuilt from the envelope (older quarantine records). */
export function mailParamsFor(env: Envelope, client: Pick<SmtpClient, 'has'>): EsmtpParam[] {
  const params: EsmtpParam[] = env.params
    ? [...env.params]
    : [
        ...(env.size !== undefined ? [['SIZE', String(env.size)] as const] : []),
        ...(env.bodyType === '8bitmime' ? [['BODY', '8BITMIME'] as const] : []),
        ...(env.smtpUtf8 ? [['SMTPUTF8', null] as const] : []),
        ...(env.ret ? [['RET', env.ret] as const] : []),
        ...(env.envid ? [['ENVID', encodeXText(env.envid)] as const] : []),
      ];
  return supported(params, client);
}

export function rcptParamsFor(r: Recipient, client: Pick<SmtpClient, 'has'>): EsmtpParam[] {
  const params: EsmtpParam[] = r.params
    ? [...r.params]
    : [...(r.notify?.length ? [['NOTIFY', r.notify.join(',')] as const] : []), ...(r.orcpt ? [['ORCPT', encodeXText(r.orcpt)] as const] : [])];
  return supported(params, client);
}

/** Printable ASCII, one line, bounded: a next hop's text must not break our reply or carry control bytes. */
function cleanText(text: string): string {
  return text
    .replace(/[^\x20-\x7e]+/g, ' ')
    .trim()
    .slice(0, 400);
}

/**
 * The next hop's reply as our reply to the client: code, enhanced code and text as it gave them. A 421
 * becomes 451 (we are not closing the client's session), and a code outside 2xx/4xx/5xx is a protocol
 * fault of the next hop, answered with our own 451.
 */
export function passThrough(reply: Reply, ref?: string): SmtpReply {
  const cls = Math.floor(reply.code / 100);
  if (cls !== 2 && cls !== 4 && cls !== 5) return catalogueReply('NEXT_HOP_LOST', ref);
  const code = reply.code === 421 ? 451 : reply.code;
  return { code, enhanced: reply.enhanced ?? `${cls}.0.0`, text: cleanText(reply.text) || (cls === 2 ? 'Ok' : 'Refused by next hop') };
}
