// Shared fixtures for the NextHopPool suites: pools that close themselves, envelopes, an awkward message, a next hop that keeps transaction state, and bounded waits.
import { createServer, type AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pino } from 'pino';
import { expect } from 'vitest';
import { NextHopPool, type NextHopOptions } from '../../src/egress/pool.js';
import { DeliveryError } from '../../src/egress/next-hop-errors.js';
import type { Envelope, Recipient } from '../../src/smtp/envelope.js';
import { nextHopTestOptions } from './next-hop.js';
import { startSim, unstuffWire, type Sim, type SimOptions } from './scripted-smtp.js';

const logger = pino({ level: 'silent' });

/** Everything a test opened; closed by `cleanup()` in afterEach. */
const opened: Array<{ close(): Promise<void> | void }> = [];

export function poolFor(port: number, over: Partial<NextHopOptions> = {}): NextHopPool {
  const pool = new NextHopPool(nextHopTestOptions(port, { starttls: 'off', ...over }), logger);
  opened.push(pool);
  return pool;
}

export function track<T extends { close(): Promise<void> | void }>(x: T): T {
  opened.push(x);
  return x;
}

export async function cleanup(): Promise<void> {
  for (const x of opened.splice(0).reverse()) await x.close();
}

export function env(to: Array<string | Recipient>, extra: Partial<Envelope> = {}): Envelope {
  return { from: 'sender@example.com', to: to.map((t) => (typeof t === 'string' ? { address: t } : t)), smtpUtf8: false, ...extra };
}

export const simple = Buffer.from('From: <sender@example.com>\r\nSubject: hi\r\n\r\nhello\r\n');
export const openSimple = (): Readable => Readable.from([simple]);
export const never = (): AbortSignal => new AbortController().signal;

/**
 * A message that exercises dot-stuffing and 8-bit transparency: dots at line starts after CRLF, after
 * a bare LF and after a bare CR, a lone dot line, binary bytes, ~200 KB, split at awkward places.
 */
export function trickyMessage(): { bytes: Buffer; chunks: Buffer[] } {
  const parts: Buffer[] = [
    Buffer.from('From: <sender@example.com>\r\nTo: <a@example.com>\r\nSubject: dots and bytes\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
    Buffer.from('.starts with a dot\r\n..two dots\r\n.\r\nthe line above is a lone dot\r\nbare lf\n.dot after lf\nbare cr\r.dot after cr\r\n'),
    Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0xff, 0xfe, 0x80, 0x0d, 0x0a]),
  ];
  for (let i = 0; i < 4000; i++) {
    const bin = Buffer.alloc(40);
    for (let j = 0; j < bin.length; j++) bin[j] = 0x80 + ((i * 7 + j * 13) % 0x7f);
    parts.push(Buffer.from(i % 3 === 0 ? `.line ${i} ` : `line ${i} `), bin, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('.\r\n..\r\n.last line starts with a dot\r\n'));
  const bytes = Buffer.concat(parts);
  // Cut right after line ends (so a dot opens the next chunk) and between some CR/LF pairs.
  const chunks: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i] === 0x0a && (i % 5 === 0 || i < 300)) || (bytes[i] === 0x0d && i % 7 === 0)) {
      chunks.push(bytes.subarray(start, i + 1));
      start = i + 1;
    }
  }
  chunks.push(bytes.subarray(start));
  return { bytes, chunks: chunks.filter((c) => c.length > 0) };
}

/** The message as a receiver sees it: raw DATA bytes with the final "." line cut off and the stuffing undone. */
export function unwire(raw: Buffer, withTerminator: boolean): Buffer {
  return unstuffWire(withTerminator ? raw.subarray(0, raw.length - 3) : raw);
}

export async function expectDeliveryError(p: Promise<unknown>): Promise<DeliveryError> {
  const err = await p.then(
    () => new Error('expected the next-hop call to fail'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DeliveryError);
  return err as DeliveryError;
}

/** Polls `cond` until it holds; fails after `ms` so a broken pool cannot hang the suite. */
export async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Settles with the promise, or rejects after `ms` (a wait in a test always has a bound). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_r, reject) => (t = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms)))]).finally(
    () => clearTimeout(t),
  );
}

export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A next hop that keeps transaction state the way Postfix does: MAIL while a transaction is open is
 * "503 nested MAIL"; only RSET or a message's final reply ends one (a refused DATA does not). `nested` counts those.
 */
export async function startStrictHop(o: SimOptions = {}): Promise<Sim & { nested: number }> {
  let nested = 0;
  const server = await startSim({
    ...o,
    nestedMail: 'refuse',
    onCommand: (line, s) => {
      // The peer refuses this MAIL itself (its transaction state), whatever the script would say.
      if (/^MAIL\b/i.test(line) && s.tx) {
        nested++;
        return undefined;
      }
      return o.onCommand?.(line, s);
    },
  });
  const hop = server as Sim & { nested: number };
  Object.defineProperty(hop, 'nested', { get: () => nested });
  opened.push(hop);
  return hop;
}

export async function sim(o: SimOptions = {}): Promise<Sim> {
  return track(await startSim(o));
}
