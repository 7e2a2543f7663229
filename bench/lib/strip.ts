// The attachment-removal row: 1 MB messages with a PDF and a ZIP through the relay with a UCWI stand-in that answers actionCode 4; throughput and the relay's peak RSS.
import { randomBytes } from 'node:crypto';
import { SmtpSession } from './smtp-client.js';
import { statusKb } from './proc.js';

export interface StripResult {
  messageBytes: number;
  messages: number;
  /** Messages answered 2xx (the next hop's reply to the rewritten copy). */
  relayed: number;
  seconds: number;
  msgPerSec: number;
  mbPerSec: number;
  /** VmHWM of the relay process after the run. */
  peakMiB: number;
  firstReply: string;
}

/** A ~1 MB multipart/mixed message: a short text body, a PDF and a ZIP (random bytes, base64), the shape code 4 rewrites. */
export function strippableMessage(from: string, to: string, id: string, totalBytes = 1_000_000): Buffer {
  const raw = Math.floor(((totalBytes - 2000) * 3) / 4 / 2);
  const b64 = (n: number) =>
    (
      randomBytes(n)
        .toString('base64')
        .match(/.{1,76}/g) ?? []
    ).join('\r\n');
  return Buffer.from(
    [
      `From: <${from}>`,
      `To: <${to}>`,
      'Subject: bench attachments',
      `Message-ID: <${id}@bench.example.test>`,
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="bench-b"',
      '',
      '--bench-b',
      'Content-Type: text/plain; charset=utf-8',
      '',
      'Quarterly figures attached.',
      '--bench-b',
      'Content-Type: application/pdf; name="figures.pdf"',
      'Content-Transfer-Encoding: base64',
      'Content-Disposition: attachment; filename="figures.pdf"',
      '',
      b64(raw),
      '--bench-b',
      'Content-Type: application/zip; name="raw.zip"',
      'Content-Transfer-Encoding: base64',
      'Content-Disposition: attachment; filename="raw.zip"',
      '',
      b64(raw),
      '--bench-b--',
      '',
    ].join('\r\n'),
  );
}

/** Sends `messages` such messages in one session (plus one warm-up) and measures them. */
export async function stripRun(port: number, pid: number, from: string, to: string, messages: number): Promise<StripResult> {
  const s = await SmtpSession.open('127.0.0.1', port, { timeoutMs: 120_000 });
  try {
    const warm = await s.send(from, [to], strippableMessage(from, to, 'strip-warm'));
    const bodies = Array.from({ length: messages }, (_, i) => strippableMessage(from, to, `strip-${i}`));
    let relayed = 0;
    const t0 = performance.now();
    for (const b of bodies) if ((await s.send(from, [to], b)).reply.code < 300) relayed++;
    const seconds = (performance.now() - t0) / 1000;
    const bytes = bodies.reduce((n, b) => n + b.length, 0);
    return {
      messageBytes: bodies[0]?.length ?? 0,
      messages,
      relayed,
      seconds: Math.round(seconds * 100) / 100,
      msgPerSec: Math.round((messages / seconds) * 10) / 10,
      mbPerSec: Math.round((bytes / 1e6 / seconds) * 10) / 10,
      peakMiB: (statusKb(pid, 'VmHWM') ?? 0) / 1024,
      firstReply: `${warm.reply.code} ${warm.reply.text.split('\n')[0]!.slice(0, 80)}`,
    };
  } finally {
    await s.quit();
  }
}
