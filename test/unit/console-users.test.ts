// Console accounts and sessions: scrypt hashes, roles, disable/passwd, the CLI on the users file, lockout and session expiry.
import { describe, it, expect } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { testTempDir } from '../helpers/tmp.js';
import { FileUserStore, UserInputError, verifyConsolePassword } from '../../src/console/users.js';
import { LoginThrottle, SessionStore, sameToken, setCookie } from '../../src/console/sessions.js';

describe('console users file', () => {
  it('stores scrypt hashes (never the password) with mode 0600, verifies, disables and changes passwords', async () => {
    const file = join(testTempDir('dlp-users-'), 'users.json');
    const s = new FileUserStore(file);
    await s.add('rita', 'reviewer', 'correct horse battery');
    const text = readFileSync(file, 'utf8');
    expect(text).not.toContain('correct horse');
    expect(text).toMatch(/"hash": "scrypt\$32768\$8\$1\$/);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect((await s.verify('rita', 'correct horse battery'))?.role).toBe('reviewer');
    expect(await s.verify('rita', 'correct horse batterY')).toBeNull();
    expect(await s.verify('nobody', 'correct horse battery')).toBeNull();
    await expect(s.add('rita', 'viewer', 'another long password')).rejects.toBeInstanceOf(UserInputError);
    await expect(s.add('bad name', 'viewer', 'another long password')).rejects.toThrow(/user name/);
    await expect(s.add('vic', 'root', 'another long password')).rejects.toThrow(/role must be/);
    await expect(s.add('vic', 'viewer', 'short')).rejects.toThrow(/12 characters/);
    await s.disable('rita');
    expect(await s.verify('rita', 'correct horse battery')).toBeNull();
    await s.passwd('rita', 'a brand new password', 'admin');
    expect(await s.verify('rita', 'correct horse battery')).toBeNull();
    expect((await s.verify('rita', 'a brand new password'))?.role).toBe('admin');
  });

  it('refuses tampered hash parameters instead of allocating for them', async () => {
    expect(await verifyConsolePassword('x', 'scrypt$1073741824$8$1$AAAA$AAAA')).toBe(false);
    expect(await verifyConsolePassword('x', 'plain')).toBe(false);
  });

  it('dlp-relay user add|list|disable edits console.usersFile, reading the password from stdin', () => {
    const dir = testTempDir('dlp-users-cli-');
    const env = { ...process.env, DLP_RELAY_STATE_DIR: dir };
    const cli = (args: string[], input = '') =>
      spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--config', '/dev/null', 'user', ...args], {
        input,
        env,
        encoding: 'utf8',
        timeout: 60_000,
      });
    const add = cli(['add', 'ada', '--role', 'admin'], 'a very long password\n');
    expect(add.stderr).toBe('');
    expect(add.status).toBe(0);
    expect(add.stdout).toContain(`added ada (admin) to ${join(dir, 'console-users.json')}`);
    expect(cli(['add', 'bob', '--role', 'boss'], 'a very long password\n').status).toBe(2);
    expect(cli(['disable', 'ada']).status).toBe(0);
    const list = cli(['list', '--json']);
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ name: 'ada', role: 'admin', disabled: true })]);
    expect(list.stdout).not.toContain('scrypt');
  });
});

describe('console sessions', () => {
  it('expire when idle and at their absolute limit', () => {
    let t = 0;
    const s = new SessionStore({ idleMs: 100, maxMs: 250 }, () => t);
    const a = s.create('rita', 'reviewer');
    t = 90;
    expect(s.get(a.id)?.user).toBe('rita');
    t = 180;
    expect(s.get(a.id)).not.toBeNull();
    t = 260;
    expect(s.get(a.id)).toBeNull();
    const b = s.create('rita', 'reviewer');
    t = 400;
    expect(s.get(b.id)).toBeNull();
    expect(s.get('made-up')).toBeNull();
  });

  it('lock an account after maxFailures until the lockout ends; success resets the count', () => {
    let t = 0;
    const th = new LoginThrottle(3, 1000, () => t);
    expect(th.fail('ada')).toBe(false);
    th.succeed('ada');
    expect(th.fail('ada')).toBe(false);
    expect(th.fail('ada')).toBe(false);
    expect(th.fail('ada')).toBe(true);
    expect(th.locked('ada')).toBe(true);
    expect(th.locked('bob')).toBe(false);
    t = 1001;
    expect(th.locked('ada')).toBe(false);
  });

  it('compare tokens without accepting empty ones, and build __Host- cookies only when Secure', () => {
    expect(sameToken('abc', 'abc')).toBe(true);
    expect(sameToken('abd', 'abc')).toBe(false);
    expect(sameToken(null, '')).toBe(false);
    expect(sameToken('', '')).toBe(false);
    expect(setCookie('session', 'v', { secure: true, basePath: '/console' })).toBe('__Host-dlp_console_session=v; Path=/; HttpOnly; SameSite=Strict; Secure');
    expect(setCookie('session', 'v', { secure: false, basePath: '/console' })).toBe('dlp_console_session=v; Path=/console; HttpOnly; SameSite=Strict');
  });
});
