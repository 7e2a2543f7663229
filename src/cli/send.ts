// `dlp-relay send`: the EML test harness; streams each message file through its own SMTP session and prints the server's real final reply.
import { createReadStream, constants as fsConstants } from 'node:fs';
import { access, readdir, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { SmtpClient, SmtpClientError, type Reply, type SendResult as TransactionResult } from '../smtp/client.js';
import type { EsmtpParam } from '../smtp/envelope.js';
import { parseAddressList } from './address-list.js';

import {
  DEFAULT_QUARANTINE_PATTERN,
  EXPECT_HEADER,
  EXPECTATIONS,
  ManifestError,
  formatTable,
  isExpectation,
  loadManifest,
  refOf,
  type Expectation,
  type Outcome,
  type TableRow,
} from './send-expect.js';

export type { Expectation, Outcome } from './send-expect.js';

export interface SendOptions {
  /** `host:port` or `[v6addr]:port`; default 127.0.0.1:2525. */
  server: string;
  /** Envelope sender; default is the address in the file's From: header. `''` sends the null sender `<>`. */
  from?: string;
  /** Envelope recipients; when empty, all addresses in the file's To:/Cc:/Bcc: headers. */
  to: string[];
  expect?: Expectation;
  /** Per-file expectations (file → outcome, YAML/JSON, paths relative to it); they win over headers and --expect. */
  manifest?: string;
  /** A 2xx reply matching this is the `quarantine` outcome (default: "held for review", the relay's quarantineText). */
  quarantinePattern?: RegExp;
  /** EHLO name; the local host name (os.hostname()) when unset. */
  helo?: string;
  /** Per-file budget from connect to final reply, also used as the socket inactivity limit. Default 60000. */
  timeoutMs: number;
  /** Require STARTTLS; without it the harness never upgrades, so plaintext policies (530 5.7.0) can be tested too. */
  starttls: boolean;
  /** Accept any server certificate (self-signed test relays). */
  insecure: boolean;
  /** Files, and directories whose `*.eml` files (sorted, non-recursive) are sent. */
  paths: string[];
}
export const DEFAULT_SENDER = 'harness@localhost';
/** The header block is read with a bound so a file without a blank line is never slurped whole. */
export const HEADER_READ_LIMIT = 256 * 1024;

/** A problem with the command line itself: exit code 2, message on stderr, nothing sent. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface ServerAddress {
  host: string;
  port: number;
}

/** Parses `host:port` or `[v6addr]:port` (the port is required); throws UsageError naming the problem otherwise. */
export function parseServer(s: string): ServerAddress {
  const text = s.trim();
  let host: string;
  let portText: string;
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) {
    host = bracketed[1] ?? '';
    portText = bracketed[2] ?? '';
    if (isIP(host) !== 6) throw new UsageError(`bad --server "${s}": "${host}" in brackets is not an IPv6 address`);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon <= 0) throw new UsageError(`bad --server "${s}": expected host:port, e.g. 127.0.0.1:2525`);
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    // A bare IPv6 address is ambiguous with its own colons, so it must be bracketed.
    if (host.includes(':')) throw new UsageError(`bad --server "${s}": write IPv6 addresses as [addr]:port`);
    if (!/^[A-Za-z0-9.-]+$/.test(host)) throw new UsageError(`bad --server "${s}": "${host}" is not a host name or address`);
  }
  if (!/^\d{1,5}$/.test(portText)) throw new UsageError(`bad --server "${s}": port "${portText}" is not a number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new UsageError(`bad --server "${s}": port ${port} is out of range 1-65535`);
  return { host, port };
}

export interface HeaderEnvelope {
  /** First address of From:, if any. */
  from?: string;
  /** Addresses of every To:, Cc: and Bcc: header, in order, duplicates removed (case-insensitively). */
  to: string[];
  /** The fixture's own expectation (X-DLP-Expect: reject), if it carries one. */
  expect?: Expectation;
}

/**
 * Reads only the header block (up to the first empty line, at most `limit` bytes) and extracts
 * envelope defaults. Streaming, so a multi-gigabyte file costs one or two chunks.
 */
export async function readHeaderEnvelope(file: string, limit = HEADER_READ_LIMIT): Promise<HeaderEnvelope> {
  const chunks: Buffer[] = [];
  let length = 0;
  const stream = createReadStream(file, { start: 0, end: limit - 1, highWaterMark: 16 * 1024 });
  let headerEnd = -1;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    // Re-scan a few bytes before the new chunk so a CRLFCRLF split across chunks is found.
    const from = Math.max(0, length - 3);
    chunks.push(chunk);
    length += chunk.length;
    const buf = chunks.length === 1 ? chunk : Buffer.concat(chunks, length);
    headerEnd = findHeaderEnd(buf, from);
    if (headerEnd >= 0) break; // leaving the loop destroys the stream: the body is never read
  }
  const all = Buffer.concat(chunks, length);
  const block = all.subarray(0, headerEnd >= 0 ? headerEnd : all.length).toString('utf8');
  const headers = parseHeaderBlock(block);
  const fromValue = headers.find((h) => h.name === 'from')?.value;
  const fromAddr = fromValue === undefined ? undefined : addresses(fromValue)[0];
  const seen = new Set<string>();
  const to: string[] = [];
  for (const h of headers) {
    if (h.name !== 'to' && h.name !== 'cc' && h.name !== 'bcc') continue;
    for (const a of addresses(h.value)) {
      const key = a.toLowerCase();
      if (seen.has(key)) continue;
      seen.add(key);
      to.push(a);
    }
  }
  const declared = headers
    .find((h) => h.name === EXPECT_HEADER)
    ?.value.trim()
    .toLowerCase();
  return { ...(fromAddr === undefined ? {} : { from: fromAddr }), to, ...(isExpectation(declared) ? { expect: declared } : {}) };
}

/** Offset of the empty line ending the headers (CRLFCRLF or bare LFLF), or -1. */
function findHeaderEnd(buf: Buffer, from: number): number {
  // A file that starts with an empty line has an empty header block.
  if (from === 0 && (buf[0] === 0x0a || (buf[0] === 0x0d && buf[1] === 0x0a))) return 0;
  for (let i = from; i < buf.length - 1; i++) {
    if (buf[i] !== 0x0a) continue;
    if (buf[i + 1] === 0x0a) return i + 1;
    if (buf[i + 1] === 0x0d && buf[i + 2] === 0x0a) return i + 1;
  }
  return -1;
}

function parseHeaderBlock(block: string): Array<{ name: string; value: string }> {
  const out: Array<{ name: string; value: string }> = [];
  for (const line of block.split(/\r?\n/)) {
    const last = out[out.length - 1];
    if (/^[ \t]/.test(line)) {
      // Folded continuation (RFC 5322 2.2.3): unfold by joining onto the previous field.
      if (last) last.value += ' ' + line.trim();
      continue;
    }
    const m = /^([!-9;-~]+)[ \t]*:(.*)$/.exec(line);
    if (m) out.push({ name: (m[1] ?? '').toLowerCase(), value: (m[2] ?? '').trim() });
  }
  return out;
}

function addresses(value: string): string[] {
  return parseAddressList(value)
    .map((a) => a.trim())
    .filter((a) => a.length > 0);
}

export interface RejectedRecipient {
  address: string;
  reply: string;
}

export interface SendResult {
  file: string;
  outcome: Outcome;
  /** The server's final reply line, or the error message when outcome is `error`. */
  reply: string;
  /** Recipients refused while the message itself was accepted. */
  rejected: RejectedRecipient[];
  /** What this file was expected to do (manifest, its X-DLP-Expect header, or --expect). */
  expected?: Expectation;
}

interface FileJob {
  file: string;
  size: number;
}

interface Resolved {
  address: ServerAddress;
  opts: SendOptions;
}

/** The exit-code semantics: with --expect every outcome must match it, otherwise no file may end in `error`. */
export function matchesExpectation(outcome: Outcome, expect: Expectation | undefined): boolean {
  return expect === undefined ? outcome !== 'error' : outcome === expect;
}

/** One result line per file, plus an indented `rejected` line per refused recipient of an accepted message. */
export function formatResult(r: SendResult, expect?: Expectation): string {
  let line = `${r.outcome} ${r.file} ${r.reply}`;
  if (expect !== undefined && r.outcome !== expect) line += ` (expected ${expect})`;
  for (const rej of r.rejected) line += `\n  rejected ${rej.address} ${rej.reply}`;
  return line;
}

export async function runSend(argv: SendOptions, out: NodeJS.WritableStream, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  let resolved: Resolved;
  let jobs: FileJob[];
  try {
    resolved = { address: validate(argv), opts: argv };
    jobs = await expandPaths(argv.paths);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err.write(`dlp-relay: send: ${e.message}\n`);
    return 2;
  }
  let manifest = new Map<string, Expectation>();
  try {
    if (argv.manifest !== undefined) manifest = loadManifest(argv.manifest);
  } catch (e) {
    if (!(e instanceof ManifestError)) throw e;
    err.write(`dlp-relay send: ${e.message}\n`);
    return 2;
  }
  let failed = false;
  let perFile = manifest.size > 0;
  const rows: TableRow[] = [];
  for (const job of jobs) {
    const result = await sendFile(job, resolved);
    const fromManifest = manifest.get(resolve(job.file));
    // The header block again (bounded, cheap): the fixture's own X-DLP-Expect.
    const header: HeaderEnvelope | null = fromManifest === undefined ? await readHeaderEnvelope(job.file).catch(() => null) : null;
    const fromHeader = header?.expect;
    if (fromHeader !== undefined || fromManifest !== undefined) perFile = true;
    const expected = fromManifest ?? fromHeader ?? argv.expect;
    if (expected !== undefined) result.expected = expected;
    if (!matchesExpectation(result.outcome, expected)) failed = true;
    out.write(formatResult(result, expected) + '\n');
    rows.push({ file: job.file, expected: expected ?? null, actual: result.outcome, ref: refOf(result.reply) });
  }
  // A replay with per-file expectations ends with the expected-vs-actual table.
  if (perFile) out.write(`\n${formatTable(rows)}\n`);
  return failed ? 1 : 0;
}

function validate(argv: SendOptions): ServerAddress {
  if (argv.paths.length === 0) throw new UsageError('no FILE or DIR given');
  if (argv.expect !== undefined && !EXPECTATIONS.includes(argv.expect)) {
    throw new UsageError(`bad --expect "${String(argv.expect)}": use ${EXPECTATIONS.join(', ')}`);
  }
  if (!Number.isInteger(argv.timeoutMs) || argv.timeoutMs <= 0) {
    throw new UsageError(`bad --timeout "${String(argv.timeoutMs)}": a positive number of milliseconds`);
  }
  return parseServer(argv.server);
}

/** Resolves every path before anything is sent, so a typo fails the run up front instead of half-way. */
async function expandPaths(paths: string[]): Promise<FileJob[]> {
  const jobs: FileJob[] = [];
  for (const p of paths) {
    const st = await stat(p).catch((e: NodeJS.ErrnoException) => {
      throw new UsageError(`cannot read "${p}": ${e.code === 'ENOENT' ? 'no such file or directory' : e.message}`);
    });
    await access(p, fsConstants.R_OK).catch(() => {
      throw new UsageError(`cannot read "${p}": permission denied`);
    });
    if (st.isDirectory()) {
      const entries = await readdir(p).catch((e: NodeJS.ErrnoException) => {
        throw new UsageError(`cannot list directory "${p}": ${e.message}`);
      });
      const names = entries.filter((n) => n.toLowerCase().endsWith('.eml')).sort();
      const before = jobs.length;
      for (const name of names) {
        const file = join(p, name);
        const fst = await stat(file).catch(() => undefined);
        if (fst?.isFile()) jobs.push({ file, size: fst.size });
      }
      // An empty corpus passing silently would make a CI check meaningless.
      if (jobs.length === before) throw new UsageError(`no *.eml files in directory "${p}"`);
    } else if (st.isFile()) {
      jobs.push({ file: p, size: st.size });
    } else {
      throw new UsageError(`cannot read "${p}": not a regular file or directory`);
    }
  }
  return jobs;
}

/** The reply's last line as the server wrote it ("550 5.7.1 text"): what the harness prints. */
function finalLine(reply: Reply): string {
  return `${reply.code} ${reply.lines[reply.lines.length - 1] ?? ''}`.trim();
}

function oneLine(message: string): string {
  return message.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

function classify(code: number): Outcome {
  if (code >= 500 && code < 600) return 'reject';
  if (code >= 400) return 'tempfail';
  if (code >= 200 && code < 300) return 'accept';
  return 'error';
}

/** The final reply's outcome: a 2xx that says the message was held is its own outcome. */
function classifyFinal(reply: Reply, quarantine: RegExp): Outcome {
  const o = classify(reply.code);
  return o === 'accept' && quarantine.test(reply.lines.join(' ')) ? 'quarantine' : o;
}

const is2xx = (r: Reply): boolean => r.code >= 200 && r.code < 300;

/** A reply that ended the transaction early: a 4xx/5xx decides the file, anything else is a client-side `error`. */
function fromReply(file: string, reply: Reply, command: string): SendResult {
  const outcome = classify(reply.code);
  if (outcome === 'reject' || outcome === 'tempfail') return { file, outcome, reply: finalLine(reply), rejected: [] };
  return { file, outcome: 'error', reply: `unexpected reply to ${command}: ${finalLine(reply)}`, rejected: [] };
}

/** What the transaction's replies mean for the file, in the order the server decided it. */
function fromTransaction(file: string, to: string[], r: TransactionResult, quarantine: RegExp): SendResult {
  if (!is2xx(r.mail)) return fromReply(file, r.mail, 'MAIL FROM');
  // No accepted recipient, or the session ended (421) during RCPT: the last RCPT reply decides.
  const lastRcpt = r.rcpts[r.rcpts.length - 1];
  if (lastRcpt && (!r.rcpts.some(is2xx) || r.data === null)) return fromReply(file, lastRcpt, 'RCPT TO');
  if (r.data === null) return { file, outcome: 'error', reply: 'connection closed before a final reply', rejected: [] };
  if (r.data.code !== 354) return fromReply(file, r.data, 'DATA');
  if (r.final === null) return { file, outcome: 'error', reply: 'connection closed before a final reply', rejected: [] };
  const outcome = classifyFinal(r.final, quarantine);
  if (outcome !== 'accept' && outcome !== 'quarantine') return fromReply(file, r.final, 'end of data');
  const rejected = r.rcpts.flatMap((reply, i) => (is2xx(reply) ? [] : [{ address: to[i] ?? '', reply: finalLine(reply) }]));
  return { file, outcome, reply: finalLine(r.final), rejected };
}

/** Outcome of a client failure: a server reply that ended the session decides when there was one, else it is an `error`. */
function fromClientError(file: string, e: unknown, timeoutMs: number): SendResult {
  if (!(e instanceof SmtpClientError)) return { file, outcome: 'error', reply: oneLine(String((e as Error)?.message ?? e)), rejected: [] };
  if (e.reply) {
    const outcome = classify(e.reply.code);
    if (outcome === 'reject' || outcome === 'tempfail') return { file, outcome, reply: finalLine(e.reply), rejected: [] };
  }
  if (e.kind === 'timeout' || e.kind === 'aborted') {
    return { file, outcome: 'error', reply: `timed out after ${timeoutMs} ms without a final reply`, rejected: [] };
  }
  if (e.kind === 'closed' && e.phase !== 'connect') return { file, outcome: 'error', reply: 'connection closed before a final reply', rejected: [] };
  return { file, outcome: 'error', reply: oneLine(e.message), rejected: [] };
}

/** One file, one connection: EHLO, MAIL FROM (SIZE=, BODY=8BITMIME), RCPT TO..., DATA streamed from disk, QUIT. */
async function sendFile(job: FileJob, { address, opts }: Resolved): Promise<SendResult> {
  const { file } = job;
  let from: string;
  let to: string[];
  try {
    const needHeaders = opts.from === undefined || opts.to.length === 0;
    const hdr: HeaderEnvelope = needHeaders ? await readHeaderEnvelope(file) : { to: [] };
    from = opts.from ?? hdr.from ?? DEFAULT_SENDER;
    to = opts.to.length > 0 ? opts.to : hdr.to;
  } catch (e) {
    return { file, outcome: 'error', reply: `cannot read file: ${oneLine((e as Error).message)}`, rejected: [] };
  }
  if (to.length === 0) {
    return { file, outcome: 'error', reply: 'no recipients: no --to given and no To:/Cc:/Bcc: addresses in the file', rejected: [] };
  }

  const t = opts.timeoutMs;
  // The whole file, connect to final reply, has one budget; every single wait is bounded by it too.
  const budget = new AbortController();
  const deadline = setTimeout(() => budget.abort(), t);
  let client: SmtpClient | undefined;
  let readError: Error | undefined;
  try {
    client = await SmtpClient.connect(
      {
        host: address.host,
        port: address.port,
        // Without --starttls the harness never upgrades, so plaintext policies (530 5.7.0) can be tested.
        starttls: opts.starttls ? 'required' : 'off',
        ...(opts.insecure ? { tls: { rejectUnauthorized: false } } : {}),
        heloName: opts.helo ?? hostname(),
        timeouts: { connectMs: t, greetingMs: t, commandMs: t, dataDoneMs: t },
      },
      budget.signal,
    );
    // SIZE= is declared even when it exceeds the server's limit: the harness reports the server's own 552.
    const params: EsmtpParam[] = [];
    if (client.has('SIZE')) params.push(['SIZE', String(job.size)]);
    if (client.has('8BITMIME')) params.push(['BODY', '8BITMIME']);
    if (client.has('SMTPUTF8') && [from, ...to].some((a) => /[^\x00-\x7f]/.test(a))) params.push(['SMTPUTF8', null]);
    const open = (): Readable => {
      const stream = createReadStream(file);
      stream.once('error', (err) => (readError = err));
      return stream;
    };
    const r = await client.send({ from, mailParams: params, rcpts: to.map((a) => ({ address: a, params: [] })) }, open, budget.signal);
    return fromTransaction(file, to, r, opts.quarantinePattern ?? DEFAULT_QUARANTINE_PATTERN);
  } catch (e) {
    if (readError) return { file, outcome: 'error', reply: `cannot read file: ${oneLine(readError.message)}`, rejected: [] };
    return fromClientError(file, e, t);
  } finally {
    clearTimeout(deadline);
    // The client drops any connection that is not back at a command prompt; only a clean one gets QUIT.
    if (client && !client.closed) await client.quit();
  }
}
