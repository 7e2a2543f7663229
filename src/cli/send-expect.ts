// Per-file expectations for `dlp-relay send` (a manifest, or an X-DLP-Expect header in each fixture) and the expected-vs-actual table of a policy replay.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';

export type Expectation = 'accept' | 'reject' | 'tempfail' | 'quarantine';
/** `error` means no SMTP reply decided the file: connection failure, timeout, unreadable file, no recipients. */
export type Outcome = Expectation | 'error';

export const EXPECTATIONS: readonly Expectation[] = ['accept', 'reject', 'tempfail', 'quarantine'];
/** The header a fixture can carry to say what it expects. */
export const EXPECT_HEADER = 'x-dlp-expect';
/** A 2xx whose text says the message was held (the relay's default quarantineText) is a quarantine, not an accept. */
export const DEFAULT_QUARANTINE_PATTERN = /\bheld for review\b/i;

export class ManifestError extends Error {
  override name = 'ManifestError';
}

export function isExpectation(v: unknown): v is Expectation {
  return typeof v === 'string' && (EXPECTATIONS as readonly string[]).includes(v);
}

/**
 * A manifest maps files (relative to the manifest's directory) to outcomes, in YAML or JSON:
 * `card-in-body.eml: reject`. Returns absolute paths → outcome.
 */
export function loadManifest(file: string): Map<string, Expectation> {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ManifestError(`cannot read manifest "${file}": ${(e as Error).message}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new ManifestError(`manifest "${file}" must map file names to outcomes`);
  const base = dirname(resolve(file));
  const out = new Map<string, Expectation>();
  for (const [name, v] of Object.entries(doc as Record<string, unknown>)) {
    if (!isExpectation(v)) throw new ManifestError(`manifest "${file}": "${name}" expects ${JSON.stringify(v)}; use ${EXPECTATIONS.join(', ')}`);
    out.set(resolve(base, name), v);
  }
  return out;
}

export interface TableRow {
  file: string;
  expected: Expectation | null;
  actual: Outcome;
  /** The queryID from a reply the relay made itself ("(ref …)"), else null. */
  ref: string | null;
}

export function refOf(reply: string): string | null {
  return /\(ref ([0-9a-f-]{8,64})\)/i.exec(reply)?.[1] ?? null;
}

/** The expected-vs-actual table and a summary line; rows without an expectation show "-". */
export function formatTable(rows: readonly TableRow[]): string {
  const cells = rows.map((r) => [r.expected === null ? '-' : r.expected === r.actual ? 'ok' : 'MISMATCH', r.expected ?? '-', r.actual, r.ref ?? '-', r.file]);
  const head = ['RESULT', 'EXPECTED', 'ACTUAL', 'REF', 'FILE'];
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: string[]) =>
    c
      .map((v, i) => (i === c.length - 1 ? v : v.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  const checked = rows.filter((r) => r.expected !== null);
  const ok = checked.filter((r) => r.expected === r.actual).length;
  return [
    line(head),
    ...cells.map(line),
    `summary: ${rows.length} files, ${checked.length} with an expectation, ${ok} as expected, ${checked.length - ok} mismatched`,
  ].join('\n');
}
