// Next-hop relay against real SMTP sinks on loopback: byte-exact delivery, per-recipient DSN parameters, pooling, failures, TLS.
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net, { type AddressInfo } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { SMTPServer } from 'smtp-server';
import { pino } from 'pino';
import { NextHopRelay, DeliveryError, parseEnhancedCode, oneLineReply, type NextHopOptions, type OutboundEnvelope } from '../../src/egress/relay.js';
import { RelayConnection, NODEMAILER_PINNED_VERSION, NODEMAILER_VERSION, encodeXText } from '../../src/egress/connection.js';
import { nextHopTestOptions } from '../helpers/next-hop.js';

const logger = pino({ level: 'silent' });

interface Captured {
  from: string;
  rcpt: Array<{ address: string; dsn?: { notify?: string[]; orcpt?: string } }>;
  dsn?: { ret: string | null; envid: string | null };
  bodyType?: string;
  smtpUtf8?: boolean;
  secure: boolean;
  user?: string;
  sha256: string;
  size: number;
}

interface SinkOptions {
  tls?: { key: Buffer; cert: Buffer };
  /** Reply code for a recipient, or null to accept it. */
  rcpt?: (address: string) => number | null;
  /** Reply code for the end of DATA instead of 250. */
  dataError?: number;
  /** Read the message but never answer the final dot. */
  stallData?: boolean;
  onDataStart?: () => void;
  auth?: { user: string; pass: string };
  /** Reply code for MAIL FROM, or null to accept it. */
  mail?: (address: string) => number | null;
  /** SIZE limit the sink announces. */
  size?: number;
  /** Implicit TLS (465-style) instead of STARTTLS. */
  implicitTls?: boolean;
}

interface Sink {
  port: number;
  messages: Captured[];
  /** Messages whose data stream ended in full (a dropped connection never gets here). */
  completed: number;
  connections: number;
  closed: number;
  /** Resolves once `n` client connections have closed. */
  closedCount(n: number): Promise<void>;
  close(): Promise<void>;
}

const sinks: Array<{ close(): Promise<void> }> = [];

async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  const closeWaiters: Array<{ n: number; resolve: () => void }> = [];
  const state: Sink = {
    port: 0,
    messages: [],
    completed: 0,
    connections: 0,
    closed: 0,
    closedCount: (n) =>
      new Promise((resolve) => {
        if (state.closed >= n) resolve();
        else closeWaiters.push({ n, resolve });
      }),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  const server = new SMTPServer({
    logger: false,
    hideDSN: false,
    hideENHANCEDSTATUSCODES: false,
    closeTimeout: 1000,
    authOptional: !opts.auth,
    allowInsecureAuth: true,
    disabledCommands: opts.tls ? [] : ['STARTTLS'],
    ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert } : {}),
    ...(opts.implicitTls ? { secure: true } : {}),
    ...(opts.size ? { size: opts.size } : {}),
    onMailFrom(address, _session, cb) {
      const code = opts.mail?.(address.address) ?? null;
      if (code) return cb(Object.assign(new Error('Sender refused'), { responseCode: code }));
      cb();
    },
    // Connections are counted on the TCP socket below: smtp-server calls onConnect again on the first
    // MAIL FROM after a finished transaction, so onConnect counts transactions, not connections.
    onClose() {
      state.closed++;
      for (const w of closeWaiters.filter((x) => state.closed >= x.n)) {
        closeWaiters.splice(closeWaiters.indexOf(w), 1);
        w.resolve();
      }
    },
    onAuth(auth, _session, cb) {
      if (opts.auth && auth.username === opts.auth.user && auth.password === opts.auth.pass) return cb(null, { user: auth.username });
      cb(Object.assign(new Error('Invalid username or password'), { responseCode: 535 }));
    },
    onRcptTo(address, _session, cb) {
      const code = opts.rcpt?.(address.address) ?? null;
      if (code) return cb(Object.assign(new Error(`Mailbox refused: ${address.address}`), { responseCode: code }));
      cb();
    },
    onData(stream, session, cb) {
      // Copy now: smtp-server resets the session envelope after the reply.
      const env = JSON.parse(JSON.stringify(session.envelope)) as {
        mailFrom: { address: string };
        rcptTo: Captured['rcpt'];
        dsn?: Captured['dsn'];
        bodyType?: string;
        smtpUtf8?: boolean;
      };
      const hash = createHash('sha256');
      let size = 0;
      let started = false;
      stream.on('data', (chunk: Buffer) => {
        if (!started) {
          started = true;
          opts.onDataStart?.();
        }
        hash.update(chunk);
        size += chunk.length;
      });
      stream.on('error', () => {});
      stream.on('end', () => {
        state.completed++;
        if (opts.stallData) return;
        state.messages.push({
          from: env.mailFrom.address,
          rcpt: env.rcptTo.map((r) => ({ address: r.address, ...(r.dsn ? { dsn: r.dsn } : {}) })),
          ...(env.dsn ? { dsn: env.dsn } : {}),
          ...(env.bodyType ? { bodyType: env.bodyType } : {}),
          ...(env.smtpUtf8 ? { smtpUtf8: env.smtpUtf8 } : {}),
          secure: session.secure,
          ...(session.user ? { user: String(session.user) } : {}),
          sha256: hash.digest('hex'),
          size,
        });
        if (opts.dataError) cb(Object.assign(new Error('Try again later'), { responseCode: opts.dataError }));
        else cb(null, 'Queued as SINK1');
      });
    },
  });
  // A client that gives up during the TLS handshake makes smtp-server emit 'error': expected in these tests.
  server.on('error', () => {});
  server.server.on('connection', () => state.connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  state.port = (server.server.address() as AddressInfo).port;
  sinks.push(state);
  return state;
}

/** A TCP server that accepts connections and never says anything (no greeting). */
async function startSilentServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const h = {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  sinks.push(h);
  return h;
}

/** A scripted SMTP server that drops the connection as soon as message data starts to arrive. */
async function startDroppingServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.write('220 dropper ESMTP\r\n');
    let buf = '';
    let inData = false;
    s.on('data', (chunk: Buffer) => {
      if (inData) {
        s.destroy();
        return;
      }
      buf += chunk.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') s.write('250-dropper\r\n250 8BITMIME\r\n');
        else if (verb === 'DATA') {
          inData = true;
          s.write('354 go ahead\r\n');
        } else if (verb === 'QUIT') s.end('221 bye\r\n');
        else s.write('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const h = {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  sinks.push(h);
  return h;
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const relays: NextHopRelay[] = [];

function relayFor(port: number, over: Partial<NextHopOptions> = {}): NextHopRelay {
  const relay = new NextHopRelay(nextHopTestOptions(port, over), logger);
  relays.push(relay);
  return relay;
}

function env(to: OutboundEnvelope['to'], extra: Partial<OutboundEnvelope> = {}): OutboundEnvelope {
  return { from: 'sender@example.com', to, smtpUtf8: false, ...extra };
}

/** A message that exercises dot-stuffing and 8-bit transparency, in awkward chunks. */
function trickyMessage(): { bytes: Buffer; chunks: Buffer[] } {
  const parts: Buffer[] = [
    Buffer.from('From: <sender@example.com>\r\nTo: <a@example.com>\r\nSubject: dots and bytes\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
    Buffer.from('.starts with a dot\r\n..two dots\r\n.\r\nthe line above is a lone dot\r\n\r\n.\r\n\r\n'),
    Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0xff, 0xfe, 0x80, 0x0d, 0x0a]),
  ];
  const filler: Buffer[] = [];
  for (let i = 0; i < 4000; i++) {
    const bin = Buffer.alloc(40);
    for (let j = 0; j < bin.length; j++) bin[j] = 0x80 + ((i * 7 + j * 13) % 0x7f);
    filler.push(Buffer.from(i % 3 === 0 ? `.line ${i} ` : `line ${i} `), bin, Buffer.from('\r\n'));
  }
  parts.push(Buffer.concat(filler));
  parts.push(Buffer.from('.\r\n..\r\n.last line starts with a dot\r\n'));
  const bytes = Buffer.concat(parts);
  // Split after every LF (so a dot starts the next chunk) and between some CR/LF pairs.
  const chunks: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x0a && (i % 5 === 0 || i < 200)) {
      chunks.push(bytes.subarray(start, i + 1));
      start = i + 1;
    } else if (bytes[i] === 0x0d && i % 7 === 0) {
      chunks.push(bytes.subarray(start, i + 1));
      start = i + 1;
    }
  }
  chunks.push(bytes.subarray(start));
  return { bytes, chunks: chunks.filter((c) => c.length > 0) };
}

const simple = Buffer.from('From: <sender@example.com>\r\nSubject: hi\r\n\r\nhello\r\n');
const openSimple = (): Readable => Readable.from([simple]);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const never = (): AbortSignal => new AbortController().signal;

async function expectDeliveryError(p: Promise<unknown>): Promise<DeliveryError> {
  const err = await p.then(
    () => {
      throw new Error('expected the delivery to fail');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DeliveryError);
  return err as DeliveryError;
}

afterEach(async () => {
  for (const r of relays.splice(0)) await r.close();
  for (const s of sinks.splice(0)) await s.close();
});

describe('nodemailer private API guard', () => {
  it('runs against the nodemailer version the overrides were written for', () => {
    // If this fails, re-read src/egress/connection.ts against the new nodemailer before bumping the pin.
    expect(NODEMAILER_VERSION).toBe(NODEMAILER_PINNED_VERSION);
    const proto = Object.getPrototypeOf(RelayConnection.prototype) as Record<string, unknown>;
    for (const m of ['_getDsnRcptToArgs', '_sendCommand', '_onConnect', '_setEnvelope', '_actionMAIL', '_actionRCPT']) {
      expect(typeof proto[m], m).toBe('function');
    }
    // The hook is found by nodemailer's RCPT code through this exact call; a rename there breaks us.
    const src = readFileSync(join(process.cwd(), 'node_modules/nodemailer/lib/smtp-connection/index.js'), 'utf8');
    expect(src).toContain("this._recipientQueue.push(curRecipient);");
    expect(src).toContain("'RCPT TO:<' + curRecipient + '>' + this._getDsnRcptToArgs()");
  });

  it('fails the delivery (transient) instead of silently dropping DSN parameters when the hook is bypassed', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    const proto = RelayConnection.prototype as unknown as { _getDsnRcptToArgs: () => string };
    const own = proto._getDsnRcptToArgs;
    // Simulate a nodemailer change that builds RCPT lines without consulting our override.
    proto._getDsnRcptToArgs = () => '';
    try {
      const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com', notify: ['FAILURE'] }]), openSimple, never()));
      expect(err.kind).toBe('transient');
      expect(sink.messages).toHaveLength(0);
    } finally {
      proto._getDsnRcptToArgs = own;
    }
  });

  it('xtext-encodes what must be encoded and round-trips decoded octets', () => {
    expect(encodeXText('rfc822;a+b=c@example.com')).toBe('rfc822;a+2Bb+3Dc@example.com');
    expect(encodeXText('with space')).toBe('with+20space');
    // smtp-server decodes "+C3+A9" to two chars; they must go out as the same two octets.
    expect(encodeXText('caf\u00c3\u00a9')).toBe('caf+C3+A9');
  });
});

describe('NextHopRelay delivery', () => {
  it('delivers the bytes unchanged, with dot-stuffing undone by the sink, and reports the final reply', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    const { bytes, chunks } = trickyMessage();
    const res = await relay.deliver(
      env([{ address: 'a@example.com' }], { bodyType: '8bitmime', size: bytes.length }),
      () => Readable.from(chunks),
      never(),
    );
    expect(res.accepted).toEqual(['a@example.com']);
    expect(res.rejected).toEqual([]);
    expect(res.response).toMatch(/^250 .*Queued as SINK1/);
    expect(res.elapsedMs).toBeGreaterThanOrEqual(0);
    expect(sink.messages).toHaveLength(1);
    const m = sink.messages[0]!;
    expect(m.size).toBe(bytes.length);
    expect(m.sha256).toBe(sha(bytes));
    expect(m.bodyType).toBe('8bitmime');
    expect(m.from).toBe('sender@example.com');
  });

  it('passes each recipient its own NOTIFY/ORCPT, plus RET and ENVID', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    await relay.deliver(
      env(
        [
          { address: 'a@example.com', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;a+tag@example.com' },
          { address: 'b@example.com', notify: ['NEVER'] },
          { address: 'c@example.com' },
          { address: 'd@example.com', notify: ['DELAY'], orcpt: 'rfc822;D@Example.COM' },
        ],
        { ret: 'HDRS', envid: 'env id+1=2' },
      ),
      openSimple,
      never(),
    );
    const m = sink.messages[0]!;
    expect(m.rcpt).toEqual([
      { address: 'a@example.com', dsn: { notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;a+tag@example.com' } },
      { address: 'b@example.com', dsn: { notify: ['NEVER'] } },
      { address: 'c@example.com' },
      { address: 'd@example.com', dsn: { notify: ['DELAY'], orcpt: 'rfc822;D@Example.COM' } },
    ]);
    expect(m.dsn).toEqual({ ret: 'HDRS', envid: 'env id+1=2' });
  });

  it('sends the null sender as MAIL FROM:<>', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    await relay.deliver(env([{ address: 'a@example.com' }], { from: '' }), openSimple, never());
    expect(sink.messages[0]!.from).toBe('');
  });

  it('passes SMTPUTF8 when the client used it, even for ASCII addresses, and not otherwise', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    await relay.deliver(env([{ address: 'a@example.com' }], { smtpUtf8: true }), openSimple, never());
    await relay.deliver(env([{ address: 'a@example.com' }], { smtpUtf8: false }), openSimple, never());
    await relay.deliver(env([{ address: 'j\u00f6rg@example.com' }], { smtpUtf8: true, from: 'm\u00fcller@example.com' }), openSimple, never());
    expect(sink.messages[0]!.smtpUtf8).toBe(true);
    expect(sink.messages[1]!.smtpUtf8).toBeUndefined();
    expect(sink.messages[2]!.smtpUtf8).toBe(true);
    expect(sink.messages[2]!.rcpt[0]!.address).toBe('j\u00f6rg@example.com');
    expect(sink.messages[2]!.from).toBe('m\u00fcller@example.com');
  });

  it('reuses one pooled connection (RSET in between) for consecutive messages', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    await relay.deliver(env([{ address: 'b@example.com' }]), openSimple, never());
    expect(sink.messages).toHaveLength(2);
    expect(sink.connections).toBe(1);
  });

  it('queues deliveries beyond maxConnections and serves them in turn', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 } });
    const results = await Promise.all([1, 2, 3].map((i) => relay.deliver(env([{ address: `r${i}@example.com` }]), openSimple, never())));
    expect(results.map((r) => r.accepted[0])).toEqual(['r1@example.com', 'r2@example.com', 'r3@example.com']);
    expect(sink.connections).toBe(1);
  });

  it('retires a connection after maxMessagesPerConnection', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 1, idleTimeoutMs: 60_000 } });
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    await relay.deliver(env([{ address: 'b@example.com' }]), openSimple, never());
    expect(sink.connections).toBe(2);
    // The first one said QUIT once it was used up.
    await sink.closedCount(1);
  });

  it('closes a connection that stayed idle for idleTimeoutMs, then opens a new one', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 50 } });
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    await sink.closedCount(1);
    await relay.deliver(env([{ address: 'b@example.com' }]), openSimple, never());
    expect(sink.connections).toBe(2);
    expect(sink.messages).toHaveLength(2);
  });

  it('resolves with the refused recipient listed when the next hop refuses one of two', async () => {
    const sink = await startSink({ rcpt: (a) => (a.startsWith('bad') ? 550 : null) });
    const relay = relayFor(sink.port);
    const res = await relay.deliver(env([{ address: 'good@example.com' }, { address: 'bad@example.com' }]), openSimple, never());
    expect(res.accepted).toEqual(['good@example.com']);
    expect(res.rejected).toHaveLength(1);
    expect(res.rejected[0]!.address).toBe('bad@example.com');
    expect(res.rejected[0]!.code).toBe(550);
    expect(res.rejected[0]!.response).toMatch(/^550 5\.\d+\.\d+ Mailbox refused: bad@example.com$/);
    expect(sink.messages[0]!.rcpt.map((r) => r.address)).toEqual(['good@example.com']);
    // The connection is still good for the next message.
    await relay.deliver(env([{ address: 'good@example.com' }]), openSimple, never());
    expect(sink.connections).toBe(1);
  });

  it('throws permanent when every recipient is refused with 5xx', async () => {
    const sink = await startSink({ rcpt: () => 550 });
    const relay = relayFor(sink.port);
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'x@example.com' }, { address: 'y@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('permanent');
    expect(err.phase).toBe('rcpt');
    expect(err.code).toBe(550);
    expect(err.enhanced).toMatch(/^5\.\d+\.\d+$/);
    expect(err.response).toMatch(/^550 5\.\d+\.\d+ Mailbox refused: x@example.com$/);
    expect(err.rejected?.map((r) => r.address)).toEqual(['x@example.com', 'y@example.com']);
    expect(sink.messages).toHaveLength(0);
  });

  it('throws transient when the refusals are mixed 4xx/5xx', async () => {
    const sink = await startSink({ rcpt: (a) => (a.startsWith('x') ? 550 : 451) });
    const relay = relayFor(sink.port);
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'x@example.com' }, { address: 'y@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.code).toBe(550);
  });

  it('throws transient with the code when the next hop answers 451 at the end of DATA', async () => {
    const sink = await startSink({ dataError: 451 });
    const relay = relayFor(sink.port);
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('data');
    expect(err.code).toBe(451);
    expect(err.enhanced).toMatch(/^4\.\d+\.\d+$/);
    expect(err.response).toMatch(/^451 4\.\d+\.\d+ Try again later$/);
  });

  it('throws permanent phase mail when the next hop refuses the sender, transient on 4xx', async () => {
    const sink = await startSink({ mail: (a) => (a.startsWith('spam') ? 553 : a.startsWith('later') ? 450 : null) });
    const relay = relayFor(sink.port);
    const perm = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }], { from: 'spam@example.com' }), openSimple, never()));
    expect(perm).toMatchObject({ kind: 'permanent', phase: 'mail', code: 553 });
    expect(perm.response).toMatch(/^553 5\.\d+\.\d+ Sender refused$/);
    const temp = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }], { from: 'later@example.com' }), openSimple, never()));
    expect(temp).toMatchObject({ kind: 'transient', phase: 'mail', code: 450 });
  });

  it('refuses permanently (552 5.3.4) a message larger than the SIZE the next hop announced', async () => {
    const sink = await startSink({ size: 1000 });
    const relay = relayFor(sink.port);
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }], { size: 5000 }), openSimple, never()));
    expect(err).toMatchObject({ kind: 'permanent', phase: 'mail', code: 552, enhanced: '5.3.4' });
    expect(sink.messages).toHaveLength(0);
  });

  it('throws permanent with code/enhanced/response on 554 at the end of DATA and never reuses that connection', async () => {
    const sink = await startSink({ dataError: 554 });
    const relay = relayFor(sink.port);
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('permanent');
    expect(err.phase).toBe('data');
    expect(err.code).toBe(554);
    expect(err.enhanced).toBe(parseEnhancedCode(err.response!));
    await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(sink.connections).toBe(2);
  });

  it('throws transient phase connect when nothing listens', async () => {
    const relay = relayFor(await closedPort());
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('connect');
    await expect(relay.verify()).rejects.toMatchObject({ kind: 'transient', phase: 'connect' });
  });

  it('throws transient phase timeout when the greeting never comes', async () => {
    const silent = await startSilentServer();
    const relay = relayFor(silent.port, { timeouts: { connectMs: 5_000, greetingMs: 200, socketMs: 10_000 } });
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('timeout');
  });

  it('throws transient phase timeout when the next hop goes silent after the message', async () => {
    const sink = await startSink({ stallData: true });
    const relay = relayFor(sink.port, { timeouts: { connectMs: 5_000, greetingMs: 5_000, socketMs: 300 } });
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('timeout');
  });

  it('throws transient phase data when the connection drops mid-message', async () => {
    const dropper = await startDroppingServer();
    const relay = relayFor(dropper.port);
    const { chunks } = trickyMessage();
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), () => Readable.from(chunks), never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('data');
  });

  it('aborts mid-DATA: drops the connection, the sink never gets the message, and the pool recovers', async () => {
    let dataStarted!: () => void;
    const started = new Promise<void>((resolve) => (dataStarted = resolve));
    const sink = await startSink({ onDataStart: () => dataStarted() });
    const relay = relayFor(sink.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 } });
    const ac = new AbortController();
    const body = new PassThrough();
    let bodyDestroyed = false;
    body.on('close', () => (bodyDestroyed = true));
    // Part of the message now, the rest never: the transfer is mid-DATA when we abort.
    body.write(Buffer.from('Subject: partial\r\n\r\n' + 'x'.repeat(70) + '\r\n'));
    const p = relay.deliver(env([{ address: 'a@example.com' }]), () => body, ac.signal);
    await started;
    ac.abort();
    const err = await expectDeliveryError(p);
    expect(err.phase).toBe('aborted');
    expect(err.kind).toBe('transient');
    await sink.closedCount(1);
    expect(sink.completed).toBe(0);
    expect(sink.messages).toHaveLength(0);
    expect(bodyDestroyed).toBe(true);
    // The slot was freed: the next delivery opens a fresh connection.
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    expect(sink.messages).toHaveLength(1);
    expect(sink.connections).toBe(2);
  });

  it('rejects at once when the signal is already aborted, and while waiting for a connection', async () => {
    const sink = await startSink({ stallData: true });
    const relay = relayFor(sink.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 } });
    const pre = new AbortController();
    pre.abort();
    await expect(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, pre.signal)).rejects.toMatchObject({ phase: 'aborted' });
    // The first delivery holds the only connection (the sink never answers the dot) ...
    const first = new AbortController();
    const p1 = relay.deliver(env([{ address: 'a@example.com' }]), openSimple, first.signal);
    await new Promise<void>((resolve) => {
      const tick = (): void => (sink.completed > 0 ? resolve() : void setImmediate(tick));
      tick();
    });
    // ... so the second waits in the queue, and its abort takes it out of the queue.
    const second = new AbortController();
    const p2 = relay.deliver(env([{ address: 'b@example.com' }]), openSimple, second.signal);
    second.abort();
    await expect(p2).rejects.toMatchObject({ phase: 'aborted', kind: 'transient' });
    first.abort();
    await expect(p1).rejects.toMatchObject({ phase: 'aborted' });
  });

  it('reports a failing message stream as transient phase data', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    const broken = (): Readable =>
      new Readable({
        read() {
          this.destroy(new Error('spool read failed'));
        },
      });
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), broken, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('data');
    expect(sink.messages).toHaveLength(0);
  });
});

describe('NextHopRelay TLS and AUTH', () => {
  let dir: string;
  let key: Buffer;
  let cert: Buffer;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'egress-tls-'));
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
      { stdio: 'ignore' },
    );
    key = readFileSync(join(dir, 'key.pem'));
    cert = readFileSync(join(dir, 'cert.pem'));
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('upgrades with STARTTLS to a self-signed next hop when rejectUnauthorized is false', async () => {
    const sink = await startSink({ tls: { key, cert } });
    const relay = relayFor(sink.port, { starttls: 'required', tls: { rejectUnauthorized: false } });
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    expect(sink.messages[0]!.secure).toBe(true);
    expect(sink.messages[0]!.sha256).toBe(sha(simple));
  });

  it('verifies the next hop against the configured CA', async () => {
    const sink = await startSink({ tls: { key, cert } });
    const relay = relayFor(sink.port, { starttls: 'required', tls: { rejectUnauthorized: true, ca: cert, servername: 'localhost' } });
    await relay.verify();
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    expect(sink.messages[0]!.secure).toBe(true);
  });

  it('fails transient phase tls when the certificate cannot be verified', async () => {
    const sink = await startSink({ tls: { key, cert } });
    const relay = relayFor(sink.port, { starttls: 'opportunistic', tls: { rejectUnauthorized: true } });
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('tls');
    expect(sink.messages).toHaveLength(0);
  });

  it('speaks implicit TLS (secure: true) and fails transient phase tls on an unverifiable certificate', async () => {
    const sink = await startSink({ tls: { key, cert }, implicitTls: true });
    const ok = relayFor(sink.port, { secure: true, tls: { rejectUnauthorized: true, ca: cert, servername: 'localhost' } });
    await ok.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    expect(sink.messages[0]!.secure).toBe(true);
    const bad = relayFor(sink.port, { secure: true, tls: { rejectUnauthorized: true } });
    const err = await expectDeliveryError(bad.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err).toMatchObject({ kind: 'transient', phase: 'tls' });
  });

  it('fails transient phase tls when STARTTLS is required but not offered', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port, { starttls: 'required', tls: { rejectUnauthorized: false } });
    const err = await expectDeliveryError(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('tls');
    expect(sink.messages).toHaveLength(0);
  });

  it('stays in clear text with starttls off even when the next hop offers it', async () => {
    const sink = await startSink({ tls: { key, cert } });
    const relay = relayFor(sink.port, { starttls: 'off' });
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    expect(sink.messages[0]!.secure).toBe(false);
  });

  it('authenticates when credentials are configured, and fails transient phase auth when they are wrong', async () => {
    const sink = await startSink({ tls: { key, cert }, auth: { user: 'relay', pass: 's3cret' } });
    const ok = relayFor(sink.port, { tls: { rejectUnauthorized: false }, auth: { user: 'relay', pass: 's3cret' } });
    await ok.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    expect(sink.messages[0]!.user).toBe('relay');
    const bad = relayFor(sink.port, { tls: { rejectUnauthorized: false }, auth: { user: 'relay', pass: 'wrong' } });
    const err = await expectDeliveryError(bad.deliver(env([{ address: 'a@example.com' }]), openSimple, never()));
    expect(err.kind).toBe('transient');
    expect(err.phase).toBe('auth');
    expect(err.code).toBe(535);
  });
});

describe('NextHopRelay lifecycle', () => {
  it('close() QUITs idle connections and refuses new deliveries', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    await relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    await relay.close();
    await sink.closedCount(1);
    await expect(relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never())).rejects.toMatchObject({ kind: 'transient' });
  });

  it('close() waits for in-flight deliveries to finish', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    const p = relay.deliver(env([{ address: 'a@example.com' }]), openSimple, never());
    const closing = relay.close();
    const res = await p;
    await closing;
    expect(res.accepted).toEqual(['a@example.com']);
    await sink.closedCount(1);
  });

  it('verify() succeeds against a working next hop without sending mail', async () => {
    const sink = await startSink();
    const relay = relayFor(sink.port);
    await relay.verify();
    await sink.closedCount(1);
    expect(sink.messages).toHaveLength(0);
  });
});

describe('reply helpers', () => {
  it('parses enhanced status codes only when the class matches', () => {
    expect(parseEnhancedCode('550 5.1.1 No such user')).toBe('5.1.1');
    expect(parseEnhancedCode('550-5.7.1 first line')).toBe('5.7.1');
    expect(parseEnhancedCode('451 4.3.0 later')).toBe('4.3.0');
    expect(parseEnhancedCode('550 No such user')).toBeUndefined();
    expect(parseEnhancedCode('550 4.1.1 mismatch')).toBeUndefined();
  });

  it('folds multi-line replies into one line', () => {
    expect(oneLineReply('550-5.7.1 Message rejected\n550-5.7.1 see https://example.com\n550 5.7.1 for details')).toBe(
      '550 5.7.1 Message rejected see https://example.com for details',
    );
    expect(oneLineReply('250 ok')).toBe('250 ok');
  });
});
