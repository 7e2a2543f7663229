// A next hop on a raw socket that records every command line byte for byte and answers from a script: for lockstep tests (per-RCPT replies, 421 mid-list, RSET seen, DATA never sent).
import { createServer, type Server, type Socket } from 'node:net';

export interface HopScript {
  /** Reply to MAIL FROM; default '250 2.1.0 Ok'. */
  mail?: (line: string) => string;
  /** Delay before the reply to MAIL FROM (a slow next hop). */
  mailDelayMs?: number;
  /** Reply to a RCPT TO line; default '250 2.1.5 Ok'. A reply starting with 421 also closes the connection. */
  rcpt?: (address: string, line: string) => string;
  /** Reply after the final dot; default '250 2.0.0 Ok: queued as HOP<n>'. */
  dot?: (data: Buffer) => string;
  /** EHLO keywords (default PIPELINING, 8BITMIME, SMTPUTF8, DSN, ENHANCEDSTATUSCODES, SIZE 104857600). */
  ehlo?: string[];
}

export interface ScriptHop {
  port: number;
  /** Every line the hop read outside DATA, in order, per connection index. */
  lines: string[][];
  /** Raw DATA bytes as received (still dot-stuffed, terminator included), one per message. */
  rawData: Buffer[];
  /** Commands seen by verb, over all connections. */
  count(verb: string): number;
  script: HopScript;
  close(): Promise<void>;
}

export async function startScriptHop(script: HopScript = {}): Promise<ScriptHop> {
  const sockets = new Set<Socket>();
  const hop: ScriptHop = {
    port: 0,
    lines: [],
    rawData: [],
    script,
    count: (verb) => hop.lines.flat().filter((l) => l.toUpperCase().startsWith(verb.toUpperCase())).length,
    close: async () => {},
  };
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    const mine: string[] = [];
    hop.lines.push(mine);
    let buf = Buffer.alloc(0);
    let inData = false;
    sock.write('220 hop.test ESMTP\r\n');
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          const atStart = buf.subarray(0, 3).equals(Buffer.from('.\r\n'));
          if (end < 0 && !atStart) return;
          const cut = atStart ? 3 : end + 5;
          const data = buf.subarray(0, cut);
          buf = buf.subarray(cut);
          inData = false;
          hop.rawData.push(Buffer.from(data));
          sock.write(`${hop.script.dot?.(data) ?? `250 2.0.0 Ok: queued as HOP${hop.rawData.length}`}\r\n`);
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString('latin1');
        buf = buf.subarray(nl + 2);
        mine.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') {
          const kw = hop.script.ehlo ?? ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES', 'SIZE 104857600'];
          sock.write(['hop.test', ...kw].map((k, i, a) => `250${i === a.length - 1 ? ' ' : '-'}${k}`).join('\r\n') + '\r\n');
        } else if (verb === 'HELO') sock.write('250 hop.test\r\n');
        else if (verb === 'MAIL') {
          const reply = `${hop.script.mail?.(line) ?? '250 2.1.0 Ok'}\r\n`;
          if (hop.script.mailDelayMs) setTimeout(() => sock.write(reply), hop.script.mailDelayMs);
          else sock.write(reply);
        } else if (verb === 'RCPT') {
          const address = /<([^>]*)>/.exec(line)?.[1] ?? '';
          const reply = hop.script.rcpt?.(address, line) ?? '250 2.1.5 Ok';
          sock.write(`${reply}\r\n`);
          if (reply.startsWith('421')) sock.end();
        } else if (verb === 'DATA') {
          inData = true;
          sock.write('354 End data with <CR><LF>.<CR><LF>\r\n');
        } else if (verb === 'RSET') sock.write('250 2.0.0 Ok\r\n');
        else if (verb === 'NOOP') sock.write('250 2.0.0 Ok\r\n');
        else if (verb === 'QUIT') sock.end('221 2.0.0 Bye\r\n');
        else sock.write('502 5.5.1 Not implemented\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  hop.port = (server.address() as { port: number }).port;
  hop.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return hop;
}
