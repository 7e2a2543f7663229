// The `dlp-relay cas …` subcommands as plain functions: parsed options and an output stream in, exit code out (commander wiring lives elsewhere).
import { readFile } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { CasError, CasPollTimeoutError, type CasApi, type MitigationAction } from './client.js';
import {
  MAX_ITEMS_PER_LIST,
  isEmailAddress,
  isHttpUrl,
  normalizeItem,
  SHA1_RE,
  SHA256_RE,
  type CasList,
  type CasRuleAction,
  type CasRules,
  CAS_LISTS,
} from './items.js';
import type { CasOutbox, CasOutboxEntry } from './outbox.js';
import { formatProblem, loadMitigationBatch, PROVIDER_FOR_SERVICE, validateMitigationItems, type MitigationService } from './validate.js';

export const EXIT_OK = 0;
/** The API (or the outbox store) failed: worth retrying later. */
export const EXIT_API_FAILURE = 1;
/** The input is wrong: retrying the same command will not help. */
export const EXIT_BAD_INPUT = 2;

export interface CasBlockOptions {
  sender?: string[];
  url?: string[];
  sha1?: string[];
  sha256?: string[];
  json?: boolean;
}

export type CasMitigateOptions =
  | { file: string; format?: 'json' | 'csv'; json?: boolean }
  | {
      action: string;
      mailbox: string;
      messageId?: string;
      uniqueId?: string;
      deliveryTime?: string;
      /** Default exchange; the provider follows from the service unless given. */
      service?: string;
      provider?: string;
      detectionTime?: string;
      mailLogId?: string;
      json?: boolean;
    };

export interface CasResultsOptions {
  batchId: string;
  /** Poll until every action is terminal instead of printing the current state once. */
  wait: boolean;
  /** Default 15 s: results polling spends the same 20-per-minute budget as everything else. */
  intervalMs?: number;
  timeoutMs?: number;
  json?: boolean;
}

const line = (out: Writable, s = '') => out.write(`${s}\n`);

/** API errors become exit 1 with the vendor's code/msg/traceId; anything else is a bug or an I/O error, also 1. */
async function guarded(out: Writable, fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof CasError) {
      line(out, `error: ${err.message}`);
      if (err.attempts > 1) line(out, `(gave up after ${err.attempts} attempts)`);
    } else line(out, `error: ${(err as Error).message ?? String(err)}`);
    return EXIT_API_FAILURE;
  }
}

const FLAG: Record<CasList, string> = { senders: '--sender', urls: '--url', filehashes: '--sha1', file256hashes: '--sha256' };

/** Validates every value and reports all bad ones at once; rules come back normalised and de-duplicated. */
export function blockRules(opts: CasBlockOptions): { rules: CasRules; problems: string[] } {
  const given: Record<CasList, string[]> = { senders: opts.sender ?? [], urls: opts.url ?? [], filehashes: opts.sha1 ?? [], file256hashes: opts.sha256 ?? [] };
  const checks: Record<CasList, (v: string) => boolean> = {
    senders: isEmailAddress,
    urls: isHttpUrl,
    filehashes: (v) => SHA1_RE.test(v),
    file256hashes: (v) => SHA256_RE.test(v),
  };
  const what: Record<CasList, string> = {
    senders: 'not an email address',
    urls: 'not an absolute http(s) URL',
    filehashes: 'not a SHA-1 hash (40 hex digits)',
    file256hashes: 'not a SHA-256 hash (64 hex digits)',
  };
  const problems: string[] = [];
  const rules: CasRules = {};
  for (const list of CAS_LISTS) {
    const seen = new Set<string>();
    for (const raw of given[list]) {
      const v = normalizeItem(list, raw);
      if (!checks[list](v)) {
        problems.push(`${FLAG[list]} ${JSON.stringify(raw)}: ${what[list]}`);
        continue;
      }
      if (seen.has(v)) continue;
      seen.add(v);
      (rules[list] ??= []).push(v);
    }
  }
  return { rules, problems };
}

async function updateLists(action: CasRuleAction, opts: CasBlockOptions, out: Writable, deps: { client: CasApi }): Promise<number> {
  const { rules, problems } = blockRules(opts);
  if (problems.length) {
    for (const p of problems) line(out, `invalid ${p}`);
    return EXIT_BAD_INPUT;
  }
  const total = CAS_LISTS.reduce((n, l) => n + (rules[l]?.length ?? 0), 0);
  if (total === 0) {
    line(out, `nothing to ${action === 'create' ? 'block' : 'unblock'}: give --sender, --url, --sha1 or --sha256`);
    return EXIT_BAD_INPUT;
  }
  return guarded(out, async () => {
    // Same chunking as the pusher: request i carries slice i of every list.
    const n = Math.max(...CAS_LISTS.map((l) => Math.ceil((rules[l]?.length ?? 0) / MAX_ITEMS_PER_LIST)));
    const messages: string[] = [];
    for (let i = 0; i < n; i++) {
      const chunk: CasRules = {};
      for (const l of CAS_LISTS) {
        const slice = rules[l]?.slice(i * MAX_ITEMS_PER_LIST, (i + 1) * MAX_ITEMS_PER_LIST);
        if (slice?.length) chunk[l] = slice;
      }
      const r = await deps.client.updateBlockedLists(action, chunk);
      if (r.message) messages.push(r.message);
    }
    const counts = CAS_LISTS.filter((l) => rules[l]?.length).map((l) => `${rules[l]!.length} ${l}`);
    if (opts.json) line(out, JSON.stringify({ action, rules, messages }));
    else
      line(
        out,
        `${action === 'create' ? 'blocked' : 'unblocked'}: ${counts.join(', ')}${messages.length ? ` (CAS: ${[...new Set(messages)].join(' ')})` : ''}`,
      );
    return EXIT_OK;
  });
}

/** `dlp-relay cas block`: adds values to the CAS blocked lists directly (not through the outbox, and never TTL-managed). */
export function casBlock(opts: CasBlockOptions, out: Writable, deps: { client: CasApi }): Promise<number> {
  return updateLists('create', opts, out, deps);
}

/** `dlp-relay cas unblock`: removes values from the CAS blocked lists. */
export function casUnblock(opts: CasBlockOptions, out: Writable, deps: { client: CasApi }): Promise<number> {
  return updateLists('delete', opts, out, deps);
}

/** `dlp-relay cas list`: GET the blocked lists. */
export function casList(opts: { json?: boolean }, out: Writable, deps: { client: CasApi }): Promise<number> {
  return guarded(out, async () => {
    const lists = await deps.client.getBlockedLists();
    if (opts.json) {
      line(out, JSON.stringify(lists));
      return EXIT_OK;
    }
    for (const l of CAS_LISTS) {
      line(out, `${l} (${lists[l].length}):`);
      for (const v of lists[l]) line(out, `  ${v}`);
    }
    return EXIT_OK;
  });
}

function entryLine(e: CasOutboxEntry): string {
  const when = e.status === 'pending' ? ` next ${new Date(e.nextAttemptAt).toISOString()}` : '';
  const err = e.lastError ? ` last error: ${e.lastError}` : '';
  return `${e.id}\t${e.status}\t${e.action} ${e.list} ${e.value}\tattempts ${e.attempts}${when}\t${e.reason}${err}`;
}

/** `dlp-relay cas outbox [--retry]`: pending and failed pushes; `--retry` puts failed ones back in the queue. */
export function casOutbox(opts: { retry: boolean; json?: boolean }, out: Writable, deps: { outbox: CasOutbox }): Promise<number> {
  return guarded(out, async () => {
    let retried = 0;
    if (opts.retry) retried = await deps.outbox.retryFailed();
    const entries = await deps.outbox.list({ statuses: ['pending', 'inflight', 'failed'], limit: 10_000 });
    const stats = await deps.outbox.stats();
    if (opts.json) {
      line(out, JSON.stringify({ stats, retried, entries }));
      return EXIT_OK;
    }
    if (opts.retry) line(out, `requeued ${retried} failed entr${retried === 1 ? 'y' : 'ies'}`);
    line(out, `pending ${stats.pending}, failed ${stats.failed}, done ${stats.done}`);
    for (const e of entries) line(out, entryLine(e));
    return EXIT_OK;
  });
}

/** `dlp-relay cas mitigate`: one action from flags, or a batch from a JSON/CSV file; prints batch_id and traceId. */
export async function casMitigate(opts: CasMitigateOptions, out: Writable, deps: { client: CasApi }): Promise<number> {
  let loaded: ReturnType<typeof validateMitigationItems>;
  if ('file' in opts) {
    let text: string;
    try {
      text = await readFile(opts.file, 'utf8');
    } catch (err) {
      line(out, `cannot read ${opts.file}: ${(err as Error).message}`);
      return EXIT_BAD_INPUT;
    }
    loaded = loadMitigationBatch(
      text,
      opts.format ?? (opts.file.toLowerCase().endsWith('.csv') ? 'csv' : opts.file.toLowerCase().endsWith('.json') ? 'json' : undefined),
    );
  } else {
    const service = opts.service ?? 'exchange';
    const provider = opts.provider ?? PROVIDER_FOR_SERVICE[service as MitigationService] ?? '';
    const raw: Record<string, string | undefined> = {
      action_type: opts.action,
      service,
      account_provider: provider,
      mailbox: opts.mailbox,
      mail_message_id: opts.messageId,
      mail_unique_id: opts.uniqueId,
      mail_message_delivery_time: opts.deliveryTime,
      detection_time: opts.detectionTime,
      mail_log_id: opts.mailLogId,
    };
    loaded = validateMitigationItems([Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined))]);
  }
  if (loaded.problems.length) {
    for (const p of loaded.problems) line(out, `invalid ${formatProblem(p)}`);
    return EXIT_BAD_INPUT;
  }
  return guarded(out, async () => {
    const r = await deps.client.mitigate(loaded.items);
    if (opts.json) line(out, JSON.stringify({ batch_id: r.batchId, traceId: r.traceId, items: loaded.items.length }));
    else {
      line(out, `batch_id: ${r.batchId}`);
      line(out, `traceId: ${r.traceId ?? '(none)'}`);
      line(out, `actions submitted: ${loaded.items.length}; follow with: dlp-relay cas results --batch-id ${r.batchId} --wait`);
    }
    return EXIT_OK;
  });
}

function actionLine(a: MitigationAction): string {
  const id = a.mail_message_id ?? a.mail_unique_id ?? '';
  const err = a.error_code !== undefined && a.error_code !== 0 ? `\t${a.error_code} ${a.error_message ?? ''}` : '';
  return `${a.status}\t${a.action_type}\t${a.mailbox ?? ''}\t${id}${err}`;
}

function printActions(out: Writable, actions: MitigationAction[], json: boolean | undefined, extra: Record<string, unknown> = {}): void {
  if (json) {
    line(out, JSON.stringify({ ...extra, actions }));
    return;
  }
  const counts = new Map<string, number>();
  for (const a of actions) counts.set(a.status, (counts.get(a.status) ?? 0) + 1);
  line(out, `${actions.length} action(s): ${[...counts].map(([s, n]) => `${s} ${n}`).join(', ') || 'none visible yet'}`);
  for (const a of actions) line(out, actionLine(a));
}

/** `dlp-relay cas results --batch-id … [--wait]`: action states; with --wait, until all are Success, Skipped or Failed. */
export function casResults(opts: CasResultsOptions, out: Writable, deps: { client: CasApi }): Promise<number> {
  const batchId = opts.batchId?.trim() ?? '';
  if (!batchId || /\s/.test(batchId)) {
    line(out, 'invalid --batch-id: give the batch_id printed by "cas mitigate"');
    return Promise.resolve(EXIT_BAD_INPUT);
  }
  return guarded(out, async () => {
    if (!opts.wait) {
      printActions(out, await deps.client.getMitigationResults({ batchId }), opts.json, { batch_id: batchId });
      return EXIT_OK;
    }
    try {
      const actions = await deps.client.pollMitigation(batchId, { intervalMs: opts.intervalMs ?? 15_000, timeoutMs: opts.timeoutMs ?? 600_000 });
      printActions(out, actions, opts.json, { batch_id: batchId, complete: true });
      return EXIT_OK;
    } catch (err) {
      if (!(err instanceof CasPollTimeoutError)) throw err;
      line(out, err.message);
      printActions(out, err.actions, opts.json, { batch_id: batchId, complete: false });
      return EXIT_API_FAILURE;
    }
  });
}
