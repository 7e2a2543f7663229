// `dlp-relay quarantine list|show|download|release|delete|purge|audit`: the same operations as the admin API, against the configured store.
import { collect } from './options.js';
import type { Command } from 'commander';
import type { FrozenConfig } from '../config/load.js';
import { createLogger } from '../observability/logger.js';
import { createQuarantineStore } from '../quarantine/index.js';
import { quarantineList, quarantineShow, quarantineDownload, quarantineRelease, quarantineDelete, quarantinePurge, quarantineAudit, type CliContext } from '../quarantine/cli.js';
import { createDeliverer, createUcwiClient, quarantineOps } from '../app.js';

/**
 * Builds the store and, only for release, the delivery and re-scan paths; closes them afterwards.
 * CLI logs go to stderr at warn level so stdout stays machine-readable.
 */
async function withContext(cfg: FrozenConfig, needsDelivery: boolean, fn: (ctx: CliContext) => Promise<number>): Promise<number> {
  const logger = createLogger({ level: 'warn', destination: 2 });
  const store = createQuarantineStore({ dir: cfg.quarantine.dir, url: cfg.quarantine.url }, logger);
  const closers: Array<() => Promise<unknown>> = [() => store.close()];
  try {
    await store.init();
    let ctx: CliContext = { store, deliver: async () => Promise.reject(new Error('delivery not configured')), out: process.stdout, err: process.stderr, logger };
    if (needsDelivery) {
      const deliverer = createDeliverer(cfg, logger);
      const { client, sim } = await createUcwiClient(cfg, logger);
      closers.push(() => deliverer.close(), () => client.close());
      if (sim) closers.push(() => sim.close());
      const ops = quarantineOps(cfg, store, deliverer, client, logger);
      ctx = { ...ctx, deliver: ops.deliver!, ...(ops.rescan ? { rescan: ops.rescan } : {}) };
    }
    return await fn(ctx);
  } catch (err) {
    process.stderr.write(`dlp-relay: quarantine store unavailable: ${(err as Error).message}\n`);
    return 1;
  } finally {
    for (const c of closers.reverse()) await c().catch(() => {});
  }
}

export function registerQuarantineCommands(program: Command, config: () => FrozenConfig): void {
  const q = program.command('quarantine').description('review, release, delete and purge quarantined messages');
  const done = (code: number) => {
    process.exitCode = code;
  };
  q.command('list')
    .description('list quarantined messages, newest first')
    .option('--from <time>', 'quarantined at or after (ISO 8601)')
    .option('--to <time>', 'quarantined before (ISO 8601)')
    .option('--sender <addr>')
    .option('--recipient <addr>')
    .option('--action-code <n>', 'UCWI actionCode, or "none"')
    .option('--policy <name>', 'matched policy name')
    .option('--status <status>', 'held, released or deleted')
    .option('--limit <n>', 'page size (max 500)', '50')
    .option('--cursor <cursor>', 'next page (printed after a full page)')
    .option('--json', 'JSON output')
    .action(async (o: Record<string, string | boolean>) => done(await withContext(config(), false, (ctx) => quarantineList(o, ctx))));
  q.command('show <id>')
    .description('metadata and a safe preview (headers, text, attachment names and sizes)')
    .option('--json')
    .action(async (id: string, o: { json?: boolean }) => done(await withContext(config(), false, (ctx) => quarantineShow({ id, ...o }, ctx))));
  q.command('download <id>')
    .description('the original EML (to stdout, or --output FILE)')
    .option('-o, --output <file>', 'write to this new file (mode 0600)')
    .action(async (id: string, o: { output?: string }) => done(await withContext(config(), false, (ctx) => quarantineDownload({ id, ...o }, ctx))));
  q.command('release <id>')
    .description('deliver to the next hop with the original envelope; each recipient at most once, exit 1 unless all accepted')
    .option('--rescan', 'ask UCWI again first; release only if it now allows relaying')
    .option('--recipient <addr>', 'release only to these original recipients (repeatable)', collect, [])
    .option('--redirect-to <addr>', 'deliver to this address instead')
    .option('--drop <addr>', 'give up on this original recipient (repeatable); it no longer keeps the message held', collect, [])
    .option('--json')
    .action(async (id: string, o: { rescan?: boolean; recipient: string[]; drop: string[]; redirectTo?: string; json?: boolean }) =>
      done(
        await withContext(config(), true, (ctx) =>
          quarantineRelease(
            {
              id,
              ...(o.rescan ? { rescan: true } : {}),
              ...(o.recipient.length ? { recipients: o.recipient } : {}),
              ...(o.drop.length ? { drop: o.drop } : {}),
              ...(o.redirectTo ? { redirectTo: o.redirectTo } : {}),
              ...(o.json ? { json: true } : {}),
            },
            ctx,
          ),
        ),
      ),
    );
  q.command('delete <id>')
    .description('delete a quarantined message')
    .option('--json')
    .action(async (id: string, o: { json?: boolean }) => done(await withContext(config(), false, (ctx) => quarantineDelete({ id, ...o }, ctx))));
  q.command('purge')
    .description('delete messages older than the retention period')
    .option('--older-than-days <n>', 'age in days (default: quarantine.retentionDays)')
    .option('--json')
    .action(async (o: { olderThanDays?: string; json?: boolean }) =>
      done(await withContext(config(), false, (ctx) => quarantinePurge({ olderThanDays: o.olderThanDays ?? String(config().quarantine.retentionDays), ...(o.json ? { json: true } : {}) }, ctx))),
    );
  q.command('audit')
    .description('the audit trail of admin actions')
    .option('--from <time>')
    .option('--to <time>')
    .option('--actor <actor>')
    .option('--action <action>')
    .option('--target <id>')
    .option('--limit <n>', 'page size', '50')
    .option('--cursor <cursor>')
    .option('--json')
    .action(async (o: Record<string, string | boolean>) => done(await withContext(config(), false, (ctx) => quarantineAudit(o, ctx))));
}
