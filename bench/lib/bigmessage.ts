// Writes the big test message for the memory scenario: multipart with a base64 attachment of random bytes, streamed to disk so the harness never holds it either.
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';

/** A multipart message of `bytes` bytes (a short text part and a base64 attachment of random data), written streaming. */
export async function writeBigMessage(path: string, bytes: number, from: string, to: string): Promise<void> {
  const boundary = 'bench-boundary-7f3a';
  const head = Buffer.from(
    [
      `From: <${from}>`,
      `To: <${to}>`,
      'Subject: big attachment',
      `Date: ${new Date().toUTCString()}`,
      'Message-ID: <big@bench.example.test>',
      'MIME-Version: 1.0',
      `Content-Type: multipart/mixed; boundary="${boundary}"`,
      '',
      `--${boundary}`,
      'Content-Type: text/plain; charset=us-ascii',
      '',
      'Quarterly numbers attached.',
      `--${boundary}`,
      'Content-Type: application/octet-stream; name="data.bin"',
      'Content-Transfer-Encoding: base64',
      'Content-Disposition: attachment; filename="data.bin"',
      '',
      '',
    ].join('\r\n'),
  );
  const tail = Buffer.from(`--${boundary}--\r\n`);
  const out = createWriteStream(path);
  out.write(head);
  let left = bytes - head.length - tail.length;
  // 57 random bytes → one 76-character base64 line + CRLF = 78 bytes.
  while (left >= 78) {
    const lines = Math.min(2000, Math.floor(left / 78));
    const raw = randomBytes(57 * lines).toString('base64');
    const parts: string[] = [];
    for (let i = 0; i < lines; i++) parts.push(raw.slice(i * 76, i * 76 + 76));
    if (!out.write(parts.join('\r\n') + '\r\n')) await once(out, 'drain');
    left -= lines * 78;
  }
  if (left > 0) out.write('\r\n'.padStart(left, 'A'));
  out.end(tail);
  await once(out, 'finish');
}
