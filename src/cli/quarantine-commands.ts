// `dlp-relay quarantine list|show|download|release|delete|purge|audit`: through the running relay's admin API by default, or straight at a store with --offline/--store; every run says which it used.
import { collect } from './options.js';
import type { Command } from 'commander';
import type { FrozenConfig } from '../config/load.js';
import { createLogger } from '../observability/logger.js';
import { createQuarantineStore } from '../quarantine/index.js';
import {
  quarantineList,
  quarantineShow,
  quarantineDownload,
  quarantineRelease,
  quarantineDelete,
  quarantinePurge,
  quarantineAudit,
  localBackend,
  type CliContext,
  type QuarantineBackend,
} from '../quarantine/cli.js';
import { createDeliverer, createUcwiClient, quarantineOps } from '../app.js';
import { AdminClient, adminTarget, CliError } from './admin-client.js';
import { remoteBackend } from './remote-quarantine.js';

export interface ConfigAccess {
  config(): FrozenConfig;
  /** "FILE" or "built-in defaults", for the line saying where an address came from. */
  configFrom(): string;
}

interface AccessOptions {
  server?: string;
  tokenFile?: string;
  offline?: boolean;
  store?: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Ids as an admin types them: full ids, unique prefixes (like git's short hashes, at least 4
 * characters), or ALL (every held message) where the command allows it.
 */
export async function resolveIds(b: QuarantineBackend, args: readonly string[], allowAll: boolean): Promise<string[]> {
  const out: string[] = [];
  let all: Array<{ id: string; status: string }> | null = null;
  const everything = async (): Promise<Array<{ id: string; status: string }>> => {
    if (all) return all;
    all = [];
    let cursor: string | null = null;
    // Bounded: 200 pages of 500 is far beyond what a quarantine holds for review.
    for (let i = 0; i < 200; i++) {
      const page = await b.list({ limit: 500, ...(cursor ? { cursor } : {}) });
      all.push(...page.items.map((r) => ({ id: r.id, status: r.status })));
      cursor = page.nextCursor;
      if (!cursor) break;
    }
    return all;
  };
  for (const arg of args) {
    const a = arg.trim();
    if (a === 'ALL') {
      if (!allowAll) throw new CliError('ALL is not accepted by this command', 2);
      out.push(...(await everything()).filter((r) => r.status === 'held').map((r) => r.id));
    } else if (UUID.test(a)) out.push(a.toLowerCase());
    else if (/^[0-9a-f-]{4,35}$/i.test(a)) {
      const hits = (await everything()).filter((r) => r.id.startsWith(a.toLowerCase()));
      if (hits.length === 0) throw new CliError(`no quarantined message with an id starting ${JSON.stringify(a)}`);
      if (hits.length > 1)
        throw new CliError(
          `id prefix ${JSON.stringify(a)} is ambiguous: ${hits
            .slice(0, 5)
            .map((h) => h.id)
            .join(', ')}${hits.length > 5 ? ', ...' : ''}`,
          2,
        );
      out.push(hits[0]!.id);
    } else out.push(a); // the command reports it as not found / malformed
  }
  return [...new Set(out)];
}

/**
 * The backend for one command. Default: the running relay's admin API, so release goes to the relay's
 * next hop with its credentials whatever this shell's environment says. --offline (or --store) opens the
 * store directly, for a relay that is down; release then uses this config's delivery path.
 */
async function withBackend(access: ConfigAccess, o: AccessOptions, needsDelivery: boolean, fn: (ctx: CliContext) => Promise<number>): Promise<number> {
  const err = process.stderr;
  try {
    const cfg = access.config();
    if (!o.offline && !o.store) {
      const client = new AdminClient(adminTarget(o, () => cfg, access.configFrom));
      const backend = remoteBackend(client);
      err.write(`relay: ${client.target.url} (${client.target.from})\n`);
      const unused = async (): Promise<never> => Promise.reject(new Error('not used with a remote backend'));
      return await fn({ backend, store: null as never, deliver: unused, out: process.stdout, err });
    }
    const logger = createLogger({ level: 'warn', destination: 2 });
    const target = o.store ?? cfg.quarantine.url ?? cfg.quarantine.dir;
    const isUrl = /^postgres(ql)?:\/\//.test(target);
    const store = createQuarantineStore({ dir: isUrl ? cfg.quarantine.dir : target, url: isUrl ? target : null }, logger);
    const closers: Array<() => Promise<unknown>> = [() => store.close()];
    try {
      await store.init();
      const where = isUrl ? target.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:********@') : target;
      err.write(`store: ${where} (offline, not through a relay)\n`);
      let ctx: CliContext = { store, deliver: async () => Promise.reject(new Error('delivery not configured')), out: process.stdout, err, logger };
      if (needsDelivery) {
        const deliverer = createDeliverer(cfg, logger);
        const { client, sim } = await createUcwiClient(cfg, logger);
        closers.push(
          () => deliverer.close(),
          () => client.close(),
        );
        if (sim) closers.push(() => sim.close());
        err.write(`delivery: ${deliverer.describe} (from ${access.configFrom()})\n`);
        const ops = quarantineOps(cfg, store, deliverer, client, logger);
        ctx = { ...ctx, deliver: ops.deliver!, ...(ops.rescan ? { rescan: ops.rescan } : {}) };
      }
      ctx = { ...ctx, backend: localBackend(ctx, `store ${where}`) };
      return await fn(ctx);
    } finally {
      for (const c of closers.reverse()) await c().catch(() => {});
    }
  } catch (e) {
    err.write(`dlp-relay: quarantine: ${(e as Error).message}\n`);
    return e instanceof CliError ? e.exitCode : 1;
  }
}

/** Runs `fn` for each id in turn; the exit code is the worst one. */
async function eachId(ctx: CliContext, ids: readonly string[], allowAll: boolean, fn: (id: string) => Promise<number>): Promise<number> {
  const resolved = await resolveIds(ctx.backend!, ids, allowAll);
  if (resolved.length === 0) {
    ctx.err.write('no messages matched\n');
    return 0;
  }
  let code = 0;
  for (const id of resolved) code = Math.max(code, await fn(id));
  return code;
}

export function registerQuarantineCommands(program: Command, access: ConfigAccess): void {
  const q = program
    .command('quarantine')
    .description('review, release, delete and purge quarantined messages (through the running relay unless --offline)')
    .option('--server <host:port>', "the relay's admin API (default: admin.host:admin.port of the configuration)")
    .option('--token-file <file>', 'admin token file (default: DLP_RELAY_ADMIN_TOKEN, admin.tokenFile)')
    .option('--offline', 'open the configured store directly instead of asking the relay (for a relay that is down)')
    .option('--store <dir|url>', 'open this store directly (implies --offline)');
  const acc = (): AccessOptions => q.opts<AccessOptions>();
  const done = (code: number) => {
    process.exitCode = code;
  };
  const run = (needsDelivery: boolean, fn: (ctx: CliContext) => Promise<number>) => withBackend(access, acc(), needsDelivery, fn).then(done);
  q.command('list')
    .description('list quarantined messages, newest first')
    .option('--from <time>', 'quarantined at or after (ISO 8601)')
    .option('--to <time>', 'quarantined before (ISO 8601)')
    .option('--sender <addr>')
    .option('--recipient <addr>')
    .option('--action-code <n>', 'UCWI actionCode, or "none"')
    .option('--policy <name>', 'matched policy name')
    .option('--status <status>', 'held or released (deleted messages are in `quarantine audit`)')
    .option('--limit <n>', 'page size (max 500)', '50')
    .option('--cursor <cursor>', 'next page (printed after a full page)')
    .option('--json', 'JSON output')
    .action((o: Record<string, string | boolean>) => run(false, (ctx) => quarantineList(o, ctx)));
  q.command('show <ids...>')
    .description('metadata and a safe preview (headers, text, attachment names and sizes); ids may be unique prefixes')
    .option('--json')
    .action((ids: string[], o: { json?: boolean }) => run(false, (ctx) => eachId(ctx, ids, false, (id) => quarantineShow({ id, ...o }, ctx))));
  q.command('download <id>')
    .description('the original EML (to stdout, or --output FILE)')
    .option('-o, --output <file>', 'write to this new file (mode 0600)')
    .action((id: string, o: { output?: string }) => run(false, (ctx) => eachId(ctx, [id], false, (full) => quarantineDownload({ id: full, ...o }, ctx))));
  q.command('release <ids...>')
    .description(
      'deliver to the next hop with the original envelope, each recipient at most once (exit 1 unless all accepted); ids may be prefixes, or ALL held messages',
    )
    .option('--rescan', 'ask UCWI again first; release only if it now allows relaying')
    .option('--recipient <addr>', 'release only to these original recipients (repeatable)', collect, [])
    .option('--redirect-to <addr>', 'deliver to this address instead')
    .option('--drop <addr>', 'give up on this original recipient (repeatable); it no longer keeps the message held', collect, [])
    .option('--json')
    .action((ids: string[], o: { rescan?: boolean; recipient: string[]; drop: string[]; redirectTo?: string; json?: boolean }) =>
      run(true, (ctx) =>
        eachId(ctx, ids, true, (id) =>
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
  q.command('delete <ids...>')
    .description('delete quarantined messages; ids may be prefixes, or ALL held messages')
    .option('--json')
    .action((ids: string[], o: { json?: boolean }) => run(false, (ctx) => eachId(ctx, ids, true, (id) => quarantineDelete({ id, ...o }, ctx))));
  q.command('purge')
    .description('delete messages older than the retention period')
    .option('--older-than-days <n>', 'age in days (default: quarantine.retentionDays)')
    .option('--dry-run', 'list what would be deleted, delete nothing')
    .option('--json')
    .action((o: { olderThanDays?: string; dryRun?: boolean; json?: boolean }) =>
      run(false, async (ctx) => {
        const days = o.olderThanDays ?? String(access.config().quarantine.retentionDays);
        if (!o.dryRun) return quarantinePurge({ olderThanDays: days, ...(o.json ? { json: true } : {}) }, ctx);
        const n = Number(days);
        if (days.trim() === '' || !Number.isFinite(n) || n < 0) throw new CliError('--older-than-days must be a number of days (0 or more)', 2);
        const olderThan = new Date(Date.now() - n * 86_400_000);
        const ids: string[] = [];
        let cursor: string | null = null;
        for (let i = 0; i < 200; i++) {
          const page = await ctx.backend!.list({ to: olderThan, limit: 500, ...(cursor ? { cursor } : {}) });
          ids.push(...page.items.filter((r) => !r.releaseClaim).map((r) => r.id));
          cursor = page.nextCursor;
          if (!cursor) break;
        }
        ctx.out.write(
          o.json
            ? JSON.stringify({ dryRun: true, wouldPurge: ids.length, olderThan: olderThan.toISOString(), ids }) + '\n'
            : `would purge ${ids.length} message(s) quarantined before ${olderThan.toISOString()}${ids.length ? `:\n${ids.join('\n')}` : ''}\n`,
        );
        return 0;
      }),
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
    .action((o: Record<string, string | boolean>) => run(false, (ctx) => quarantineAudit(o, ctx)));
}
