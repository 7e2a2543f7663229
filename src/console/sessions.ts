// Console sessions (in memory, random ids, idle and absolute expiry), their cookie, per-session CSRF tokens, and the sign-in lockout.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { Role } from './users.js';

export interface Session {
  id: string;
  user: string;
  role: Role;
  /** Synchronizer token: every state-changing form carries it. */
  csrf: string;
  createdAt: number;
  lastSeen: number;
}

export interface SessionLimits {
  idleMs: number;
  maxMs: number;
}

/**
 * In memory on purpose: a restart signs everyone out, and nothing that grants access is ever written
 * to disk. One console process per store; several relays behind one proxy need sticky sessions.
 */
export class SessionStore {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly limits: SessionLimits,
    private readonly now: () => number = Date.now,
  ) {}

  create(user: string, role: Role): Session {
    this.sweep();
    const t = this.now();
    const s: Session = { id: randomBytes(32).toString('base64url'), user, role, csrf: randomBytes(32).toString('base64url'), createdAt: t, lastSeen: t };
    this.sessions.set(s.id, s);
    return s;
  }

  /** The live session for this id (touching it), or null when unknown or expired. */
  get(id: string | undefined): Session | null {
    if (!id) return null;
    const s = this.sessions.get(id);
    if (!s) return null;
    const t = this.now();
    if (t - s.lastSeen > this.limits.idleMs || t - s.createdAt > this.limits.maxMs) {
      this.sessions.delete(id);
      return null;
    }
    s.lastSeen = t;
    return s;
  }

  destroy(id: string): void {
    this.sessions.delete(id);
  }

  /** Ends every session of a user (account disabled or password changed elsewhere is noticed at next sign-in only). */
  destroyUser(user: string): void {
    for (const [id, s] of this.sessions) if (s.user === user) this.sessions.delete(id);
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.sessions) if (t - s.lastSeen > this.limits.idleMs || t - s.createdAt > this.limits.maxMs) this.sessions.delete(id);
  }
}

/** Constant-time comparison of two tokens of any length. */
export function sameToken(a: string | undefined | null, b: string): boolean {
  const da = createHash('sha256')
    .update(a ?? '')
    .digest();
  const db = createHash('sha256').update(b).digest();
  return timingSafeEqual(da, db) && a !== undefined && a !== null && a !== '';
}

/** Counts failed sign-ins per account; at the limit the account is refused (even with the right password) until the lock ends. */
export class LoginThrottle {
  private readonly failures = new Map<string, { count: number; lockedUntil: number }>();

  constructor(
    private readonly maxFailures: number,
    private readonly lockoutMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  locked(name: string): boolean {
    const f = this.failures.get(name);
    if (!f || f.lockedUntil === 0) return false;
    if (this.now() >= f.lockedUntil) {
      this.failures.delete(name);
      return false;
    }
    return true;
  }

  /** Returns true when this failure locked the account. */
  fail(name: string): boolean {
    const f = this.failures.get(name) ?? { count: 0, lockedUntil: 0 };
    f.count++;
    if (f.count >= this.maxFailures) f.lockedUntil = this.now() + this.lockoutMs;
    // Bounded memory under a spray of made-up names: forget the oldest entries.
    if (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value!);
    this.failures.set(name, f);
    return f.lockedUntil !== 0;
  }

  succeed(name: string): void {
    this.failures.delete(name);
  }
}

export function parseCookies(h: IncomingHttpHeaders): Map<string, string> {
  const out = new Map<string, string>();
  const raw = h.cookie;
  if (typeof raw !== 'string') return out;
  for (const part of raw.split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const k = part.slice(0, eq).trim();
    if (!out.has(k)) out.set(k, part.slice(eq + 1).trim());
  }
  return out;
}

export interface CookiePolicy {
  secure: boolean;
  basePath: string;
}

/**
 * `__Host-` when Secure: the browser then refuses the cookie from a sub-domain or without Secure/Path=/.
 * Plain HTTP (loopback, tests) cannot use the prefix, so the name differs and the path narrows to the console.
 */
export function cookieName(kind: 'session' | 'login', p: CookiePolicy): string {
  return `${p.secure ? '__Host-' : ''}dlp_console_${kind}`;
}

export function setCookie(kind: 'session' | 'login', value: string, p: CookiePolicy, maxAgeS?: number): string {
  const attrs = [`${cookieName(kind, p)}=${value}`, `Path=${p.secure ? '/' : p.basePath}`, 'HttpOnly', 'SameSite=Strict'];
  if (p.secure) attrs.push('Secure');
  if (maxAgeS !== undefined) attrs.push(`Max-Age=${maxAgeS}`);
  return attrs.join('; ');
}
