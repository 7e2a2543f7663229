#!/usr/bin/env node
// The dlp-relay command line: serve, status/reload/health, quarantine and cas admin, send (EML harness), sim-ucwi, check-config, policy test. Errors read "dlp-relay: <what>: <why>" and exit 1; usage errors exit 2.
import { Command, Option, CommanderError } from 'commander';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  loadConfigDetailed,
  loadForAdmin,
  PACKAGE_ROOT,
  maskedConfig,
  changedValues,
  ConfigError,
  type FrozenConfig,
  type LoadedConfig,
} from '../config/load.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { startRelay } from '../app.js';
import { runSend } from './send.js';
import { collect } from './options.js';
import { startUcwiSim } from '../engine/server.js';
import { startCluster, startWorker, workerIndex } from '../cluster.js';
import { registerQuarantineCommands, type ConfigAccess } from './quarantine-commands.js';
import { registerCasCommands } from './cas-commands.js';
import { registerDaemonCommands } from './daemon-commands.js';
import { registerUserCommands } from './user-commands.js';
import { registerPolicyCommands, describeRules } from './policy-commands.js';
import { CliError } from './admin-client.js';
import { exitCodeFor } from '../errors.js';
import { hashPassword } from '../ingress/auth.js';
import { maskSecrets, maskUrl } from '../util/mask.js';
import { VERSION } from '../version.js';
import type { RunningRelay } from '../app.js';

/** The configuration every command uses, found the same way (see config/sources.ts); a bad one exits 1 with every problem listed. */
function loadDetailedOrExit(file: string | undefined): LoadedConfig {
  try {
    return loadConfigDetailed({ file });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`dlp-relay: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}

/** Admin commands: a file whose problems lie outside admin.* still gives them the relay's address and token (with a warning). */
function loadForAdminOrExit(file: string | undefined): LoadedConfig {
  try {
    return loadConfigDetailed({ file });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const lenient = loadForAdmin({ file }, err.problems);
    if (!lenient) return loadDetailedOrExit(file);
    process.stderr.write(
      `dlp-relay: warning: the configuration has ${err.problems.length} problem(s) (${err.problems.map((p) => p.path).join(', ')}); using its admin settings; \`dlp-relay check-config\` lists them\n`,
    );
    return lenient;
  }
}

/** A start-up failure (port in use, unreadable certificate, store down): one line naming what, exit 1. */
function cannotStart(err: unknown): never {
  process.stderr.write(`dlp-relay: cannot start: ${(err as Error).message}\n`);
  process.exit(1);
}

/**
 * SIGHUP re-reads the configuration instead of killing the process (admins and logrotate send HUP by
 * habit). Sessions in flight keep their settings; a bad file keeps the old configuration (see reload.ts).
 */
function onReload(relay: Pick<RunningRelay, 'reload'>, logger: Logger): void {
  process.on('SIGHUP', () => {
    logger.info({ signal: 'SIGHUP' }, 'SIGHUP: reloading the configuration');
    void relay.reload('SIGHUP').catch((err: unknown) => logger.error({ err }, 'reload failed'));
  });
}

/** SIGTERM/SIGINT: stop once, with a grace period, then a hard exit if something hangs. */
function onShutdown(logger: Logger, stop: () => Promise<void>, hardExitMs: number): void {
  let stopping = false;
  const handler = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: refusing new sessions, finishing messages in flight');
    setTimeout(() => {
      logger.error('shutdown took too long, exiting');
      process.exit(1);
    }, hardExitMs).unref();
    stop()
      .then(() => {
        logger.info('stopped');
        logger.flush?.();
        process.exit(0);
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'error during shutdown');
        process.exit(1);
      });
  };
  process.on('SIGTERM', () => handler('SIGTERM'));
  process.on('SIGINT', () => handler('SIGINT'));
}

export function buildProgram(): Command {
  const program = new Command('dlp-relay')
    .description('Inline SMTP data-loss-prevention relay for SkyGuard UCWI')
    .version(VERSION, '-V, --version', 'print the version')
    .option('-c, --config <file>', 'YAML config file (default: $DLP_RELAY_CONFIG, else /etc/dlp-relay/dlp-relay.yaml if it exists, else built-in defaults)')
    .showHelpAfterError()
    // Commander's own usage errors ("error: unknown option …") in the common style; subcommands inherit this.
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, 'dlp-relay: ')) })
    .exitOverride();

  program
    .command('serve')
    .description('run the relay (what `npm start` runs)')
    .option('--grace <ms>', 'shutdown grace period for messages in flight (default: limits.shutdownGraceMs)')
    .action(async (o: { grace?: string }) => {
      const configOpt = program.opts<{ config?: string }>().config;
      const loaded = loadDetailedOrExit(configOpt);
      const cfg = loaded.config;
      const logger = createLogger({ level: cfg.log.level, format: cfg.log.format });
      if (o.grace !== undefined && !/^\d+$/.test(o.grace)) throw new CliError(`--grace: expected milliseconds, got ${JSON.stringify(o.grace)}`, 2);
      const grace = o.grace !== undefined ? Number(o.grace) : cfg.limits.shutdownGraceMs;
      const reloadConfig = (): FrozenConfig => loadConfigDetailed({ file: configOpt }).config;
      const index = workerIndex();
      if (index !== null) {
        // A cluster worker: same config, SMTP only; the supervisor printed the banner and forwards SIGHUP.
        const relay = await startWorker(cfg, logger, index, { reloadConfig, configFile: loaded.file }).catch(cannotStart);
        onReload(relay, logger);
        onShutdown(logger, () => relay.stop(grace), grace + cfg.limits.drainDelayMs + 15_000);
        return;
      }
      if (cfg.smtp.workers > 1) {
        const running = await startCluster(cfg, logger, { reloadConfig, configFile: loaded.file }).catch(cannotStart);
        // Validated once by the supervisor (a bad file is reported once), then each worker re-reads and applies it.
        onReload(running, logger);
        const sup = running.supervisor;
        process.stderr.write(
          [
            `dlp-relay listening on ${running.smtp.host}:${running.smtp.port} (SMTP, ${cfg.smtp.workers} worker processes), version ${VERSION}`,
            `  config:     ${loaded.file ?? 'built-in defaults'} (${loaded.source}); state in ${cfg.stateDir}`,
            `  DLP:        ${sup.embeddedDlp ? `embedded engine (policies ${cfg.embeddedDlp.policiesFile}), one per process` : maskUrl(sup.ucwiUrl)}`,
            `  delivery:   ${sup.delivery}`,
            `  quarantine: ${sup.quarantine.kind} ${cfg.quarantine.url ? '(PostgreSQL)' : cfg.quarantine.dir}`,
            sup.admin ? `  admin:      ${sup.admin.url} (metrics summed over the workers)` : '  admin:      disabled',
          ].join('\n') + '\n',
        );
        logger.info(
          { event: 'started', smtp: running.smtp, workers: Object.fromEntries(running.workers()), ucwi: maskUrl(sup.ucwiUrl), delivery: sup.delivery },
          'dlp-relay started',
        );
        onShutdown(logger, () => running.stop(grace), grace + cfg.limits.drainDelayMs + 30_000);
        return;
      }
      const relay = await startRelay(cfg, logger, { reloadConfig, configFile: loaded.file }).catch(cannotStart);
      const lines = [
        `dlp-relay listening on ${relay.smtp.host}:${relay.smtp.port} (SMTP), version ${VERSION}`,
        `  config:     ${loaded.file ?? 'built-in defaults'} (${loaded.source}); state in ${cfg.stateDir}`,
        `  DLP:        ${relay.embeddedDlp ? `embedded engine at ${relay.ucwiUrl} (policies ${cfg.embeddedDlp.policiesFile})` : maskUrl(relay.ucwiUrl)}`,
        `  delivery:   ${relay.delivery}`,
        `  quarantine: ${relay.quarantine.kind} ${cfg.quarantine.url ? '(PostgreSQL)' : cfg.quarantine.dir}`,
        `  clients:    ${cfg.smtp.allowedClients.join(', ')}`,
        relay.admin
          ? `  admin:      ${relay.admin.url} (/healthz, /readyz${relay.admin.apiEnabled ? ', /metrics, /api/v1 with the bearer token' : '; set DLP_RELAY_ADMIN_TOKEN for /metrics and /api/v1'})`
          : '  admin:      disabled',
        ...(relay.cas ? [`  CAS:        pushing verdicts ${cfg.cas.triggers.join(',')} to ${maskUrl(relay.cas.client.baseUrl)}`] : []),
      ];
      if (relay.embeddedDlp) lines.push('  WARNING: the embedded DLP engine is for trials only; set ucwi.url (DLP_RELAY_UCWI_URL) for production.');
      process.stderr.write(lines.join('\n') + '\n');
      logger.info(
        {
          event: 'started',
          version: VERSION,
          config: loaded.file ?? null,
          smtp: relay.smtp,
          ucwi: maskUrl(relay.ucwiUrl),
          embeddedDlp: relay.embeddedDlp,
          delivery: relay.delivery,
        },
        'dlp-relay started',
      );
      onReload(relay, logger);
      onShutdown(logger, () => relay.stop(grace), grace + cfg.limits.drainDelayMs + 15_000);
    });

  program
    .command('send')
    .description(
      'send EML files through an SMTP server and print one line per file with the final reply (a policy replay with --manifest or X-DLP-Expect headers)',
    )
    .argument('<paths...>', 'EML files or directories of .eml files')
    .requiredOption('--server <host:port>', 'SMTP server to send through (required: never a guessed default)')
    .option('--from <addr>', 'envelope sender (default: From: header)')
    .option('--to <addr>', 'envelope recipient, repeatable (default: To/Cc/Bcc headers)', collect, [])
    .addOption(
      new Option('--expect <outcome>', 'exit 1 unless every file gets this outcome (a manifest or X-DLP-Expect header wins per file)').choices([
        'accept',
        'reject',
        'tempfail',
        'quarantine',
      ]),
    )
    .option('--manifest <file>', 'per-file expectations (YAML/JSON: file: outcome, relative to the manifest); prints an expected-vs-actual table')
    .option('--quarantine-pattern <regex>', 'a 2xx final reply matching this is the quarantine outcome', 'held for review')
    .option('--helo <name>', 'EHLO name', 'dlp-relay-send')
    .option('--timeout <ms>', 'per-message timeout', '60000')
    .option('--starttls', 'require STARTTLS', false)
    .option('--insecure', 'do not verify the server certificate', false)
    .action(
      async (
        paths: string[],
        o: {
          server: string;
          from?: string;
          to: string[];
          expect?: 'accept' | 'reject' | 'tempfail' | 'quarantine';
          manifest?: string;
          quarantinePattern: string;
          helo: string;
          timeout: string;
          starttls: boolean;
          insecure: boolean;
        },
      ) => {
        let quarantinePattern: RegExp;
        try {
          quarantinePattern = new RegExp(o.quarantinePattern, 'i');
        } catch (e) {
          process.stderr.write(`dlp-relay send: bad --quarantine-pattern: ${(e as Error).message}\n`);
          process.exitCode = 2;
          return;
        }
        process.stderr.write(`server: ${o.server}\n`);
        const code = await runSend(
          {
            server: o.server,
            ...(o.from ? { from: o.from } : {}),
            to: o.to,
            ...(o.expect ? { expect: o.expect } : {}),
            ...(o.manifest ? { manifest: o.manifest } : {}),
            quarantinePattern,
            helo: o.helo,
            timeoutMs: Number(o.timeout),
            starttls: o.starttls,
            insecure: o.insecure,
            paths,
          },
          process.stdout,
        );
        process.exitCode = code;
      },
    );

  program
    .command('sim-ucwi')
    .description('run the UCWI simulator (the embedded DLP engine) alone')
    .option('--host <host>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port', '5443')
    .option('--policies <file>', 'detector policies', join(PACKAGE_ROOT, 'config', 'detectors.yaml'))
    .option('--latency <ms>', 'fault: response time; each answer goes out no sooner than this after its request arrived (scan included)', '0')
    .action(async (o: { host: string; port: string; policies: string; latency: string }) => {
      const accessKey = process.env['DLP_RELAY_UCWI_ACCESS_KEY'] || 'sim-access-key';
      const secretKey = process.env['DLP_RELAY_UCWI_SECRET_KEY'] || randomBytes(16).toString('hex');
      const logger = createLogger({ level: process.env['DLP_RELAY_LOG_LEVEL'] ?? 'info' });
      const sim = await startUcwiSim({
        host: o.host,
        port: Number(o.port),
        accessKey,
        secretKey,
        policiesFile: o.policies,
        logger,
        faults: { latencyMs: Number(o.latency) },
      });
      process.stderr.write(
        `UCWI simulator at ${sim.url} (access key ${accessKey}${process.env['DLP_RELAY_UCWI_SECRET_KEY'] ? '' : `, secret key ${secretKey}`})\n` +
          `  point the relay at it: DLP_RELAY_UCWI_URL=${sim.url} DLP_RELAY_UCWI_ACCESS_KEY=... DLP_RELAY_UCWI_SECRET_KEY=...\n`,
      );
      onShutdown(logger, () => sim.close(), 5_000);
    });

  let loadedOnce: LoadedConfig | null = null;
  const loaded = (): LoadedConfig => (loadedOnce ??= loadForAdminOrExit(program.opts<{ config?: string }>().config));
  const access: ConfigAccess = { config: () => loaded().config, configFrom: () => (loaded().file ? `config ${loaded().file}` : 'built-in defaults') };
  registerDaemonCommands(program, access);
  registerQuarantineCommands(program, access);
  registerCasCommands(program, access.config, access.configFrom);
  registerUserCommands(program, access);

  program
    .command('hash-password')
    .description('read a password on stdin and print the users-file hash for smtp.auth.usersFile')
    .argument('<user>', 'user name for the line')
    .action(async (user: string) => {
      let input = '';
      for await (const c of process.stdin) input += (c as Buffer).toString();
      const pw = input.replace(/\r?\n$/, '');
      if (!pw) {
        process.stderr.write('dlp-relay: hash-password: no password on stdin\n');
        process.exitCode = 2;
        return;
      }
      process.stdout.write(`${user}:${hashPassword(pw)}\n`);
    });

  registerPolicyCommands(program, () => loadDetailedOrExit(program.opts<{ config?: string }>().config).config);

  program
    .command('check-config')
    .description('validate the configuration and print the effective values with secrets masked')
    .option('--changed', 'only values that differ from the built-in defaults, with the file line or variable that set each (like postconf -n)')
    .action((o: { changed?: boolean }) => {
      const loaded = loadDetailedOrExit(program.opts<{ config?: string }>().config);
      process.stderr.write(`config: ${loaded.file ?? 'built-in defaults'} (${loaded.source})\n`);
      process.stderr.write(describeRules(loaded.config.policy.rules));
      if (!o.changed) {
        process.stdout.write(JSON.stringify(maskedConfig(loaded.config), null, 2) + '\n');
        return;
      }
      const changed = changedValues(loaded);
      if (changed.length === 0) process.stderr.write('no value differs from the built-in defaults\n');
      for (const c of changed) process.stdout.write(`${c.path} = ${JSON.stringify(c.value)}  # ${c.origin}\n`);
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; usage errors were already printed by commander.
      process.exitCode = err.exitCode === 0 ? 0 : 2;
      return;
    }
    process.stderr.write(`dlp-relay: ${maskSecrets((err as Error).message)}\n`);
    process.exitCode = exitCodeFor(err);
  }
}

await main(process.argv);
