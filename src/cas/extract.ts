// What to push to CAS for one blocked message: the sender, SHA-1/SHA-256 of each attachment and the URLs, read by streaming the spooled EML.
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { walkMessage } from '../mime/walker.js';
import { DEFAULT_CAS_SETTINGS } from '../config/cas-schema.js';
import { isEmailAddress, isHttpUrl, normalizeItem } from './items.js';
import type { CasOutboxItem } from './outbox.js';
import { isExemptSender } from './trigger.js';

export interface ExtractOptions {
  /** Envelope sender (MAIL FROM); empty for bounces, which are never pushed. */
  sender: string;
  pushSender: boolean;
  pushAttachmentHashes: boolean;
  pushUrls: boolean;
  exemptDomains: string[];
  exemptSenders: string[];
  /** Cap on URLs per message (default cas.push.maxUrls): one newsletter must not fill the 2,048-item list. */
  maxUrls?: number;
  /** Reason stored with each outbox entry. */
  reason?: string;
  /** HTML bodies larger than this are scanned for URLs only up to this many characters. */
  maxHtmlChars?: number;
  /** The extraction stops (and rejects) when this fires or after deadlineMs (default 60 s). */
  signal?: AbortSignal | undefined;
  deadlineMs?: number | undefined;
}

export interface ExtractResult {
  items: CasOutboxItem[];
  /** Attachments hashed, and whether URLs were cut at `maxUrls`; for the log. */
  attachments: number;
  urlsTruncated: boolean;
}

// Stops at whitespace, quotes, angle brackets and the characters HTML or Markdown put around links.
const URL_RE = /\bhttps?:\/\/[^\s<>"'`()[\]{}|\\^]+/gi;

/** http(s) URLs in `text`, trailing sentence punctuation trimmed, HTML entity `&amp;` decoded. */
export function findUrls(text: string, into: Set<string>, cap: number): boolean {
  for (const m of text.matchAll(URL_RE)) {
    let u = m[0].replace(/&amp;/gi, '&').replace(/[.,;:!?*_~]+$/, '');
    // A leftover entity tail such as "&gt" from "&gt;" is not part of the URL.
    u = u.replace(/&(?:gt|lt|quot|apos|nbsp)$/i, '');
    if (!isHttpUrl(u)) continue;
    const canonical = new URL(u).href;
    if (into.has(canonical)) continue;
    if (into.size >= cap) return true;
    into.add(canonical);
  }
  return false;
}

/**
 * Streams the EML through the shared MIME walker (never simpleParser, which buffers every attachment)
 * and hashes each attachment's decoded bytes chunk by chunk, so memory stays flat however large the
 * attachment. Text bodies arrive as strings (mailparser keeps those in memory anyway); URLs are taken
 * from the plain text and the raw HTML (hrefs included). The parse is skipped entirely when neither
 * hashes nor URLs are wanted. `eml` is a file path, or a function that opens the message (the relay
 * passes its spool's reader, which knows where the message ends in a recycled spool file).
 */
export async function extractPushItems(eml: string | (() => Readable), opts: ExtractOptions): Promise<ExtractResult> {
  const reason = opts.reason ?? 'dlp block';
  const items: CasOutboxItem[] = [];
  const sender = opts.sender.trim().replace(/^<|>$/g, '');
  if (opts.pushSender && sender && isEmailAddress(sender) && !isExemptSender(sender, opts.exemptDomains, opts.exemptSenders)) {
    items.push({ list: 'senders', value: normalizeItem('senders', sender), action: 'create', reason });
  }
  if (!opts.pushAttachmentHashes && !opts.pushUrls) return { items, attachments: 0, urlsTruncated: false };

  const maxUrls = opts.maxUrls ?? DEFAULT_CAS_SETTINGS.push.maxUrls;
  const maxHtml = opts.maxHtmlChars ?? 2_000_000;
  const sha1s = new Set<string>();
  const sha256s = new Set<string>();
  const urls = new Set<string>();
  let urlsTruncated = false;
  let attachments = 0;

  const result = await walkMessage(
    typeof eml === 'string' ? createReadStream(eml) : eml(),
    {
      text: (data) => {
        if (!opts.pushUrls) return;
        if (typeof data.text === 'string') urlsTruncated = findUrls(data.text, urls, maxUrls) || urlsTruncated;
        if (typeof data.html === 'string') urlsTruncated = findUrls(data.html.slice(0, maxHtml), urls, maxUrls) || urlsTruncated;
      },
      attachment: async (data) => {
        attachments++;
        const content = data.content as Readable;
        const h1 = opts.pushAttachmentHashes ? createHash('sha1') : null;
        const h256 = opts.pushAttachmentHashes ? createHash('sha256') : null;
        let bytes = 0;
        // Read to the end either way: the parser waits for each attachment stream to end before going on.
        for await (const chunk of content) {
          bytes += (chunk as Buffer).length;
          h1?.update(chunk as Buffer);
          h256?.update(chunk as Buffer);
        }
        // An empty file, or an image embedded in the HTML (a signature logo), would block far more
        // than this message if listed tenant-wide; only real attachments are pushed.
        if (h1 && h256 && bytes > 0 && data.related !== true) {
          sha1s.add(h1.digest('hex'));
          sha256s.add(h256.digest('hex'));
        }
      },
    },
    {
      signal: opts.signal,
      deadlineMs: opts.deadlineMs ?? 60_000,
      // We read links ourselves; the conversions only cost CPU and can throw on huge HTML.
      parser: { skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true },
    },
  );
  // Half a list is worse than none: a message we could not read to its end pushes no hashes or URLs.
  if (result.error) throw result.error;

  for (const v of sha1s) items.push({ list: 'filehashes', value: v, action: 'create', reason });
  for (const v of sha256s) items.push({ list: 'file256hashes', value: v, action: 'create', reason });
  for (const v of urls) items.push({ list: 'urls', value: v, action: 'create', reason });
  return { items, attachments, urlsTruncated };
}
