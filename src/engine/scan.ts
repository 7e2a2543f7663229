// Streaming scan of one raw message (EML) through the shared MIME walker (src/mime): Subject, bodies and text-like attachments go through every policy's detector.
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { TextDecoder } from 'node:util';
import type { AttachmentStream, MessageText } from 'mailparser';
import { walkMessage } from '../mime/walker.js';
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
  plainTextBody: boolean;
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
  let subject: string | null = null;
  const result = await walkMessage(
    input,
    {
      headers: (headers) => {
        const s = headers.get('subject');
        if (typeof s === 'string') subject = s;
      },
      text: (item) => handleText(st, item),
      attachment: (att) => handleAttachment(st, att, depth),
    },
    {
      signal: st.signal,
      // The walker's structure guard counts every MIME node; mailsplit's own node cap sits above it. Depth is
      // bounded by the node count already: a separate, lower depth cap would only end scans earlier than before.
      limits: { maxParts: st.limits.maxParts, maxDepth: st.limits.maxParts },
      // We strip tags ourselves; html-to-text on a large HTML body is slow and mailparser runs it synchronously.
      parser: { skipHtmlToText: true, skipImageLinks: true, skipTextLinks: true },
      // The commonest shape (no Content-* field at the top) has its body decoded without MailParser; same text.
      plainTextBody: st.plainTextBody,
    },
  );
  if (result.error) {
    st.report.truncated = true;
    st.report.errors.push(`depth ${depth}: ${result.error.message}`);
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
  opts: {
    limits?: Partial<ScanLimits>;
    signal?: AbortSignal;
    /** Default true; false only to compare against MailParser's own decoding in tests. */ plainTextBody?: boolean;
  } = {},
): Promise<ScanReport> {
  const limits = { ...DEFAULT_SCAN_LIMITS, ...opts.limits };
  const st: ScanState = {
    policies,
    limits,
    signal: opts.signal,
    plainTextBody: opts.plainTextBody ?? true,
    partsLeft: limits.maxParts,
    report: { counts: policies.map(() => 0), attachments: 0, scannedAttachments: 0, truncated: false, errors: [] },
  };
  await scanInto(st, input, 0);
  return st.report;
}
