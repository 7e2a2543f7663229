// The loop header that cannot be forged: "v1; t=<unix s>; q=<queryId>; mac=<HMAC-SHA-256>" under a relay key, minted on relay and checked on the way back in.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import type { HeaderField } from '../spool/spool.js';
import type { PolicySettings } from './policy.js';

/** Keys and freshness for minting and checking loop header values. */
export interface LoopKeys {
  /** Signs every new value; also checks incoming ones. */
  current: Buffer;
  /** The key before a rotation: still accepted for incoming values until `previousUntil` (epoch ms). */
  previous: Buffer | null;
  previousUntil: number | null;
  /** A value older than this (or more than MAX_SKEW_S in the future) is not trusted. */
  maxAgeSeconds: number;
}

export type LoopVerdict = { ok: true; t: number; q: string } | { ok: false; reason: 'malformed' | 'bad-mac' | 'expired' | 'future' };

/** Clocks of relays sharing a key may differ a little; a value minted "in the future" beyond this is refused. */
export const MAX_SKEW_S = 300;
const VALUE = /^v1; t=(\d{1,12}); q=([A-Za-z0-9._-]{1,128}); mac=([A-Za-z0-9_-]{43})$/;

/**
 * The Message-ID as the MAC covers it: whitespace removed, because an MTA on the way back may refold
 * the field. A message without one is bound to the empty string (the queryId and time still are).
 */
export function normalMessageId(value: string | null | undefined): string {
  return (value ?? '').replace(/\s+/g, '');
}

function mac(key: Buffer, t: number, q: string, messageId: string): Buffer {
  return createHmac('sha256', key)
    .update(`v1|${t}|${q}|${normalMessageId(messageId)}`, 'utf8')
    .digest();
}

/** The header value for a message we relay. `nowS`: unix seconds. */
export function mintLoopValue(key: Buffer, queryId: string, messageId: string | null, nowS: number): string {
  return `v1; t=${nowS}; q=${queryId}; mac=${mac(key, nowS, queryId, messageId ?? '').toString('base64url')}`;
}

/** Checks one incoming value: well-formed, signed by the current key (or the previous one within its date), fresh. */
export function verifyLoopValue(value: string, messageId: string | null, keys: LoopKeys, nowMs: number): LoopVerdict {
  const m = VALUE.exec(value.trim());
  if (!m) return { ok: false, reason: 'malformed' };
  const t = Number(m[1]);
  const q = m[2]!;
  const given = Buffer.from(m[3]!, 'base64url');
  const candidates = [keys.current];
  if (keys.previous && keys.previousUntil !== null && nowMs < keys.previousUntil) candidates.push(keys.previous);
  // Every candidate is compared (constant time each), so timing does not tell which key matched.
  let good = false;
  for (const k of candidates) {
    const want = mac(k, t, q, messageId ?? '');
    if (given.length === want.length && timingSafeEqual(given, want)) good = true;
  }
  if (!good) return { ok: false, reason: 'bad-mac' };
  const nowS = Math.floor(nowMs / 1000);
  if (t > nowS + MAX_SKEW_S) return { ok: false, reason: 'future' };
  if (nowS - t > keys.maxAgeSeconds) return { ok: false, reason: 'expired' };
  return { ok: true, t, q };
}

export interface LoopJudgement {
  /** skip: trusted and genuinely ours, relay without a scan; otherwise scan (after cutting `strip` out). */
  rule: 'skip' | 'strip-and-scan' | 'scan';
  /** Byte ranges of loop header fields to leave out of what is scanned and delivered. */
  strip: Array<{ start: number; end: number }>;
}

/**
 * Mints and judges loop header values for the pipeline. Only a valid, fresh value from a trusted
 * client skips the scan; every other loop header field is cut out and the message scanned, and an
 * invalid value is logged at warn as a forgery attempt.
 */
export class LoopGuard {
  private readonly name: string;

  constructor(
    header: string,
    private readonly keys: LoopKeys,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.name = header.toLowerCase();
  }

  judge(headers: readonly HeaderField[], clientTrusted: boolean, ctx: { queryId: string; clientAddress: string }): LoopJudgement {
    const fields = headers.filter((h) => h.name === this.name);
    if (fields.length === 0) return { rule: 'scan', strip: [] };
    const messageId = headers.find((h) => h.name === 'message-id')?.value ?? null;
    const verdicts = fields.map((f) => verifyLoopValue(f.value, messageId, this.keys, this.now()));
    if (clientTrusted && verdicts.some((v) => v.ok)) return { rule: 'skip', strip: [] };
    const bad = verdicts.filter((v): v is Extract<LoopVerdict, { ok: false }> => !v.ok);
    if (bad.length > 0) {
      this.logger.warn({ queryId: ctx.queryId, client: ctx.clientAddress, trusted: clientTrusted, reasons: bad.map((v) => v.reason) }, 'loop header forgery');
    } else {
      // A genuine value from a client outside trustedNetworks: not a forgery, but not a reason to skip either.
      this.logger.info({ queryId: ctx.queryId, client: ctx.clientAddress }, 'loop header from an untrusted client removed');
    }
    return { rule: 'strip-and-scan', strip: fields.map((f) => ({ start: f.start, end: f.end })) };
  }

  /** Replaces the value of our loop header in `headers` (as policy.decide produced them) with a signed one. */
  seal(headers: ReadonlyArray<readonly [string, string]>, messageId: string | null, queryId: string): Array<[string, string]> {
    const nowS = Math.floor(this.now() / 1000);
    return headers.map(([k, v]): [string, string] =>
      k.toLowerCase() === this.name ? [k, mintLoopValue(this.keys.current, queryId, messageId, nowS)] : [k, v],
    );
  }
}

/** The loop settings as the config schema gives them (policy.loop), with the keys read from secrets. */
export type LoopConfig = Pick<PolicySettings['loop'], 'header' | 'maxAgeSeconds' | 'previousKeyUntil'> & { key: string | null; previousKey: string | null };

/**
 * Builds the guard from the configuration. Without a configured key a random one is made for this
 * process: the relay still cannot be fooled, but a copy relayed by another relay (or this one before
 * a restart) is scanned again, so say so loudly.
 */
export function loopGuardFromConfig(c: LoopConfig, logger: Logger): LoopGuard {
  let current: Buffer;
  if (c.key) current = Buffer.from(c.key, 'utf8');
  else {
    current = randomBytes(32);
    logger.warn(
      { setting: 'policy.loop.keyFile' },
      'no loop header key configured (policy.loop.keyFile or DLP_RELAY_LOOP_KEY): using a random key for this process; other relays, and this one after a restart, will not recognise its loop headers and will scan reflected mail again',
    );
  }
  const keys: LoopKeys = {
    current,
    previous: c.previousKey ? Buffer.from(c.previousKey, 'utf8') : null,
    previousUntil: c.previousKeyUntil ? Date.parse(c.previousKeyUntil) : null,
    maxAgeSeconds: c.maxAgeSeconds,
  };
  return new LoopGuard(c.header, keys, logger);
}
