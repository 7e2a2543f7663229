// SMTP AUTH credentials: a users file of "user:scrypt$salt$hash" lines, verified in constant time; passwords are never stored or logged in clear.
import { randomBytes, scryptSync, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';

const scrypt = promisify(scryptCb) as (pw: string, salt: Buffer, keylen: number) => Promise<Buffer>;
const KEYLEN = 32;

/** "scrypt$<salt base64>$<hash base64>" for a password (what `dlp-relay hash-password` prints). */
export function hashPassword(password: string): string {
  const salt = randomBytes(16);
  return `scrypt$${salt.toString('base64')}$${scryptSync(password, salt, KEYLEN).toString('base64')}`;
}

export class UserDb {
  private readonly users = new Map<string, { salt: Buffer; hash: Buffer }>();

  /** Parses the file; a malformed line is an error naming its line number (never its content). */
  constructor(text: string) {
    text.split(/\r?\n/).forEach((line, i) => {
      const t = line.trim();
      if (!t || t.startsWith('#')) return;
      const m = /^([^:\s]+):scrypt\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(t);
      if (!m) throw new Error(`users file line ${i + 1}: expected user:scrypt$salt$hash`);
      this.users.set(m[1]!, { salt: Buffer.from(m[2]!, 'base64'), hash: Buffer.from(m[3]!, 'base64') });
    });
  }

  static fromFile(path: string): UserDb {
    return new UserDb(readFileSync(path, 'utf8'));
  }

  get size(): number {
    return this.users.size;
  }

  async verify(user: string, password: string): Promise<boolean> {
    const u = this.users.get(user);
    // Unknown users cost the same as known ones, so timing does not tell which names exist.
    const salt = u?.salt ?? Buffer.alloc(16);
    const got = await scrypt(password, salt, KEYLEN);
    return u !== undefined && got.length === u.hash.length && timingSafeEqual(got, u.hash);
  }
}
