// The one hardened walk over a message's decoded MIME tree (mailparser), used by the quarantine preview, the CAS extraction and the embedded engine: abortable, deadlined, limited, never hangs.
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { MailParser, type AttachmentStream, type MailParserOptions, type MessageText } from 'mailparser';
import { finished } from 'node:stream/promises';
import { DEFAULT_MIME_LIMITS, MimeScanner, type MimeLimits } from './scanner.js';
import { PlainBodySplitter } from './plain-body.js';

export interface WalkHandlers {
  /** Top-level header lines as received (for display). */
  headerLines?: (lines: Array<{ key: string; line: string }>) => void;
  /** Top-level headers, decoded by mailparser. */
  headers?: (headers: Map<string, unknown>) => void;
  text?: (text: MessageText) => void;
  /**
   * Each attachment in order. The handler must read `att.content` to its end or destroy it: mailparser
   * does not move on until it has. Without a handler the content is drained.
   */
  attachment?: (att: AttachmentStream) => Promise<void>;
}

export interface WalkOptions {
  signal?: AbortSignal | undefined;
  /** The walk is aborted this many ms after it starts, as if `signal` had fired. */
  deadlineMs?: number | undefined;
  limits?: Partial<MimeLimits> | undefined;
  /** mailparser switches (skipHtmlToText …); the limits are ours. */
  parser?: MailParserOptions | undefined;
  /**
   * A top-level message whose header has no Content-* field has its body decoded by PlainBodySplitter
   * rather than MailParser (same text, far less CPU). The text item then carries no `textAsHtml`, and when
   * the header block is simple (simpleHeaderSubject) and there is no `headerLines` handler, MailParser is
   * not run at all and `headers` gets a Map holding only `subject`. Callers that read either must leave this off.
   */
  plainTextBody?: boolean | undefined;
}

export interface WalkResult {
  /** Why the walk ended early (limit, parse error, abort, deadline, input failure); null when it reached the end. */
  error: Error | null;
  /** The error came from the input stream itself (a storage failure the caller may want to rethrow). */
  inputFailed: boolean;
  /** MIME parts the structure guard saw. */
  parts: number;
}

export class WalkAbortedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WalkAbortedError';
  }
}

/**
 * Passes bytes through unchanged while a lenient structure scanner counts parts, depth and header
 * bytes; the first limit exceeded fails the stream. Our limits sit below mailsplit's own, so mailsplit's
 * never trip: when one of those trips after the input has ended, MailParser swallows the error and waits
 * forever for the open part. This guard is what keeps every walk finite without touching its internals.
 */
export class StructureGuard extends Transform {
  readonly scanner: MimeScanner;
  constructor(limits: Partial<MimeLimits>) {
    super();
    const noop = (): void => {};
    this.scanner = new MimeScanner({ headers: noop, body: noop, delimiter: noop }, { ...limits, strict: false });
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.scanner.write(chunk);
    } catch (err) {
      cb(err as Error);
      return;
    }
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    try {
      this.scanner.end();
    } catch (err) {
      // An empty input is for mailparser to judge; only limits matter here.
      if ((err as { reason?: string }).reason !== 'empty-message') return cb(err as Error);
    }
    cb();
  }
}

async function drain(att: AttachmentStream): Promise<void> {
  const content = att.content as Readable;
  for await (const _ of content) {
    // discarded: the parser only moves on once this part is read
  }
}

/** The caller's mailparser switches with mailsplit's limits set above ours (see StructureGuard): the guard must be the one that trips. */
function parserOptions(limits: MimeLimits, parser: MailParserOptions | undefined): MailParserOptions & { maxChildNodes: number; maxHeadSize: number } {
  return { ...parser, maxChildNodes: limits.maxParts * 2 + 16, maxHeadSize: limits.maxHeaderBytes * 2 + 1024 };
}

/**
 * MailParser with the walk's listeners, made on first use so a walk the plain-body shortcut takes whole never
 * builds one (~40 us). One made after the walk has stopped is stopped too, or its iterator would wait forever.
 */
function newParser(options: MailParserOptions, handlers: WalkHandlers, stop: (err: Error) => void, onClose: () => void, failed: Error | null): MailParser {
  const parser = new MailParser(options);
  // mailparser reports some failures with a bare emit('error') that leaves the stream open; destroying
  // it makes the walk's iterator see the error.
  parser.on('error', (err: Error) => stop(err));
  parser.once('close', onClose);
  if (handlers.headerLines) parser.on('headerLines', handlers.headerLines);
  if (handlers.headers) parser.on('headers', handlers.headers);
  if (failed) parser.destroy(failed);
  return parser;
}

/** Waits for the end of the header block; when MailParser is spared it altogether, reports the Subject (all its headers would have given our callers) and says so. */
async function plainHead(plain: PlainBodySplitter, handlers: WalkHandlers, failed: () => boolean): Promise<boolean> {
  const headOnly = await plain.decided;
  if (!headOnly) return false;
  if (!failed()) handlers.headers?.(new Map(headOnly.subject === undefined ? [] : [['subject', headOnly.subject]]));
  return true;
}

/** MailParser ended at the header block (or never ran); the body is complete once the splitter has taken all of it. */
async function plainBody(plain: PlainBodySplitter, handlers: WalkHandlers, failed: () => boolean): Promise<void> {
  await finished(plain);
  if (!failed()) handlers.text?.(plain.textItem());
}

/**
 * Walks one message. Resolves (never rejects) once the parser is done or has failed, with the reason
 * it stopped early if it did; everything the handlers saw up to then stands. The input is read to its
 * end even on failure, so a source that feeds other consumers (an upload, an outer message) can finish.
 */
export async function walkMessage(input: Readable, handlers: WalkHandlers, opts: WalkOptions = {}): Promise<WalkResult> {
  // Depth is bounded by the part count already; a lower depth cap would end walks mailparser can finish.
  const limits: MimeLimits = { ...DEFAULT_MIME_LIMITS, maxDepth: opts.limits?.maxParts ?? DEFAULT_MIME_LIMITS.maxParts, ...opts.limits };
  const guard = new StructureGuard(limits);
  let parser: MailParser | null = null;
  const getParser = (): MailParser => (parser ??= newParser(parserOptions(limits, opts.parser), handlers, stop, () => current?.destroy(), firstError));
  // MailParser can be left out altogether only when nobody wants the raw header lines.
  const plain = opts.plainTextBody ? new PlainBodySplitter(getParser, !handlers.headerLines) : null;
  let current: Readable | null = null;
  let firstError: Error | null = null;
  let inputFailed = false;
  const stop = (err: Error): void => {
    firstError ??= err;
    parser?.destroy(err);
    plain?.destroy(err);
    // A parser that dies mid-attachment leaves that attachment's stream open forever.
    current?.destroy(err);
  };
  const onAbort = (): void => stop(new WalkAbortedError(opts.signal?.reason instanceof Error ? `walk aborted: ${opts.signal.reason.message}` : 'walk aborted'));
  const timer =
    opts.deadlineMs !== undefined
      ? setTimeout(() => stop(new WalkAbortedError(`walk deadline of ${opts.deadlineMs} ms exceeded`)), opts.deadlineMs)
      : undefined;
  timer?.unref();
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  guard.on('error', (err: Error) => stop(err));
  plain?.on('error', (err: Error) => stop(err));
  input.on('error', (err: Error) => {
    inputFailed = true;
    stop(err);
  });
  input.on('close', () => {
    if (!input.readableEnded) stop(new Error('message stream closed early'));
  });
  input.pipe(guard).pipe(plain ?? getParser());
  try {
    const headOnly = plain ? await plainHead(plain, handlers, () => firstError !== null) : false;
    for await (const item of (headOnly ? [] : getParser()) as AsyncIterable<AttachmentStream | MessageText>) {
      if (item.type === 'text') {
        // With the body kept by the splitter, MailParser only saw the header block: its text item is empty.
        if (!plain?.diverted) handlers.text?.(item);
        continue;
      }
      const content = item.content as Readable;
      // Errors surface through iteration; without a listener a late write after destroy() would crash the process.
      content.on('error', () => {});
      current = content;
      try {
        await (handlers.attachment ? handlers.attachment(item) : drain(item));
      } finally {
        current = null;
        item.release();
      }
    }
    if (plain?.diverted) await plainBody(plain, handlers, () => firstError !== null);
  } catch (err) {
    firstError ??= err as Error;
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
  if (firstError) {
    // Keep reading the source so whatever it comes from can finish.
    input.unpipe(guard);
    guard.unpipe();
    if (!input.destroyed) input.resume();
  }
  return { error: firstError, inputFailed, parts: guard.scanner.partCount };
}
