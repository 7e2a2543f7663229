// Versioned PostgreSQL migrations shared by every component that keeps state in the database (quarantine, CAS outbox).
import type { Pool, PoolClient } from 'pg';

export interface Migration {
  /** Strictly increasing per component; never edit a released migration, add a new one. */
  version: number;
  description: string;
  sql: string;
}

/**
 * Applies the component's pending migrations in order, each in its own transaction. An advisory lock
 * serialises concurrent starts: several relays booting against one database must not race to create
 * the same tables.
 */
export async function migrate(pool: Pool, component: string, migrations: readonly Migration[]): Promise<number[]> {
  const client: PoolClient = await pool.connect();
  // A checked-out client that loses its connection emits 'error'; unheard, that would crash the
  // process. The failing query rejects as well, which is what reports the problem.
  const onError = () => {};
  client.on('error', onError);
  const applied: number[] = [];
  try {
    await client.query(`SELECT pg_advisory_lock(hashtext('dlp_relay_migrations'))`);
    await client.query(`CREATE TABLE IF NOT EXISTS dlp_schema_migrations (
      component text NOT NULL,
      version integer NOT NULL,
      description text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (component, version))`);
    const { rows } = await client.query<{ version: number }>('SELECT version FROM dlp_schema_migrations WHERE component = $1', [component]);
    const done = new Set(rows.map((r) => r.version));
    for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
      if (done.has(m.version)) continue;
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query('INSERT INTO dlp_schema_migrations (component, version, description) VALUES ($1, $2, $3)', [component, m.version, m.description]);
        await client.query('COMMIT');
        applied.push(m.version);
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw err;
      }
    }
  } finally {
    await client.query(`SELECT pg_advisory_unlock(hashtext('dlp_relay_migrations'))`).catch(() => {});
    client.off('error', onError);
    client.release();
  }
  return applied;
}
