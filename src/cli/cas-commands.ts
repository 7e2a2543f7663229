// `dlp-relay cas block|unblock|list|outbox|mitigate|results`: Trend Micro CAS from the command line, with the relay's token, rate limit and outbox.
import { collect } from './options.js';
import type { Command } from 'commander';
import type { FrozenConfig } from '../config/load.js';
import { createLogger } from '../observability/logger.js';
import { casBlock, casUnblock, casList, casOutbox, casMitigate, casResults, type CasMitigateOptions } from '../cas/cli.js';
import { casClientFromConfig, casOutboxFromConfig, casPoolFromConfig, casSharedLimiterFromConfig } from '../cas/wiring.js';
import type { CasClient } from '../cas/client.js';
import type { CasOutbox } from '../cas/outbox.js';
import { AdminClient, adminTarget, apiError, CliError } from './admin-client.js';

function fail(msg: string): number {
  process.stderr.write(`dlp-relay: ${msg}\n`);
  return 2;
}

async function withClient(cfg: FrozenConfig, fn: (client: CasClient) => Promise<number>): Promise<number> {
  if (!cfg.secrets.casToken) return fail('no CAS token: set DLP_RELAY_CAS_TOKEN (or DLP_RELAY_CAS_TOKEN_FILE, or cas.tokenFile)');
  if (!cfg.cas.url && !cfg.cas.region) return fail('no CAS service: set cas.region (us, eu, jp, au, uk, ca, sg, in) or DLP_RELAY_CAS_URL');
  const logger = createLogger({ level: 'warn', destination: 2 });
  // With the pg backend the CLI's calls come out of the budget the relays share, not on top of it.
  const pool = cfg.cas.outbox.backend === 'pg' ? await casPoolFromConfig(cfg, logger) : null;
  try {
    const limiter = pool ? await casSharedLimiterFromConfig(cfg, pool, logger) : null;
    const client = casClientFromConfig(cfg, logger, limiter ?? undefined);
    try {
      return await fn(client);
    } finally {
      await client.close();
      await limiter?.settle();
    }
  } finally {
    await pool?.end().catch(() => {});
  }
}

/**
 * The relay's outbox over its admin API, shaped as the three outbox calls `casOutbox` makes: the
 * relay keeps the journal open (and locked), so the CLI must not open it while the relay runs.
 */
function remoteOutbox(client: AdminClient): Pick<CasOutbox, 'list' | 'stats' | 'retryFailed'> {
  let cached: { stats: Awaited<ReturnType<CasOutbox['stats']>>; entries: Awaited<ReturnType<CasOutbox['list']>> } | null = null;
  const get = async () => {
    if (cached) return cached;
    const r = await client.json('GET', '/api/v1/cas/outbox?limit=10000');
    if (r.status !== 200) throw new CliError(`cas outbox: the relay answered ${apiError(r)}`);
    return (cached = r.body as NonNullable<typeof cached>);
  };
  return {
    list: async () => (await get()).entries,
    stats: async () => (await get()).stats,
    retryFailed: async () => {
      const r = await client.json('POST', '/api/v1/cas/outbox/retry');
      if (r.status !== 200) throw new CliError(`cas outbox --retry: the relay answered ${apiError(r)}`);
      cached = null;
      return (r.body as { retried: number }).retried;
    },
  };
}

export function registerCasCommands(program: Command, config: () => FrozenConfig, configFrom: () => string = () => 'configuration'): void {
  const cas = program.command('cas').description('Trend Micro Cloud App Security: blocked lists and mail mitigation');
  const done = (code: number) => {
    process.exitCode = code;
  };
  for (const [name, fn, what] of [
    ['block', casBlock, 'add to'],
    ['unblock', casUnblock, 'remove from'],
  ] as const) {
    cas
      .command(name)
      .description(`${what} the CAS blocked lists`)
      .option('--sender <addr>', 'sender address (repeatable)', collect, [])
      .option('--url <url>', 'URL (repeatable)', collect, [])
      .option('--sha1 <hash>', 'attachment SHA-1 (repeatable)', collect, [])
      .option('--sha256 <hash>', 'attachment SHA-256 (repeatable)', collect, [])
      .option('--json')
      .action(async (o: { sender: string[]; url: string[]; sha1: string[]; sha256: string[]; json?: boolean }) =>
        done(await withClient(config(), (client) => fn(o, process.stdout, { client }))),
      );
  }
  cas
    .command('list')
    .description('show the CAS blocked lists')
    .option('--json')
    .action(async (o: { json?: boolean }) => done(await withClient(config(), (client) => casList(o, process.stdout, { client }))));
  cas
    .command('outbox')
    .description('pending and failed pushes of the relay; --retry puts failed ones back in the queue')
    .option('--retry', 'retry failed entries', false)
    .option('--server <host:port>', "the relay's admin API (default: admin.host:admin.port of the configuration)")
    .option('--token-file <file>', 'admin token file (default: DLP_RELAY_ADMIN_TOKEN, admin.tokenFile)')
    .option('--offline', 'open the outbox journal directly (only while the relay is stopped)')
    .option('--json')
    .action(async (o: { retry: boolean; json?: boolean; server?: string; tokenFile?: string; offline?: boolean }) => {
      const cfg = config();
      if (!o.offline) {
        const client = new AdminClient(
          adminTarget(o, () => cfg, configFrom),
          30_000,
        );
        process.stderr.write(`relay: ${client.target.url} (${client.target.from})\n`);
        // Only the three calls casOutbox makes exist on the remote shape.
        return done(await casOutbox(o, process.stdout, { outbox: remoteOutbox(client) as CasOutbox }));
      }
      process.stderr.write(
        `store: CAS outbox ${cfg.cas.outbox.backend === 'pg' ? 'in the quarantine database' : cfg.cas.outbox.dir} (offline, not through a relay)\n`,
      );
      const outbox = await casOutboxFromConfig(cfg, createLogger({ level: 'warn', destination: 2 }));
      try {
        done(await casOutbox(o, process.stdout, { outbox }));
      } finally {
        await outbox.close();
      }
    });
  cas
    .command('mitigate')
    .description('delete, quarantine or restore delivered mail (one message, or a batch --file of JSON or CSV)')
    .option('--action <action>', 'MAIL_DELETE, MAIL_QUARANTINE or MAIL_RESTORE')
    .option('--mailbox <addr>')
    .option('--message-id <id>', 'Internet Message-ID')
    .option('--unique-id <id>', 'provider unique id')
    .option('--delivery-time <time>', 'ISO 8601')
    .option('--service <service>', 'exchange (default) or gmail')
    .option('--provider <provider>', 'office365 or google (follows the service)')
    .option('--detection-time <time>', 'MAIL_RESTORE only')
    .option('--mail-log-id <id>', 'MAIL_RESTORE only')
    .option('--file <file>', 'batch: JSON array or CSV with a header row')
    .option('--format <format>', 'json or csv (default: from the file name)')
    .option('--json')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      let opts: CasMitigateOptions;
      if (typeof o['file'] === 'string') {
        opts = { file: o['file'], ...(o['format'] === 'json' || o['format'] === 'csv' ? { format: o['format'] } : {}), ...(o['json'] ? { json: true } : {}) };
      } else {
        if (typeof o['action'] !== 'string' || typeof o['mailbox'] !== 'string') return done(fail('mitigate needs --action and --mailbox, or --file'));
        const pick = (k: string) => (typeof o[k] === 'string' ? { [k]: o[k] } : {});
        opts = {
          action: o['action'],
          mailbox: o['mailbox'],
          ...pick('messageId'),
          ...pick('uniqueId'),
          ...pick('deliveryTime'),
          ...pick('service'),
          ...pick('provider'),
          ...pick('detectionTime'),
          ...pick('mailLogId'),
          ...(o['json'] ? { json: true } : {}),
        };
      }
      done(await withClient(config(), (client) => casMitigate(opts, process.stdout, { client })));
    });
  cas
    .command('results')
    .description('results of a mitigation batch; --wait polls until every action is terminal')
    .requiredOption('--batch-id <id>')
    .option('--wait', 'poll until Success, Skipped or Failed', false)
    .option('--interval <ms>', 'poll interval', '15000')
    .option('--timeout <ms>', 'give up after', '600000')
    .option('--json')
    .action(async (o: { batchId: string; wait: boolean; interval: string; timeout: string; json?: boolean }) =>
      done(
        await withClient(config(), (client) =>
          casResults(
            { batchId: o.batchId, wait: o.wait, intervalMs: Number(o.interval), timeoutMs: Number(o.timeout), ...(o.json ? { json: true } : {}) },
            process.stdout,
            { client },
          ),
        ),
      ),
    );
}
