// `dlp-relay quarantine …` subcommands as plain async functions (commander wiring lives with the CLI): parse options, call the shared operations, print, return an exit code.
import { hostname, userInfo } from 'node:os';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import { isSafeId, QuarantineInputError } from './common.js';
import { isUnavailable } from './errors.js';
import { DlpError } from '../errors.js';
import {
  deleteMessage,
  downloadMessage,
  listAuditEntries,
  listMessages,
  normalizeId,
  purgeMessages,
  releaseMessage,
  sanitizeText,
  showMessage,
  type Actor,
  type DeliverFn,
  type OperationsContext,
  type RescanFn,
  type MessagePreview,
  type ReleaseOptions,
  type ReleaseOutcome,
} from './operations.js';
import { MAX_LIST_LIMIT, type AuditFilter, type AuditPage, type DeleteResult, type QuarantineFilter, type QuarantinePage, type QuarantineRecord, type QuarantineStatus } from './types.js';
import type { QuarantineStore } from './types.js';

/**
 * Where the commands get their answers: the store itself (offline, operations.ts) or the running
 * relay's admin API (src/cli/remote-quarantine.ts). Same results either way, so the printing is shared.
 */
export interface QuarantineBackend {
  /** Printed before any output: which relay or store the command used. */
  readonly describe: string;
  list(filter: QuarantineFilter): Promise<QuarantinePage>;
  show(id: string): Promise<{ record: QuarantineRecord; preview: MessagePreview } | null>;
  download(id: string): Promise<{ stream: Readable } | null>;
  release(id: string, opts: ReleaseOptions): Promise<ReleaseOutcome>;
  delete(id: string): Promise<DeleteResult>;
  /** `ids`: what was deleted (a relay older than this field leaves it out). */
  purge(olderThanDays: number): Promise<{ purged: number; olderThan: string; ids?: string[] }>;
  audit(filter: AuditFilter): Promise<AuditPage>;
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_BAD_INPUT = 2;

export interface TextSink {
  write(chunk: string): unknown;
}

export interface CliContext {
  /** When set, every command goes through it instead of `store` (the relay's admin API). */
  backend?: QuarantineBackend;
  store: QuarantineStore;
  deliver: DeliverFn;
  rescan?: RescanFn;
  out: TextSink;
  err: TextSink;
  logger?: Logger;
  /** Default: cli:<os user>, source <hostname>. */
  actor?: Actor;
  releaseTimeoutMs?: number;
}

export interface ListCliOptions {
  from?: string;
  to?: string;
  sender?: string;
  recipient?: string;
  /** A number, or "none" for messages held without a verdict. */
  actionCode?: string | number;
  policy?: string;
  status?: string;
  limit?: string | number;
  cursor?: string;
  json?: boolean;
}

export interface IdCliOptions {
  id: string;
  json?: boolean;
}

export interface ReleaseCliOptions extends IdCliOptions {
  rescan?: boolean;
  /** Repeatable option or one comma-separated value. */
  recipients?: string[] | string;
  redirectTo?: string;
  /** Original recipients to give up on (repeatable or comma-separated). */
  drop?: string[] | string;
}

export interface PurgeCliOptions {
  olderThanDays: string | number;
  json?: boolean;
}

export interface DownloadCliOptions {
  id: string;
  /** File to write (created, never overwritten, mode 0600); without it the EML goes to ctx.out, which must then be a Writable. */
  output?: string;
}

export interface AuditCliOptions {
  from?: string;
  to?: string;
  actor?: string;
  action?: string;
  target?: string;
  limit?: string | number;
  cursor?: string;
  json?: boolean;
}

/** A bad option value: exit 2 (EXIT_BAD_INPUT), message on stderr. */
class BadInput extends DlpError {
  readonly errorCode = 'DLP_ERR_USAGE' as const;
}

function defaultActor(): Actor {
  let user = process.env.USER ?? 'unknown';
  try {
    user = userInfo().username;
  } catch {
    /* no passwd entry (containers): keep $USER */
  }
  return { name: `cli:${user}`, source: hostname() };
}

function opsContext(ctx: CliContext): OperationsContext {
  return {
    store: ctx.store,
    deliver: ctx.deliver,
    ...(ctx.rescan ? { rescan: ctx.rescan } : {}),
    ...(ctx.logger ? { logger: ctx.logger } : {}),
    ...(ctx.releaseTimeoutMs ? { releaseTimeoutMs: ctx.releaseTimeoutMs } : {}),
  };
}

/** The store-backed implementation: what `--offline` uses, and what the admin API runs on the relay's side. */
export function localBackend(ctx: CliContext, describe: string): QuarantineBackend {
  const ops = opsContext(ctx);
  const actor = ctx.actor ?? defaultActor();
  return {
    describe,
    list: (f) => listMessages(ops, actor, f),
    show: (id) => showMessage(ops, actor, id),
    download: (id) => downloadMessage(ops, actor, id),
    release: (id, o) => releaseMessage(ops, actor, id, o),
    delete: (id) => deleteMessage(ops, actor, id),
    purge: (days) => purgeMessages(ops, actor, { olderThanDays: days }),
    audit: (f) => listAuditEntries(ops, actor, f),
  };
}

function backendOf(ctx: CliContext): QuarantineBackend {
  return ctx.backend ?? localBackend(ctx, `store ${ctx.store.kind}`);
}

/** Echoes user input safely (quoted, escaped), so a hostile argument cannot write to the terminal. */
function quote(s: string): string {
  return JSON.stringify(s.length > 100 ? `${s.slice(0, 100)}…` : s);
}

/** One CLI error line in the common style, "dlp-relay: quarantine: <what>: <why>"; returns the exit code. */
function fail(ctx: CliContext, text: string, code: number = EXIT_FAILURE): number {
  ctx.err.write(`dlp-relay: quarantine: ${text}\n`);
  return code;
}

/**
 * An unknown id exits 1 whether or not it looks like an id (README: `../../etc/passwd` is simply unknown); only
 * the hint differs. Exit 2 stays for malformed options, not for ids that match nothing.
 */
function notFound(ctx: CliContext, id: string): number {
  const wellFormed = isSafeId(normalizeId(id));
  return fail(ctx, `no quarantined message with id ${quote(id)}${wellFormed ? '' : ' (ids are UUIDs)'}`);
}

/** Shared error handling: bad input → 2, store down or anything else → 1, always with one clear line. */
async function run(ctx: CliContext, fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    // One style for every CLI error: "dlp-relay: <what>: <why>"; bad input exits 2, everything else 1.
    if (err instanceof BadInput || err instanceof QuarantineInputError) {
      ctx.err.write(`dlp-relay: quarantine: ${err.message}\n`);
      return EXIT_BAD_INPUT;
    }
    if (isUnavailable(err)) {
      ctx.err.write(`dlp-relay: quarantine: store unavailable: ${err.message}\n`);
      return EXIT_FAILURE;
    }
    ctx.err.write(`dlp-relay: quarantine: ${err instanceof Error ? err.message : String(err)}\n`);
    const code = (err as { exitCode?: unknown }).exitCode;
    return typeof code === 'number' ? code : EXIT_FAILURE;
  }
}

function parseDate(name: string, v: string | undefined): Date | undefined {
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new BadInput(`--${name} must be an ISO 8601 time, got ${quote(v)}`);
  return new Date(t);
}

function parseLimit(v: string | number | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > MAX_LIST_LIMIT) throw new BadInput(`--limit must be an integer from 1 to ${MAX_LIST_LIMIT}`);
  return n;
}

/** "deleted" is not listable: our stores delete for real, and the audit trail keeps the fact. */
const STATUSES: readonly QuarantineStatus[] = ['held', 'released'];

/** --from and --to as a listing's time window; an option not given stays out of the filter. */
function timeWindow(o: { from?: string; to?: string }): { from?: Date; to?: Date } {
  const from = parseDate('from', o.from);
  const to = parseDate('to', o.to);
  return { ...(from ? { from } : {}), ...(to ? { to } : {}) };
}

/** Copies the text options that were given, under the same names, into a filter. */
function copyGiven<K extends string>(into: Partial<Record<K, string>>, o: Partial<Record<K, string>>, keys: readonly K[]): void {
  for (const k of keys) {
    const v = o[k];
    if (v !== undefined) into[k] = v;
  }
}

function listFilter(o: ListCliOptions): QuarantineFilter {
  const f: QuarantineFilter = timeWindow(o);
  copyGiven(f, o, ['sender', 'recipient', 'policy', 'cursor']);
  if (o.actionCode !== undefined) {
    const s = String(o.actionCode);
    if (s === 'none' || s === 'null') f.actionCode = null;
    else if (/^\d{1,3}$/.test(s)) f.actionCode = Number(s);
    else throw new BadInput('--action-code must be a number or "none"');
  }
  if (o.status !== undefined) {
    if (o.status === 'deleted') throw new BadInput('deleted messages are gone (bytes and metadata); their deletions are in the audit trail: dlp-relay quarantine audit --action delete');
    if (!STATUSES.includes(o.status as QuarantineStatus)) throw new BadInput(`--status must be one of ${STATUSES.join(', ')}`);
    f.status = o.status as QuarantineStatus;
  }
  const limit = parseLimit(o.limit);
  if (limit !== undefined) f.limit = limit;
  return f;
}

/** One table cell: single line, control characters neutralised, bounded. */
function cell(s: string, max: number): string {
  const one = sanitizeText(s).replace(/[\n\t]/g, ' ');
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

/** A listing's page: as JSON, or as a table under its header row, then the option that fetches the next page. */
function printPage<T>(ctx: CliContext, json: boolean | undefined, page: { items: T[]; nextCursor: string | null }, header: string[], row: (item: T) => string[]): number {
  if (json) {
    ctx.out.write(JSON.stringify(page, null, 2) + '\n');
    return EXIT_OK;
  }
  ctx.out.write(table([header, ...page.items.map(row)]));
  if (page.nextCursor) ctx.out.write(`more: --cursor ${page.nextCursor}\n`);
  return EXIT_OK;
}

function humanSize(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function recipientsCell(r: QuarantineRecord): string {
  const first = r.envelope.to[0]?.address ?? '';
  return r.envelope.to.length > 1 ? `${first} +${r.envelope.to.length - 1}` : first;
}

export async function quarantineList(opts: ListCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const filter = listFilter(opts);
    const page = await backendOf(ctx).list(filter);
    if (!opts.json && page.items.length === 0) {
      ctx.out.write('no quarantined messages match\n');
      return EXIT_OK;
    }
    return printPage(ctx, opts.json, page, ['ID', 'QUARANTINED', 'STATUS', 'ACTION', 'FROM', 'TO', 'SIZE', 'SUBJECT'], (r) => [
      r.id,
      r.quarantinedAt.replace(/\.\d{3}Z$/, 'Z'),
      r.releaseClaim ? 'releasing' : r.status,
      r.actionCode === null ? '-' : String(r.actionCode),
      cell(r.envelope.from || '<>', 40),
      cell(recipientsCell(r), 40),
      humanSize(r.size),
      cell(r.subject ?? '', 50),
    ]);
  });
}

export async function quarantineShow(opts: IdCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const shown = await backendOf(ctx).show(opts.id);
    if (!shown) return notFound(ctx, opts.id);
    if (opts.json) {
      ctx.out.write(JSON.stringify(shown, null, 2) + '\n');
      return EXIT_OK;
    }
    const { record: r, preview: p } = shown;
    const lines = [
      `id:            ${r.id}`,
      `query id:      ${cell(r.queryId, 100)}`,
      `status:        ${r.status}${r.releaseClaim ? ` (release in progress by ${cell(r.releaseClaim.by, 80)} since ${r.releaseClaim.at})` : ''}`,
      `received:      ${r.receivedAt}`,
      `quarantined:   ${r.quarantinedAt}`,
      `reason:        ${cell(r.reason, 200)}  (actionCode ${r.actionCode ?? 'none'})`,
      `policies:      ${r.policies.map((x) => cell(x.name, 80)).join(', ') || '-'}`,
      `sender:        ${cell(r.envelope.from || '<>', 320)}`,
      `recipients:    ${r.envelope.to.map((t) => cell(t.address, 320)).join(', ')}`,
      `client:        ${cell(r.clientAddress, 64)} (helo ${cell(r.heloName ?? '-', 100)})`,
      `size:          ${humanSize(r.size)}  sha256 ${r.sha256}`,
      `subject:       ${cell(r.subject ?? '', 200)}`,
      `instance:      ${cell(r.instance, 100)}`,
    ];
    if (r.release) lines.push(`released:      ${r.release.at} by ${cell(r.release.by, 100)} to ${r.release.recipients.map((x) => cell(x, 320)).join(', ')}`);
    for (const x of r.recipientResults ?? [])
      lines.push(`  ${x.status.padEnd(9)} ${cell(x.address, 320)} ${x.code || '-'} ${cell(x.response, 200)} (${x.at} by ${cell(x.by, 100)})`);
    lines.push('', 'headers:');
    for (const h of p.headers) lines.push(`  ${cell(h.name, 80)}: ${cell(h.value, 300)}`);
    if (p.headersTruncated) lines.push('  …');
    lines.push('', `attachments (${p.attachments.length}${p.attachmentsTruncated ? '+' : ''}):`);
    for (const a of p.attachments) lines.push(`  ${cell(a.filename ?? '(unnamed)', 120)}  ${cell(a.contentType, 60)}  ${humanSize(a.size)}`);
    lines.push('', `text (${p.textSource}${p.textTruncated ? ', truncated' : ''}):`, p.text);
    if (p.error) lines.push('', `preview incomplete: ${p.error}`);
    ctx.out.write(lines.join('\n') + '\n');
    return EXIT_OK;
  });
}

function recipientsOpt(v: string[] | string | undefined, name = 'recipients'): string[] | undefined {
  if (v === undefined || (Array.isArray(v) && v.length === 0)) return undefined;
  const list = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw new BadInput(`--${name} needs at least one address`);
  return list;
}

export async function quarantineRelease(opts: ReleaseCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const recipients = recipientsOpt(opts.recipients);
    const drop = recipientsOpt(opts.drop, 'drop');
    if (recipients && opts.redirectTo !== undefined) throw new BadInput('--recipients and --redirect-to cannot be combined');
    if (drop && opts.redirectTo !== undefined) throw new BadInput('--drop and --redirect-to cannot be combined');
    const out = await backendOf(ctx).release(opts.id, {
      ...(opts.rescan ? { rescan: true } : {}),
      ...(recipients ? { recipients } : {}),
      ...(drop ? { drop } : {}),
      ...(opts.redirectTo !== undefined ? { redirectTo: opts.redirectTo } : {}),
    });
    if (opts.json) ctx.out.write(JSON.stringify(out, null, 2) + '\n');
    switch (out.status) {
      case 'released':
      case 'partial':
      case 'undelivered': {
        if (!opts.json) {
          // One line per recipient, so a script (or an operator) sees each fate; the summary says what is still held.
          const rows = out.recipients.map((r) => [r.status, cell(r.address, 320), r.code ? String(r.code) : '-', cell(r.response, 300)]);
          for (const a of out.dropped) rows.push(['dropped', cell(a, 320), '-', '']);
          if (rows.length) ctx.out.write(table(rows));
          const n = out.recipients.filter((r) => r.status === 'accepted').length;
          const summary = out.complete
            ? 'released completely'
            : `${n} of ${out.recipients.length} accepted; still held for ${out.pending.map((a) => cell(a, 320)).join(', ')}`;
          ctx.out.write(`${out.id}: ${summary}\n`);
        }
        // Non-zero unless every recipient of this delivery was accepted: the rest is not delivered yet.
        return out.status === 'released' ? EXIT_OK : EXIT_FAILURE;
      }
      case 'not-found':
        return notFound(ctx, opts.id);
      case 'already-released':
        // The id leads each line: with several ids (or ALL) the operator must see which one it was about.
        return fail(ctx, `${out.id}: already released${out.release ? ` at ${out.release.at} by ${cell(out.release.by, 100)}` : ''}; not delivered again`);
      case 'in-progress':
        return fail(ctx, `${out.id}: a release of this message is in progress${out.claim ? ` (by ${cell(out.claim.by, 100)} since ${out.claim.at})` : ''}`);
      case 'blocked':
        return fail(ctx, `${out.id}: release blocked by re-scan (actionCode ${out.rescan.actionCode ?? 'none'}): ${cell(out.rescan.detail, 300)}`);
      case 'invalid':
        return fail(ctx, `${quote(out.id)}: ${cell(out.message, 300)}`, EXIT_BAD_INPUT);
      case 'failed':
        return fail(ctx, `${out.id}: release failed, message still held: ${cell(out.message, 500)}`);
    }
  });
}

export async function quarantineDelete(opts: IdCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const result = await backendOf(ctx).delete(opts.id);
    if (result === 'not-found') return notFound(ctx, opts.id);
    if (result === 'in-progress') return fail(ctx, `${opts.id}: a release of this message is in progress; not deleted`);
    ctx.out.write(opts.json ? JSON.stringify({ status: 'deleted', id: opts.id }) + '\n' : `deleted ${opts.id}\n`);
    return EXIT_OK;
  });
}

export async function quarantinePurge(opts: PurgeCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const days = typeof opts.olderThanDays === 'number' ? opts.olderThanDays : opts.olderThanDays.trim() === '' ? NaN : Number(opts.olderThanDays);
    if (!Number.isFinite(days) || days < 0) throw new BadInput('--older-than-days must be a number of days (0 or more)');
    const out = await backendOf(ctx).purge(days);
    const ids = out.ids ?? [];
    ctx.out.write(
      opts.json ? JSON.stringify(out) + '\n' : `purged ${out.purged} message(s) quarantined before ${out.olderThan}${ids.length ? `:\n${ids.join('\n')}` : ''}\n`,
    );
    return EXIT_OK;
  });
}

export async function quarantineDownload(opts: DownloadCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const dl = await backendOf(ctx).download(opts.id);
    if (!dl) return notFound(ctx, opts.id);
    if (opts.output) {
      // 'wx': never overwrite an existing file; 0600: quarantined mail is sensitive.
      await pipeline(dl.stream, createWriteStream(opts.output, { flags: 'wx', mode: 0o600 }));
      ctx.err.write(`wrote ${opts.output}\n`);
    } else {
      await pipeline(dl.stream, ctx.out as Writable, { end: false });
    }
    return EXIT_OK;
  });
}

export async function quarantineAudit(opts: AuditCliOptions, ctx: CliContext): Promise<number> {
  return run(ctx, async () => {
    const f: AuditFilter = timeWindow(opts);
    copyGiven(f, opts, ['actor', 'action', 'target', 'cursor']);
    const limit = parseLimit(opts.limit);
    if (limit !== undefined) f.limit = limit;
    return printPage(ctx, opts.json, await backendOf(ctx).audit(f), ['AT', 'ACTOR', 'SOURCE', 'ACTION', 'TARGET', 'RESULT', 'DETAIL'], (a) => [
      a.at,
      cell(a.actor, 40),
      cell(a.source ?? '-', 40),
      a.action,
      a.target ?? '-',
      a.result,
      cell(a.detail ?? '', 80),
    ]);
  });
}
