// The client side of the test SMTP peer: one raw socket that writes exactly the bytes given and reads complete replies, every wait bounded. SmtpSession (raw-smtp.ts) and the engine tests' RawClient are thin wrappers over it; shares no code with src/smtp.
import { connect as netConnect, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';

export interface PeerClientOptions {
  /** Default 127.0.0.1: tests never leave the loopback interface. */
  host?: string;
  /** How reply bytes become text: UTF-8 (a sequence split across packets kept whole) or latin1 (byte for byte). */
  encoding?: 'utf8' | 'latin1';
  /** Written as soon as the connection is up, before anything is read (a PROXY header, a client talking first). */
  preamble?: string | Buffer;
  /** Local address to connect from (a loopback alias standing for another client). */
  localAddress?: string;
}

export class PeerClient {
  /** Why the connection is over (closed by either side, or a socket error); undefined while it is open. */
  closedError: Error | undefined;

  private sock: Socket | TLSSocket;
  private text = '';
  private lines: string[] = [];
  private readonly replies: string[] = [];
  private waiters: Array<() => void> = [];

  private constructor(
    socket: Socket,
    private readonly encoding: 'utf8' | 'latin1',
  ) {
    this.sock = socket;
    this.attach(socket);
  }

  /** Resolves once the TCP connection is up (the greeting is read like any reply). */
  static open(port: number, o: PeerClientOptions = {}): Promise<PeerClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: o.host ?? '127.0.0.1', port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
      // Buffered until connected, so replies arriving with the connection are never missed.
      const client = new PeerClient(socket, o.encoding ?? 'utf8');
      socket.once('connect', () => {
        if (o.preamble !== undefined) socket.write(o.preamble);
        resolve(client);
      });
      socket.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** The current socket (a TLSSocket after startTls), for tests that check or break the connection itself. */
  get socket(): Socket {
    return this.sock;
  }

  /** Unread replies and any partial line: everything that arrived and was not read. */
  get pending(): string {
    return [...this.replies.map((r) => r + '\n'), ...this.lines.map((l) => l + '\n'), this.text].join('');
  }

  write(data: string | Buffer): void {
    this.sock.write(data);
  }

  /** The next complete (possibly multi-line) reply; null when the connection closed first or nothing came in `ms`. */
  async next(ms: number): Promise<string | null> {
    const end = Date.now() + ms;
    for (;;) {
      const r = this.replies.shift();
      if (r !== undefined) return r;
      const left = end - Date.now();
      if (this.closed || left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** True once the connection is over (within `ms`). */
  async waitClosed(ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return this.closed;
  }

  /** The TLS handshake over the current connection, after the server's 220 to STARTTLS. */
  async startTls(options: ConnectionOptions, ms: number): Promise<void> {
    const plain = this.sock;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const secure = tlsConnect({ socket: plain, ...options });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`TLS handshake did not finish within ${ms} ms`)), ms);
      secure.once('secureConnect', () => {
        clearTimeout(timer);
        resolve();
      });
      secure.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    this.sock = secure;
    this.attach(secure);
  }

  /** Drops the connection at once. */
  destroy(): void {
    this.sock.destroy();
    this.onClosed(new Error('connection closed by client'));
  }

  private attach(socket: Socket | TLSSocket): void {
    // A decoder per socket so a UTF-8 sequence split across packets is not mangled.
    const decoder = new StringDecoder(this.encoding);
    socket.on('data', (chunk: Buffer) => this.onText(decoder.write(chunk)));
    socket.on('error', (e) => this.onClosed(e));
    socket.on('close', () => this.onClosed(new Error('connection closed by server')));
  }

  private onText(chunk: string): void {
    this.text += chunk;
    let nl: number;
    while ((nl = this.text.indexOf('\n')) >= 0) {
      const line = this.text.slice(0, nl).replace(/\r$/, '');
      this.text = this.text.slice(nl + 1);
      this.lines.push(line);
      // "250-" continues a multi-line reply; "250 " or a bare "250" ends it (RFC 5321 4.2.1).
      if (/^\d{3}-/.test(line)) continue;
      this.replies.push(this.lines.join('\n'));
      this.lines = [];
    }
    this.wake();
  }

  private onClosed(e: Error): void {
    if (this.closedError) return;
    this.closedError = e;
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
