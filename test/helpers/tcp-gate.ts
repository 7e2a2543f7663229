// A loopback TCP forwarder that can be shut (connections refused, open ones cut) and reopened on the same port: "UCWI refused" and "next hop refused" that a retry can then get through.
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpGate {
  /** The port clients use; stays the same across refuse()/open(). */
  port: number;
  /** Where accepted connections are forwarded (127.0.0.1); may be set after start. */
  target: number;
  /** Stops listening and cuts every forwarded connection: new connections get ECONNREFUSED. */
  refuse(): Promise<void>;
  /** Listens again on the same port. */
  open(): Promise<void>;
  /** The first bytes (up to 64 KiB) each connection sent towards the target, when started with capture. */
  captured(): Buffer[];
  close(): Promise<void>;
}

const CAPTURE_CAP = 64 * 1024;

export async function startTcpGate(target: number, opts: { capture?: boolean } = {}): Promise<TcpGate> {
  const live = new Set<Socket>();
  const captures: Buffer[][] = [];
  let server: Server | null = null;
  let port = 0;

  const onConnection = (client: Socket): void => {
    const upstream = connect({ host: '127.0.0.1', port: gate.target });
    live.add(client);
    live.add(upstream);
    const chunks: Buffer[] = [];
    let captured = 0;
    if (opts.capture) captures.push(chunks);
    client.on('data', (c: Buffer) => {
      if (opts.capture && captured < CAPTURE_CAP) {
        chunks.push(c.subarray(0, CAPTURE_CAP - captured));
        captured += c.length;
      }
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const cut = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cut);
    upstream.on('error', cut);
    client.on('close', () => {
      live.delete(client);
      upstream.destroy();
    });
    upstream.on('close', () => {
      live.delete(upstream);
      client.destroy();
    });
  };

  const listen = (p: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const s = createServer(onConnection);
      s.once('error', reject);
      s.listen(p, '127.0.0.1', () => {
        s.off('error', reject);
        server = s;
        port = (s.address() as { port: number }).port;
        resolve();
      });
    });

  const stop = (): Promise<void> =>
    new Promise<void>((resolve) => {
      for (const s of live) s.destroy();
      live.clear();
      if (!server) return resolve();
      const s = server;
      server = null;
      s.close(() => resolve());
    });

  const gate: TcpGate = {
    port: 0,
    target,
    refuse: stop,
    open: () => (server ? Promise.resolve() : listen(port)),
    captured: () => captures.map((c) => Buffer.concat(c)),
    close: stop,
  };
  await listen(0);
  gate.port = port;
  return gate;
}
