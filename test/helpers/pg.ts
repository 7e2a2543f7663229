// PostgreSQL helpers for tests: a throwaway schema per test file, and a TCP proxy that can cut the database off mid-run.
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const PG_URL = process.env['DLP_RELAY_TEST_PG_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';

export async function pgAdmin<T>(fn: (c: pg.Client) => Promise<T>, url = PG_URL): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Creates `<prefix>_<random>`; drop it with dropSchemas in afterAll. */
export async function freshSchema(prefix = 'q_test'): Promise<string> {
  const schema = `${prefix}_${randomBytes(6).toString('hex')}`;
  await pgAdmin((c) => c.query(`CREATE SCHEMA ${schema}`));
  return schema;
}

export async function dropSchemas(schemas: string[]): Promise<void> {
  if (schemas.length) await pgAdmin((c) => c.query(`DROP SCHEMA IF EXISTS ${schemas.join(', ')} CASCADE`));
}

/** A connection URL whose sessions use `schema` (libpq `options`), optionally through a proxy port. */
export function schemaUrl(schema: string, port = 5432): string {
  return `postgres://postgres@127.0.0.1:${port}/test?options=${encodeURIComponent(`-c search_path=${schema}`)}`;
}

/** A TCP proxy in front of PostgreSQL that a test can black-hole or shut, to play "database gone". */
export class PgProxy {
  mode: 'forward' | 'blackhole' = 'forward';
  private readonly sockets = new Set<net.Socket>();
  readonly server = net.createServer((client) => {
    this.track(client);
    if (this.mode === 'blackhole') {
      client.on('data', () => {}); // accept, never answer
      return;
    }
    const upstream = this.track(net.connect(5432, '127.0.0.1'));
    client.on('data', (d) => {
      if (this.mode === 'forward') upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (this.mode === 'forward') client.write(d);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  private track(s: net.Socket): net.Socket {
    this.sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => this.sockets.delete(s));
    return s;
  }
  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as net.AddressInfo).port;
  }
  /** Cuts every connection now and refuses new ones. */
  async close(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}
