// `dlp-relay status`, `dlp-relay reload` and `dlp-relay health`: the running relay as its admin API reports it (like `postfix status` / `postfix reload`).
import type { Command } from 'commander';
import type { StatusReport } from '../admin/daemon-routes.js';
import type { ReloadReport } from '../reload.js';
import { AdminClient, adminTarget, apiError, CliError } from './admin-client.js';
import type { ConfigAccess } from './quarantine-commands.js';

interface AccessOptions {
  server?: string;
  tokenFile?: string;
}

function duration(s: number): string {
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return `${d ? `${d}d ` : ''}${d || h ? `${h}h ` : ''}${m}m ${s % 60}s`;
}

export function formatStatus(s: StatusReport): string {
  const lines = [
    `version:     ${s.version} (pid ${s.pid})`,
    `up:          ${duration(s.uptimeS)} since ${s.startedAt}${s.draining ? ' (DRAINING: shutting down)' : ''}`,
    `config:      ${s.configFile ?? 'built-in defaults'}`,
    `ready:       ${s.readiness.ready ? 'yes' : 'NO'}`,
    ...Object.entries(s.readiness.checks).map(([name, c]) => `  ${name.padEnd(11)}${c.ok ? 'ok' : `FAIL: ${c.detail}`} (${c.ms} ms)`),
    `sessions:    ${s.sessions ?? 'n/a (cluster: held by the workers)'}`,
    `ucwi:        ${s.ucwi.url}, ${s.ucwi.inFlight} in flight, ${s.ucwi.waiting} waiting${s.ucwi.outage ? `; FAILING since ${s.ucwi.outage.since} (${s.ucwi.outage.lastClass}, ${s.ucwi.outage.failures} failures)` : ''}`,
    `quarantine:  ${s.held ?? 'unknown'} held`,
    `cas outbox:  ${s.casOutbox ? `${s.casOutbox.pending} pending, ${s.casOutbox.failed} failed` : 'CAS off'}`,
  ];
  if (s.lastReload) lines.push(`last reload: ${s.lastReload.at} by ${s.lastReload.trigger}: ${s.lastReload.ok ? 'applied' : 'REFUSED'}`);
  return lines.join('\n') + '\n';
}

export function registerDaemonCommands(program: Command, access: ConfigAccess): void {
  const addAccess = (c: Command) =>
    c
      .option('--server <host:port>', "the relay's admin API (default: admin.host:admin.port of the configuration)")
      .option('--token-file <file>', 'admin token file (default: DLP_RELAY_ADMIN_TOKEN, admin.tokenFile)');
  const client = (o: AccessOptions): AdminClient => {
    const c = new AdminClient(adminTarget(o, access.config, access.configFrom), 30_000);
    process.stderr.write(`relay: ${c.target.url} (${c.target.from})\n`);
    return c;
  };

  addAccess(program.command('status').description('uptime, sessions, UCWI calls in flight, readiness checks, held messages, CAS outbox, version'))
    .option('--json')
    .action(async (o: AccessOptions & { json?: boolean }) => {
      const r = await client(o).json('GET', '/api/v1/status');
      if (r.status !== 200) throw new CliError(`status: the relay answered ${apiError(r)}`);
      const s = r.body as StatusReport;
      process.stdout.write(o.json ? JSON.stringify(s, null, 2) + '\n' : formatStatus(s));
      // Like `systemctl is-active`: scripts can test readiness by the exit code.
      process.exitCode = s.readiness.ready ? 0 : 1;
    });

  addAccess(program.command('reload').description('make the running relay re-read its configuration (as SIGHUP does); exit 1 if the new one is refused'))
    .option('--json')
    .action(async (o: AccessOptions & { json?: boolean }) => {
      const r = await client(o).json('POST', '/api/v1/reload');
      if (r.status !== 200 && r.status !== 422) throw new CliError(`reload: the relay answered ${apiError(r)}`);
      const rep = r.body as ReloadReport;
      if (o.json) process.stdout.write(JSON.stringify(rep, null, 2) + '\n');
      else if (rep.ok) {
        process.stdout.write(`reloaded: ${rep.applied.length ? rep.applied.join(', ') : 'no changes'}\n`);
        if (rep.restartNeeded.length) process.stdout.write(`need a restart to take effect: ${rep.restartNeeded.join(', ')}\n`);
      } else {
        process.stderr.write(
          `dlp-relay: reload: the new configuration was refused; the relay keeps running on the old one:\n${rep.problems.map((p) => `  - ${p.path}: ${p.message}${p.origin ? ` (set by ${p.origin})` : ''}`).join('\n')}\n`,
        );
      }
      process.exitCode = rep.ok ? 0 : 1;
    });

  program
    .command('health')
    .description('exit 0 if the configured admin listener answers /healthz (the container HEALTHCHECK); --ready checks /readyz')
    .option('--server <host:port>', 'admin listener (default: admin.host:admin.port of the configuration)')
    .option('--ready', 'check /readyz instead (dependencies reachable)')
    .option('--timeout <ms>', 'give up after', '3000')
    .action(async (o: { server?: string; ready?: boolean; timeout: string }) => {
      const t = adminTarget(o, access.config, access.configFrom);
      const path = o.ready ? '/readyz' : '/healthz';
      try {
        const res = await fetch(`${t.url}${path}`, { signal: AbortSignal.timeout(Number(o.timeout) || 3000) });
        process.stdout.write(`${t.url}${path}: HTTP ${res.status}\n`);
        process.exitCode = res.ok ? 0 : 1;
      } catch (err) {
        throw new CliError(`health: ${t.url}${path} not reachable: ${(err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message}`);
      }
    });
}
