// Streaming scan of one raw message (EML) with mailparser's MailParser: Subject, bodies and text-like attachments go through every policy's detector.
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { TextDecoder } from 'node:util';
import { MailParser, type AttachmentStream, type MailParserOptions, type MessageText } from 'mailparser';
import { ChunkCounter, countMatches, createDetector, type Detector } from './detectors.js';
import type { Policy } from './policies.js';

export interface CompiledPolicy {
  policy: Policy;
  detector: Detector;
}

/** Builds each policy's detector once, at start-up, not per message. */
export function compilePolicies(policies: readonly Policy[]): CompiledPolicy[] {
  return policies.map((policy) => ({ policy, detector: createDetector(policy.detector, policy.keywords) }));
}

export interface ScanLimits {
  /** MIME parts per message (mailsplit's node cap; more is a parse error) and attachments per request, nested ones included. */
  maxParts: number;
  /** Decoded bytes (characters for the bodies) scanned per part; the rest is read and discarded. */
  maxBytesPerPart: number;
  /** Attached messages (message/rfc822, *.eml) are parsed as messages down to this depth, then scanned as text. */
  maxDepth: number;
}

export const DEFAULT_SCAN_LIMITS: Readonly<ScanLimits> = { maxParts: 1000, maxBytesPerPart: 8 * 1024 * 1024, maxDepth: 3 };

export interface ScanReport {
  /** Matches per policy, in the order of the policies given. */
  counts: number[];
  /** Attachments seen (scanned or not), nested messages included. */
  attachments: number;
  /** Attachments whose content went through the detectors. */
  scannedAttachments: number;
  /** A limit cut the scan short or the message could not be parsed to its end: counts are a lower bound. */
  truncated: boolean;
  /** Parse problems, for the log. */
  errors: string[];
}

/** One counter per policy over one stream of text (a body, an attachment). */
class PolicyCounters {
  private readonly counters: ChunkCounter[];
  constructor(policies: readonly CompiledPolicy[]) {
    this.counters = policies.map((p) => new ChunkCounter(p.detector));
  }
  push(text: string): void {
    if (text.length > 0) for (const c of this.counters) c.push(text);
  }
  end(): number[] {
    return this.counters.map((c) => c.end());
  }
}

interface ScanState {
  policies: readonly CompiledPolicy[];
  limits: ScanLimits;
  signal: AbortSignal | undefined;
  partsLeft: number;
  report: ScanReport;
}

const TEXT_TYPES = /^(?:text\/|application\/(?:(?:[\w.-]+\+)?(?:json|xml)|csv)$)/;
const TEXT_EXTENSIONS = /\.(?:txt|csv|json|xml|eml|log)$/;
const MESSAGE_TYPE = 'message/rfc822';

const NAMED_ENTITIES: Readonly<Record<string, string>> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };

/**
 * HTML to the text a reader sees: comments and tags removed (block tags become line breaks so table cells
 * do not glue together), character references decoded. mailparser writes non-ASCII text as numeric
 * references when it turns a plain-text part into HTML, so those must be decoded for matching to work.
 * `<[^<>]*>` rather than `<[^>]*>` keeps the work linear on input full of stray '<'.
 */
export function htmlToPlain(html: string): string {
  return html
    .replace(/<!--[\s\S]*?-->/g, ' ')
    .replace(/<\/?(?:br|p|div|tr|td|th|li|ul|ol|h[1-6]|table|thead|tbody|blockquote|pre|hr|section|article|header|footer)\b[^<>]*>/gi, '\n')
    .replace(/<[^<>]*>/g, '')
    .replace(/&(#\d{1,7}|#x[0-9a-f]{1,6}|[a-z]{2,8});/gi, (whole, ref: string) => {
      if (ref[0] === '#') {
        const cp = ref[1] === 'x' || ref[1] === 'X' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
        return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : whole;
      }
      return NAMED_ENTITIES[ref.toLowerCase()] ?? whole;
    });
}

function countAll(st: ScanState, text: string): number[] {
  return st.policies.map((p) => countMatches(p.detector, text));
}

function add(st: ScanState, counts: readonly number[]): void {
  counts.forEach((n, i) => {
    st.report.counts[i] = (st.report.counts[i] ?? 0) + n;
  });
}

function cap(st: ScanState, text: string): string {
  if (text.length <= st.limits.maxBytesPerPart) return text;
  st.report.truncated = true;
  return text.slice(0, st.limits.maxBytesPerPart);
}

function decoderFor(att: AttachmentStream): TextDecoder {
  const ct = att.headers.get('content-type') as { params?: Record<string, string> } | string | undefined;
  const charset = typeof ct === 'object' ? ct.params?.['charset'] : undefined;
  try {
    // Node's full ICU knows gbk, gb18030, big5, shift_jis, iso-8859-*, windows-125x …
    return new TextDecoder(charset?.trim() || 'utf-8');
  } catch {
    return new TextDecoder('utf-8');
  }
}

/** Streams decoded attachment bytes through fresh counters; bytes beyond the cap are read and dropped. */
async function scanAttachmentText(st: ScanState, att: AttachmentStream): Promise<void> {
  const decoder = decoderFor(att);
  const counters = new PolicyCounters(st.policies);
  let bytes = 0;
  for await (const chunk of att.content as Readable) {
    if (bytes >= st.limits.maxBytesPerPart) continue;
    let piece = chunk as Buffer;
    if (bytes + piece.length > st.limits.maxBytesPerPart) {
      piece = piece.subarray(0, st.limits.maxBytesPerPart - bytes);
      st.report.truncated = true;
    }
    bytes += piece.length;
    counters.push(decoder.decode(piece, { stream: true }));
  }
  counters.push(decoder.decode());
  add(st, counters.end());
}

async function handleAttachment(st: ScanState, att: AttachmentStream, depth: number): Promise<void> {
  st.report.attachments++;
  const content = att.content as Readable;
  // Errors surface through iteration; without a listener a late write after destroy() would crash the process.
  content.on('error', () => {});
  const type = att.contentType.toLowerCase();
  const name = (att.filename ?? '').toLowerCase();
  if (st.partsLeft <= 0) {
    st.report.truncated = true;
  } else {
    st.partsLeft--;
    if ((type === MESSAGE_TYPE || name.endsWith('.eml')) && depth < st.limits.maxDepth) {
      st.report.scannedAttachments++;
      await scanInto(st, content, depth + 1);
      return;
    }
    if (TEXT_TYPES.test(type) || TEXT_EXTENSIONS.test(name) || type === MESSAGE_TYPE) {
      st.report.scannedAttachments++;
      await scanAttachmentText(st, att);
      return;
    }
  }
  // Not scanned, but it must be read to its end or MailParser never moves on to the next part.
  content.resume();
  await finished(content);
}

function handleText(st: ScanState, item: MessageText): void {
  const text = typeof item.text === 'string' ? cap(st, item.text) : '';
  const html = typeof item.html === 'string' ? htmlToPlain(cap(st, item.html)) : '';
  const fromText = countAll(st, text);
  const fromHtml = countAll(st, html);
  // mailparser's html holds the HTML parts plus (outside multipart/alternative) the plain parts turned into
  // HTML; its text holds the plain parts. The larger of the two counts each body match once, whether the
  // parts are alternatives of one another (same content twice) or different content side by side.
  add(
    st,
    fromText.map((n, i) => Math.max(n, fromHtml[i] ?? 0)),
  );
}

/** Parses one message from `input` into st.report; never rejects, and always reads `input` to its end. */
async function scanInto(st: ScanState, input: Readable, depth: number): Promise<void> {
  const options: MailParserOptions & { maxChildNodes: number } = {
    // We strip tags ourselves; html-to-text on a large HTML body is slow and mailparser runs it synchronously.
    skipHtmlToText: true,
    skipImageLinks: true,
    skipTextLinks: true,
    // Passed on to mailsplit: a message with more MIME nodes fails to parse instead of exhausting us.
    maxChildNodes: st.limits.maxParts,
  };
  const parser = new MailParser(options);
  let current: Readable | null = null;
  let subject: string | null = null;
  const onAbort = (): void => {
    parser.destroy(new Error('scan aborted'));
  };
  // mailparser reports some failures with a bare emit('error') that leaves the stream open; destroying it
  // makes the iterator below see the error and (through 'close') frees an attachment we may be waiting on.
  parser.on('error', (err: Error) => parser.destroy(err));
  // mailsplit's own limits (maxChildNodes, maxHeadSize) fail inside MailParser's private splitter, and when the
  // input has already ended MailParser swallows that error and waits forever for the open part. Listening on
  // the splitter (mailparser 3.8 internals, hence the optional access) turns it into a parser error.
  (parser as unknown as { splitter?: NodeJS.EventEmitter }).splitter?.on('error', (err: Error) => parser.destroy(err));
  parser.on('headers', (headers: Map<string, unknown>) => {
    const s = headers.get('subject');
    if (typeof s === 'string') subject = s;
  });
  // A parser that dies mid-attachment leaves that attachment's stream open forever; close it so we do not wait on it.
  parser.once('close', () => current?.destroy());
  input.on('error', (err) => parser.destroy(err));
  input.on('close', () => {
    if (!input.readableEnded) parser.destroy(new Error('message stream closed early'));
  });
  if (st.signal?.aborted) onAbort();
  st.signal?.addEventListener('abort', onAbort, { once: true });
  input.pipe(parser);
  try {
    for await (const item of parser as AsyncIterable<AttachmentStream | MessageText>) {
      if (item.type === 'text') {
        handleText(st, item);
      } else {
        current = item.content as Readable;
        await handleAttachment(st, item, depth);
        current = null;
        item.release();
      }
    }
  } catch (err) {
    st.report.truncated = true;
    st.report.errors.push(`depth ${depth}: ${(err as Error).message}`);
    // Keep reading the source so the upload it comes from (a multipart request, an outer message) can finish.
    input.unpipe(parser);
    if (!input.destroyed) input.resume();
  } finally {
    st.signal?.removeEventListener('abort', onAbort);
  }
  if (subject !== null) add(st, countAll(st, cap(st, subject)));
}

/**
 * Scans one raw message. Resolves with what was found even when the message is malformed or a limit
 * was hit (then `truncated` is set); aborting `signal` stops the scan early.
 */
export async function scanMessage(
  input: Readable,
  policies: readonly CompiledPolicy[],
  opts: { limits?: Partial<ScanLimits>; signal?: AbortSignal } = {},
): Promise<ScanReport> {
  const limits = { ...DEFAULT_SCAN_LIMITS, ...opts.limits };
  const st: ScanState = {
    policies,
    limits,
    signal: opts.signal,
    partsLeft: limits.maxParts,
    report: { counts: policies.map(() => 0), attachments: 0, scannedAttachments: 0, truncated: false, errors: [] },
  };
  await scanInto(st, input, 0);
  return st.report;
}
