// `dlp-relay user add|passwd|disable|list`: console accounts in console.usersFile, edited in place (the console re-reads it at each sign-in, so no reload is needed).
import type { Command } from 'commander';
import type { ConfigAccess } from './quarantine-commands.js';
import { FileUserStore, ROLES, UserInputError } from '../console/users.js';

/** The password comes on stdin (one line), never as an argument: arguments show up in `ps` and shell history. */
async function passwordFromStdin(): Promise<string> {
  let input = '';
  for await (const c of process.stdin) input += (c as Buffer).toString();
  return input.replace(/\r?\n$/, '');
}

async function run(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    process.stderr.write(`dlp-relay: user: ${(err as Error).message}\n`);
    process.exitCode = err instanceof UserInputError ? 2 : 1;
  }
}

export function registerUserCommands(program: Command, access: ConfigAccess): void {
  const user = program.command('user').description(`console accounts (roles: ${ROLES.join(', ')}); passwords are read from stdin`);
  const store = () => new FileUserStore(access.config().console.usersFile);

  user
    .command('add')
    .argument('<name>')
    .requiredOption('--role <role>', ROLES.join(' | '))
    .description('create an account; the password (12+ characters) is read from stdin')
    .action((name: string, o: { role: string }) =>
      run(async () => {
        const u = await store().add(name, o.role, await passwordFromStdin());
        process.stdout.write(`added ${u.name} (${u.role}) to ${store().file}\n`);
      }),
    );

  user
    .command('passwd')
    .argument('<name>')
    .option('--role <role>', 'also change the role')
    .description('set a new password (from stdin); re-enables a disabled account')
    .action((name: string, o: { role?: string }) =>
      run(async () => {
        const u = await store().passwd(name, await passwordFromStdin(), o.role);
        process.stdout.write(`password changed for ${u.name} (${u.role})\n`);
      }),
    );

  user
    .command('disable')
    .argument('<name>')
    .description('refuse further sign-ins (sessions already open end at their idle timeout)')
    .action((name: string) =>
      run(async () => {
        const u = await store().disable(name);
        process.stdout.write(`disabled ${u.name}\n`);
      }),
    );

  user
    .command('list')
    .option('--json', 'one JSON array (no hashes)')
    .description('accounts, roles and state')
    .action((o: { json?: boolean }) =>
      run(async () => {
        const users = (await store().load()).map(({ hash: _h, ...rest }) => rest);
        if (o.json) process.stdout.write(`${JSON.stringify(users)}\n`);
        else
          for (const u of users)
            process.stdout.write(`${u.name}\t${u.role}\t${u.disabled ? 'disabled' : 'enabled'}\tpassword changed ${u.passwordChangedAt}\n`);
      }),
    );
}
