// Real-world MIME shapes built by an independent composer (nodemailer's stream transport), plus a byte-level segment splitter for "unchanged parts" checks.
import nodemailer, { type SendMailOptions } from 'nodemailer';

/** The raw CRLF message nodemailer would send. */
export async function compose(opts: SendMailOptions): Promise<Buffer> {
  const t = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'windows' });
  const info = await t.sendMail({ from: 'Alice <alice@example.test>', to: 'Bob <bob@example.test>', ...opts });
  return info.message as Buffer;
}

export const PDF = Buffer.concat([Buffer.from('%PDF-1.4\n'), Buffer.alloc(3000, 0x41), Buffer.from('\n%%EOF\n')]);
export const ZIP = Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(2000, 7)]);
export const PNG = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(500, 3)]);

export async function shapes(): Promise<Record<string, Buffer>> {
  const inner = await compose({ subject: 'inner', text: 'inner text', attachments: [{ filename: 'inner.zip', content: ZIP }] });
  return {
    'mixed with a PDF and a ZIP': await compose({
      subject: 'report',
      text: 'Please find the files attached.',
      attachments: [
        { filename: 'report.pdf', content: PDF, contentType: 'application/pdf' },
        { filename: 'data.zip', content: ZIP, contentType: 'application/zip' },
      ],
    }),
    'alternative + related with an inline image': await compose({
      subject: 'newsletter',
      text: 'plain version',
      html: '<p>html version <img src="cid:logo@example.test"></p>',
      attachments: [
        { filename: 'logo.png', content: PNG, cid: 'logo@example.test', contentType: 'image/png' },
        { filename: 'price list.pdf', content: PDF, contentType: 'application/pdf' },
      ],
    }),
    'forwarded message with its own attachment': await compose({
      subject: 'fwd',
      text: 'see below',
      attachments: [{ filename: 'fwd.eml', content: inner, contentType: 'message/rfc822' }],
    }),
    'quoted-printable attachment and 8-bit headers': Buffer.concat([
      Buffer.from('From: Zoë <zoe@example.test>\r\nTo: bob@example.test\r\nSubject: Grüße – Bericht\r\nMIME-Version: 1.0\r\n', 'utf8'),
      Buffer.from(
        'Content-Type: multipart/mixed; boundary="qp-b"\r\n\r\n--qp-b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n',
        'utf8',
      ),
      Buffer.from('Anbei der Bericht für März.\r\n--qp-b\r\nContent-Type: text/csv; charset=utf-8; name="Übersicht.csv"\r\n', 'utf8'),
      Buffer.from('Content-Transfer-Encoding: quoted-printable\r\nContent-Disposition: attachment; filename="Übersicht.csv"\r\n\r\n', 'utf8'),
      Buffer.from('name;iban\r\nM=C3=BCller;DE89370400440532013000\r\n--qp-b--\r\n', 'latin1'),
    ]),
  };
}

/** The boundaries declared anywhere in `eml`. */
export function boundaries(eml: Buffer): string[] {
  return [...eml.toString('latin1').matchAll(/boundary="?([^";\r\n]+)"?/gi)].map((m) => m[1] as string);
}

/** Splits at every delimiter line of the given boundaries (the delimiter lines themselves are dropped). */
export function segments(eml: Buffer, bounds: string[]): string[] {
  const esc = bounds.map((b) => b.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&'));
  return eml.toString('latin1').split(new RegExp(`(?:^|\\r?\\n)--(?:${esc.join('|')})(?:--)?[ \\t]*(?=\\r?\\n|$)`));
}
