// Mitigation request validation (the documented rules of POST /v1/mitigation/mails) and batch-file parsing (JSON array or CSV).
import { isEmailAddress } from './items.js';

export const MITIGATION_ACTION_TYPES = ['MAIL_DELETE', 'MAIL_QUARANTINE', 'MAIL_RESTORE'] as const;
export type MitigationActionType = (typeof MITIGATION_ACTION_TYPES)[number];
export const MITIGATION_SERVICES = ['exchange', 'gmail'] as const;
export type MitigationService = (typeof MITIGATION_SERVICES)[number];
export const MITIGATION_PROVIDERS = ['office365', 'google'] as const;
export type MitigationProvider = (typeof MITIGATION_PROVIDERS)[number];

/** The provider each service belongs to (the only pairs the vendor and every integration use). */
export const PROVIDER_FOR_SERVICE: Record<MitigationService, MitigationProvider> = { exchange: 'office365', gmail: 'google' };

/** Every field the vendor documents for one action object (seed 000); anything else is a typo. */
export const MITIGATION_FIELDS = [
  'action_type',
  'service',
  'account_provider',
  'mailbox',
  'mail_message_id',
  'mail_unique_id',
  'mail_message_delivery_time',
  'detection_time',
  'mail_log_id',
] as const;
export type MitigationField = (typeof MITIGATION_FIELDS)[number];

/** One action object as sent on the wire; optional fields are omitted rather than sent empty. */
export interface MitigationItem {
  action_type: MitigationActionType;
  service: MitigationService;
  account_provider: MitigationProvider;
  mailbox: string;
  mail_message_id?: string;
  mail_unique_id?: string;
  mail_message_delivery_time?: string;
  detection_time?: string;
  mail_log_id?: string;
}

/** One problem; `index` is the 0-based item position (-1 for the batch as a whole). */
export interface ValidationProblem {
  index: number;
  field: string;
  message: string;
}

export function formatProblem(p: ValidationProblem): string {
  return p.index < 0 ? `${p.field ? `${p.field}: ` : ''}${p.message}` : `item ${p.index}${p.field ? ` ${p.field}` : ''}: ${p.message}`;
}

// ISO 8601 date-time with an explicit offset: CAS timestamps are UTC (`2019-12-19T21:12:37.000Z`),
// and a zone-less time would be read in whatever zone the server chooses.
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})$/;

export function isIsoDateTime(s: string): boolean {
  if (!ISO_RE.test(s)) return false;
  const t = Date.parse(s);
  if (Number.isNaN(t)) return false;
  // Date.parse rolls 2024-02-30 over to March; the calendar date must survive a round trip.
  const [y, m, d] = s.slice(0, 10).split('-').map(Number) as [number, number, number];
  const probe = new Date(Date.UTC(y, m - 1, d));
  return probe.getUTCFullYear() === y && probe.getUTCMonth() === m - 1 && probe.getUTCDate() === d;
}

function oneOf<T extends string>(allowed: readonly T[], v: string): v is T {
  return (allowed as readonly string[]).includes(v);
}

/**
 * Checks a batch against the documented rules and returns every problem, not just the first, so a
 * batch file can be fixed in one pass. Empty strings count as absent (CSV cells). On success `items`
 * holds the trimmed objects ready to send.
 */
export function validateMitigationItems(input: unknown): { items: MitigationItem[]; problems: ValidationProblem[] } {
  const problems: ValidationProblem[] = [];
  if (!Array.isArray(input)) return { items: [], problems: [{ index: -1, field: '', message: 'the batch must be an array of action objects' }] };
  if (input.length === 0) return { items: [], problems: [{ index: -1, field: '', message: 'the batch is empty' }] };
  const items: MitigationItem[] = [];
  input.forEach((raw: unknown, index) => {
    const add = (field: string, message: string) => problems.push({ index, field, message });
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
      add('', 'must be an object');
      return;
    }
    const f: Partial<Record<MitigationField, string>> = {};
    // A field already reported as not-a-string is not reported again as missing.
    const wrongType = new Set<string>();
    for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
      if (!oneOf(MITIGATION_FIELDS, key)) {
        add(key, 'unknown field');
        continue;
      }
      if (value === undefined || value === null) continue;
      if (typeof value !== 'string') {
        wrongType.add(key);
        add(key, 'must be a string');
        continue;
      }
      const v = value.trim();
      if (v) f[key] = v;
    }

    const missing = (k: MitigationField) => !f[k] && !wrongType.has(k);
    const action = f.action_type;
    if (missing('action_type')) add('action_type', `required (${MITIGATION_ACTION_TYPES.join(', ')})`);
    else if (action && !oneOf(MITIGATION_ACTION_TYPES, action))
      add('action_type', `must be one of ${MITIGATION_ACTION_TYPES.join(', ')} (exact case), got "${action}"`);

    const service = f.service;
    if (missing('service')) add('service', 'required (exchange, gmail)');
    else if (service && !oneOf(MITIGATION_SERVICES, service)) add('service', `must be exchange or gmail, got "${service}"`);

    const provider = f.account_provider;
    if (missing('account_provider')) add('account_provider', 'required (office365, google)');
    else if (provider && !oneOf(MITIGATION_PROVIDERS, provider)) add('account_provider', `must be office365 or google, got "${provider}"`);
    else if (provider && service && oneOf(MITIGATION_SERVICES, service) && PROVIDER_FOR_SERVICE[service] !== provider) {
      add('account_provider', `must be ${PROVIDER_FOR_SERVICE[service]} for service ${service}`);
    }

    if (missing('mailbox')) add('mailbox', 'required');
    else if (f.mailbox && !isEmailAddress(f.mailbox)) add('mailbox', `not an email address: "${f.mailbox}"`);

    // "at least one of mail_message_id and mail_unique_id"; the message id alone is optional for Gmail.
    if (missing('mail_message_id') && missing('mail_unique_id')) add('mail_message_id', 'mail_message_id or mail_unique_id is required (both recommended)');

    if (service === 'gmail' && action && action !== 'MAIL_DELETE') add('action_type', `Gmail supports only MAIL_DELETE, got ${action}`);
    if (action === 'MAIL_RESTORE') {
      if (service && service !== 'exchange') add('service', 'MAIL_RESTORE is supported only for Exchange Online (service exchange)');
      if (!f.detection_time) add('detection_time', 'required for MAIL_RESTORE (from Get Quarantine Events)');
      if (!f.mail_log_id) add('mail_log_id', 'required for MAIL_RESTORE (from Get Quarantine Events)');
    }

    for (const field of ['mail_message_delivery_time', 'detection_time'] as const) {
      const v = f[field];
      if (v && !isIsoDateTime(v)) add(field, `not an ISO 8601 date-time with zone (e.g. 2019-03-15T07:44:27.000Z): "${v}"`);
    }

    if (action && service && provider && f.mailbox) {
      const item = { action_type: action, service, account_provider: provider, mailbox: f.mailbox } as MitigationItem;
      for (const k of ['mail_message_id', 'mail_unique_id', 'mail_message_delivery_time', 'detection_time', 'mail_log_id'] as const) {
        const v = f[k];
        if (v) item[k] = v;
      }
      items.push(item);
    }
  });
  return { items: problems.length ? [] : items, problems };
}

/**
 * RFC 4180 CSV: quoted fields with doubled quotes, embedded commas and newlines, CRLF or LF, an
 * optional UTF-8 BOM. Returns rows with the 1-based line each one starts on.
 */
export function parseCsv(text: string): { rows: Array<{ line: number; cells: string[] }>; error: string | null } {
  const src = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  const rows: Array<{ line: number; cells: string[] }> = [];
  let cells: string[] = [];
  let cell = '';
  let inQuotes = false;
  let line = 1;
  let rowLine = 1;
  let quotedCell = false;
  const endCell = () => {
    cells.push(quotedCell ? cell : cell.trim());
    cell = '';
    quotedCell = false;
  };
  const endRow = () => {
    // A line with nothing on it is skipped; a line holding only "" is a row with one empty cell.
    const blank = cells.length === 0 && cell.trim() === '' && !quotedCell;
    endCell();
    if (!blank) rows.push({ line: rowLine, cells });
    cells = [];
  };
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    if (inQuotes) {
      if (c === '"') {
        if (src[i + 1] === '"') {
          cell += '"';
          i++;
        } else inQuotes = false;
      } else {
        if (c === '\n') line++;
        cell += c;
      }
      continue;
    }
    if (c === '"' && cell.trim() === '') {
      inQuotes = true;
      quotedCell = true;
      cell = '';
    } else if (c === ',') endCell();
    else if (c === '\r' && src[i + 1] === '\n') continue;
    else if (c === '\n' || c === '\r') {
      endRow();
      line++;
      rowLine = line;
    } else cell += c;
  }
  if (inQuotes) return { rows, error: `unterminated quoted field starting on line ${rowLine}` };
  if (cell !== '' || cells.length > 0 || quotedCell) endRow();
  return { rows, error: null };
}

/**
 * Reads a batch file: a JSON array of action objects, or CSV whose header row names the fields
 * (`action_type,service,account_provider,mailbox,...`). The format follows `format`, else the first
 * non-blank character (`[` means JSON). Structural problems come back with index -1 or the row's index.
 */
export function parseMitigationBatch(text: string, format?: 'json' | 'csv'): { records: unknown[]; problems: ValidationProblem[] } {
  const trimmed = text.replace(/^\uFEFF/, '').trimStart();
  const fmt = format ?? (trimmed.startsWith('[') || trimmed.startsWith('{') ? 'json' : 'csv');
  if (fmt === 'json') {
    try {
      const v: unknown = JSON.parse(trimmed);
      if (!Array.isArray(v)) return { records: [], problems: [{ index: -1, field: '', message: 'JSON batch must be an array of action objects' }] };
      return { records: v, problems: [] };
    } catch (err) {
      return { records: [], problems: [{ index: -1, field: '', message: `invalid JSON: ${(err as Error).message}` }] };
    }
  }
  const { rows, error } = parseCsv(text);
  if (error) return { records: [], problems: [{ index: -1, field: '', message: `invalid CSV: ${error}` }] };
  const [header, ...data] = rows;
  if (!header) return { records: [], problems: [{ index: -1, field: '', message: 'CSV file is empty' }] };
  const names = header.cells.map((h) => h.trim());
  const problems: ValidationProblem[] = [];
  const seen = new Set<string>();
  for (const n of names) {
    if (!n) problems.push({ index: -1, field: '', message: 'CSV header has an empty column name' });
    else if (seen.has(n)) problems.push({ index: -1, field: n, message: 'CSV header names this column twice' });
    else if (!(MITIGATION_FIELDS as readonly string[]).includes(n)) problems.push({ index: -1, field: n, message: 'CSV header names an unknown field' });
    seen.add(n);
  }
  const records: Array<Record<string, string>> = [];
  data.forEach((row, index) => {
    if (row.cells.length > names.length) {
      problems.push({ index, field: '', message: `CSV line ${row.line} has ${row.cells.length} cells, the header ${names.length}` });
    }
    const rec: Record<string, string> = {};
    names.forEach((n, i) => {
      if (n && (MITIGATION_FIELDS as readonly string[]).includes(n)) rec[n] = row.cells[i] ?? '';
    });
    records.push(rec);
  });
  return { records, problems };
}

/** Parse and validate a batch file in one step: every structural and rule problem together. */
export function loadMitigationBatch(text: string, format?: 'json' | 'csv'): { items: MitigationItem[]; problems: ValidationProblem[] } {
  const parsed = parseMitigationBatch(text, format);
  if (parsed.problems.some((p) => p.index < 0) && parsed.records.length === 0) return { items: [], problems: parsed.problems };
  const v = validateMitigationItems(parsed.records);
  const problems = [...parsed.problems, ...v.problems];
  return { items: problems.length ? [] : v.items, problems };
}
