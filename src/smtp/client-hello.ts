// The SMTP client's session opening steps that need only "send one command, get its reply": EHLO (HELO fallback) and AUTH PLAIN/LOGIN (RFC 4954).
import { parseExtensions, type Reply } from './reply.js';
import { SmtpClientError } from './client-socket.js';

/** Sends one command line and resolves with its reply (SmtpClient's own command queue). */
export type CommandFn = (line: string) => Promise<Reply>;

const is2xx = (r: Reply): boolean => r.code >= 200 && r.code < 300;

/** EHLO, or HELO when EHLO gets a 5xx (an old or minimal server); resolves with the extensions offered (none after HELO). */
export async function ehloOrHelo(command: CommandFn, name: string): Promise<Map<string, string>> {
  const ehlo = await command(`EHLO ${name}`);
  if (is2xx(ehlo)) return parseExtensions(ehlo);
  if (ehlo.code >= 500) {
    const helo = await command(`HELO ${name}`);
    if (is2xx(helo)) return new Map();
    throw new SmtpClientError('ehlo', 'reply', `EHLO and HELO refused: ${helo.toString()}`, { reply: helo });
  }
  throw new SmtpClientError('ehlo', 'reply', `EHLO refused: ${ehlo.toString()}`, { reply: ehlo });
}

/**
 * AUTH PLAIN, or LOGIN when PLAIN is not offered. Never in clear unless `allowInClear`; only the
 * server's reply goes into an error message, never the credentials.
 */
export async function authenticate(
  command: CommandFn,
  ctx: { secure: boolean; allowInClear: boolean; offered: string | undefined },
  auth: { user: string; pass: string },
): Promise<void> {
  if (!ctx.secure && !ctx.allowInClear) {
    throw new SmtpClientError('auth', 'auth', 'AUTH configured but the connection is not encrypted (no TLS)');
  }
  const mechs = (ctx.offered ?? '').toUpperCase().split(/\s+/);
  const check = (r: Reply, what: string): void => {
    if (r.code === 421) throw new SmtpClientError('auth', 'reply', `${what}: ${r.toString()}`, { reply: r });
    throw new SmtpClientError('auth', 'auth', `${what}: ${r.toString()}`, { reply: r });
  };
  const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
  if (mechs.includes('PLAIN')) {
    const r = await command(`AUTH PLAIN ${b64(`\0${auth.user}\0${auth.pass}`)}`);
    if (r.code !== 235) check(r, 'AUTH PLAIN refused');
  } else if (mechs.includes('LOGIN')) {
    // Any 334 text is accepted: servers word the prompts differently (RFC 4954 does not define LOGIN).
    const r1 = await command('AUTH LOGIN');
    if (r1.code !== 334) check(r1, 'AUTH LOGIN refused');
    const r2 = await command(b64(auth.user));
    if (r2.code !== 334) check(r2, 'AUTH LOGIN user refused');
    const r3 = await command(b64(auth.pass));
    if (r3.code !== 235) check(r3, 'AUTH LOGIN refused');
  } else {
    throw new SmtpClientError('auth', 'auth', `AUTH configured but the server offers no PLAIN or LOGIN (AUTH ${ctx.offered ?? 'not offered'})`);
  }
}
