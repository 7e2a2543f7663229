// What to push to CAS for one blocked message: the sender, SHA-1/SHA-256 of each attachment and the URLs, read by streaming the spooled EML.
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { MailParser, type AttachmentStream, type MessageText } from 'mailparser';
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
  /** Cap on URLs per message (default 50): one newsletter must not fill the 2,048-item list. */
  maxUrls?: number;
  /** Reason stored with each outbox entry. */
  reason?: string;
  /** HTML bodies larger than this are scanned for URLs only up to this many characters. */
  maxHtmlChars?: number;
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
 * Streams the EML through mailparser's MailParser (never simpleParser, which buffers every attachment)
 * and hashes each attachment's decoded bytes chunk by chunk, so memory stays flat however large the
 * attachment. Text bodies arrive as strings (mailparser keeps those in memory anyway); URLs are taken
 * from the plain text and the raw HTML (hrefs included). The parse is skipped entirely when neither
 * hashes nor URLs are wanted.
 */
export async function extractPushItems(emlPath: string, opts: ExtractOptions): Promise<ExtractResult> {
  const reason = opts.reason ?? 'dlp block';
  const items: CasOutboxItem[] = [];
  const sender = opts.sender.trim().replace(/^<|>$/g, '');
  if (opts.pushSender && sender && isEmailAddress(sender) && !isExemptSender(sender, opts.exemptDomains, opts.exemptSenders)) {
    items.push({ list: 'senders', value: normalizeItem('senders', sender), action: 'create', reason });
  }
  if (!opts.pushAttachmentHashes && !opts.pushUrls) return { items, attachments: 0, urlsTruncated: false };

  const maxUrls = opts.maxUrls ?? 50;
  const maxHtml = opts.maxHtmlChars ?? 2_000_000;
  const sha1s = new Set<string>();
  const sha256s = new Set<string>();
  const urls = new Set<string>();
  let urlsTruncated = false;
  let attachments = 0;

  await new Promise<void>((resolve, reject) => {
    const source = createReadStream(emlPath);
    const parser = new MailParser({
      // We read links ourselves; the conversions only cost CPU and can throw on huge HTML.
      skipHtmlToText: true,
      skipTextToHtml: true,
      skipTextLinks: true,
      skipImageLinks: true,
    });
    let settled = false;
    const fail = (err: unknown) => {
      if (settled) return;
      settled = true;
      source.destroy();
      parser.destroy();
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    source.on('error', fail);
    parser.on('error', fail);
    parser.on('data', (data: AttachmentStream | MessageText) => {
      if (data.type === 'attachment') {
        attachments++;
        const content = data.content as Readable;
        if (!opts.pushAttachmentHashes) {
          // Still drained: the parser waits for each attachment stream to end before going on.
          content.on('end', () => data.release());
          content.resume();
          return;
        }
        const h1 = createHash('sha1');
        const h256 = createHash('sha256');
        let bytes = 0;
        content.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          h1.update(chunk);
          h256.update(chunk);
        });
        content.on('error', fail);
        content.on('end', () => {
          // An empty file, or an image embedded in the HTML (a signature logo), would block far more
          // than this message if listed tenant-wide; only real attachments are pushed.
          if (bytes > 0 && data.related !== true) {
            sha1s.add(h1.digest('hex'));
            sha256s.add(h256.digest('hex'));
          }
          data.release();
        });
        return;
      }
      if (data.type === 'text' && opts.pushUrls) {
        if (typeof data.text === 'string') urlsTruncated = findUrls(data.text, urls, maxUrls) || urlsTruncated;
        if (typeof data.html === 'string') urlsTruncated = findUrls(data.html.slice(0, maxHtml), urls, maxUrls) || urlsTruncated;
      }
    });
    parser.on('end', () => {
      if (settled) return;
      settled = true;
      resolve();
    });
    source.pipe(parser);
  });

  for (const v of sha1s) items.push({ list: 'filehashes', value: v, action: 'create', reason });
  for (const v of sha256s) items.push({ list: 'file256hashes', value: v, action: 'create', reason });
  for (const v of urls) items.push({ list: 'urls', value: v, action: 'create', reason });
  return { items, attachments, urlsTruncated };
}
