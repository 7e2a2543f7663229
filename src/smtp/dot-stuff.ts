// Dot-stuffing: makes message bytes SMTP-transparent (RFC 5321 §4.5.2) without changing anything else, as a stream (DotStuffer) or for one small message in a buffer (dotStuffWhole).
import { Transform, type TransformCallback } from 'node:stream';

const DOT = Buffer.from('.');
const END_AFTER_CRLF = Buffer.from('.\r\n');
const END_FULL = Buffer.from('\r\n.\r\n');

/*
 * Doubles a '.' at every line start and appends the end-of-data marker; never rewrites line endings
 * (the next hop must get the bytes the DLP server scanned).
 *
 * Line start = start of data, after a LF (CRLF or bare LF), or after a bare CR. Servers differ in
 * which of these they treat as a line end when unstuffing and when looking for the terminator (that
 * difference is SMTP smuggling): stuffing after every one of them means no server can read a
 * "<line end>.<line end>" inside the message as the end, and every server that strips a dot strips
 * one we added. A dot following a CR is always after a bare CR (a CR followed by LF has the LF next),
 * so "the previous byte is CR or LF" is the whole rule; across chunks only the last byte is needed.
 */

/** Adds to `parts` the chunk with a second dot at every line start; `before` is the byte before it (-1 at the start of data). */
function stuffInto(parts: Buffer[], buf: Buffer, before: number): void {
  let from = 0;
  // Native indexOf finds the candidates; only those at a line start get a second dot.
  for (let i = buf.indexOf(0x2e); i !== -1; i = buf.indexOf(0x2e, i + 1)) {
    const prev = i > 0 ? buf[i - 1]! : before;
    if (prev === -1 || prev === 0x0a || prev === 0x0d) {
      parts.push(buf.subarray(from, i + 1), DOT);
      from = i + 1;
    }
  }
  if (from === 0) parts.push(buf);
  else if (from < buf.length) parts.push(buf.subarray(from));
}

/**
 * The end-of-data marker for data whose last two bytes were `prev`, `last` (-1: none). The CRLF in
 * front of the dot belongs to the message when it ends with one; otherwise one is added (RFC 5321
 * §4.1.1.4). An empty message is just the marker: the CRLF ending the DATA command line counts as the
 * line end before it.
 */
function endMarker(prev: number, last: number): Buffer {
  return last === -1 || (prev === 0x0d && last === 0x0a) ? END_AFTER_CRLF : END_FULL;
}

/** A whole message, stuffed and with its end marker, in one buffer: what DotStuffer yields for it, without a stream. */
export function dotStuffWhole(message: Buffer): Buffer {
  const parts: Buffer[] = [];
  if (message.length > 0) stuffInto(parts, message, -1);
  const n = message.length;
  parts.push(endMarker(n > 1 ? message[n - 2]! : -1, n > 0 ? message[n - 1]! : -1));
  return Buffer.concat(parts);
}

/** The streaming form, for messages too big to hold (see dotStuffWhole for the rule). */
export class DotStuffer extends Transform {
  /** The last message byte seen, or -1 before the first (start of data counts as a line start). */
  private last = -1;
  /** The byte before `last` (to see whether the data ended in CRLF). */
  private prev = -1;

  override _transform(chunk: Buffer | string, _enc: BufferEncoding, done: TransformCallback): void {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
    if (buf.length === 0) return done();
    const parts: Buffer[] = [];
    stuffInto(parts, buf, this.last);
    this.prev = buf.length > 1 ? buf[buf.length - 2]! : this.last;
    this.last = buf[buf.length - 1]!;
    this.push(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    done();
  }

  override _flush(done: TransformCallback): void {
    this.push(endMarker(this.prev, this.last));
    done();
  }
}
