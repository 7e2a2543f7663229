// Console accounts: a JSON file under the state directory (written durably, mode 0600) of scrypt-hashed passwords and roles; the CLI edits it, the console re-reads it at each sign-in.
import { randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { writeDurably } from '../util/durable-file.js';

export type Role = 'viewer' | 'reviewer' | 'admin';
export const ROLES: readonly Role[] = ['viewer', 'reviewer', 'admin'];

/** What each role may do; a higher role includes the lower ones. */
export const CAN = {
  view: (r: Role) => r === 'viewer' || r === 'reviewer' || r === 'admin',
  decide: (r: Role) => r === 'reviewer' || r === 'admin', // release, delete, download, bulk
  administer: (r: Role) => r === 'admin', // audit, purge, users
};

export interface ConsoleUser {
  name: string;
  role: Role;
  /** "scrypt$N$r$p$salt$hash" (base64 parts): parameters travel with the hash so they can be raised later. */
  hash: string;
  disabled: boolean;
  createdAt: string;
  passwordChangedAt: string;
}

interface UsersFile {
  version: 1;
  users: ConsoleUser[];
}

/** N=2^15, r=8: about 32 MiB and tens of milliseconds per check, which is what a sign-in can afford. */
const N = 32768;
const R = 8;
const P = 1;
const KEYLEN = 32;
const MAXMEM = 64 * 1024 * 1024;

function scrypt(password: string, salt: Buffer, n: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password.normalize('NFC'), salt, KEYLEN, { N: n, r, p, maxmem: MAXMEM }, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

export async function hashConsolePassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, N, R, P);
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** A fixed hash checked when the user is unknown, so unknown and known names take the same time. */
let dummyHash: Promise<string> | null = null;

export async function verifyConsolePassword(password: string, hash: string): Promise<boolean> {
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(hash);
  if (!m) return false;
  const [n, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // Bounded parameters: a tampered file must not make a sign-in allocate gigabytes.
  if (n < 1024 || n > 1 << 20 || r < 1 || r > 32 || p < 1 || p > 4) return false;
  const expected = Buffer.from(m[5]!, 'base64');
  const got = await scrypt(password, Buffer.from(m[4]!, 'base64'), n, r, p);
  return got.length === expected.length && timingSafeEqual(got, expected);
}

export class UserInputError extends Error {}

export const USER_NAME = /^[A-Za-z0-9._@-]{1,64}$/;

function checkName(name: string): void {
  if (!USER_NAME.test(name)) throw new UserInputError('a user name is 1-64 characters of letters, digits and . _ @ -');
}

function checkPassword(pw: string): void {
  if (pw.length < 12) throw new UserInputError('a password needs at least 12 characters');
  if (pw.length > 1024) throw new UserInputError('a password is at most 1024 characters');
}

function checkRole(role: string): asserts role is Role {
  if (!ROLES.includes(role as Role)) throw new UserInputError(`role must be one of ${ROLES.join(', ')}`);
}

/** The users file. Every change reads, edits and rewrites it atomically (temp file, fsync, rename). */
export class FileUserStore {
  constructor(readonly file: string) {}

  async load(): Promise<ConsoleUser[]> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const parsed = JSON.parse(text) as UsersFile;
    if (parsed?.version !== 1 || !Array.isArray(parsed.users)) throw new Error(`${this.file}: not a console users file`);
    return parsed.users;
  }

  private async save(users: ConsoleUser[]): Promise<void> {
    const body: UsersFile = { version: 1, users };
    await writeDurably(this.file, `${JSON.stringify(body, null, 2)}\n`, 0o600);
  }

  async get(name: string): Promise<ConsoleUser | null> {
    return (await this.load()).find((u) => u.name === name) ?? null;
  }

  async add(name: string, role: string, password: string): Promise<ConsoleUser> {
    checkName(name);
    checkRole(role);
    checkPassword(password);
    const users = await this.load();
    if (users.some((u) => u.name === name)) throw new UserInputError(`user ${name} exists (use passwd)`);
    const now = new Date().toISOString();
    const user: ConsoleUser = { name, role, hash: await hashConsolePassword(password), disabled: false, createdAt: now, passwordChangedAt: now };
    users.push(user);
    await this.save(users);
    return user;
  }

  /** New password; also re-enables a disabled account and may change the role. */
  async passwd(name: string, password: string, role?: string): Promise<ConsoleUser> {
    checkPassword(password);
    if (role !== undefined) checkRole(role);
    const users = await this.load();
    const user = users.find((u) => u.name === name);
    if (!user) throw new UserInputError(`no user ${name}`);
    user.hash = await hashConsolePassword(password);
    user.passwordChangedAt = new Date().toISOString();
    user.disabled = false;
    if (role !== undefined) user.role = role;
    await this.save(users);
    return user;
  }

  async disable(name: string): Promise<ConsoleUser> {
    const users = await this.load();
    const user = users.find((u) => u.name === name);
    if (!user) throw new UserInputError(`no user ${name}`);
    user.disabled = true;
    await this.save(users);
    return user;
  }

  /** The user when name and password match an enabled account, else null; the same work either way. */
  async verify(name: string, password: string): Promise<ConsoleUser | null> {
    const user = USER_NAME.test(name) ? await this.get(name) : null;
    dummyHash ??= hashConsolePassword(randomBytes(16).toString('hex'));
    const ok = await verifyConsolePassword(password, user?.hash ?? (await dummyHash));
    return ok && user && !user.disabled ? user : null;
  }
}
