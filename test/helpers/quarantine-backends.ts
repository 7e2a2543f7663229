// Both quarantine store backends for suites that must hold for each: a fresh fs directory or a fresh PostgreSQL schema per test.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/observability/logger.js';
import { FsQuarantineStore } from '../../src/quarantine/fs-store.js';
import { PgQuarantineStore, createQuarantinePool } from '../../src/quarantine/pg-store.js';
import type { QuarantineStore } from '../../src/quarantine/types.js';
import { PG_URL, dropSchemas, freshSchema } from './pg.js';

export interface BackendHandle {
  store: QuarantineStore;
  cleanup(): Promise<void>;
}

export interface Backend {
  name: 'fs' | 'postgres';
  make(): Promise<BackendHandle>;
}

/** Schemas made by this module in this test file; drop them in afterAll with dropBackendSchemas(). */
const schemas: string[] = [];

export const backends: Backend[] = [
  {
    name: 'fs',
    async make() {
      const dir = await mkdtemp(join(tmpdir(), 'q-backend-'));
      const store = new FsQuarantineStore(join(dir, 'q'));
      await store.init();
      return { store, cleanup: () => rm(dir, { recursive: true, force: true }) };
    },
  },
  {
    name: 'postgres',
    async make() {
      const schema = await freshSchema('q_test');
      schemas.push(schema);
      const pool = createQuarantinePool(PG_URL, { options: `-c search_path=${schema}`, max: 4 });
      const store = new PgQuarantineStore(pool, { logger: silentLogger() });
      await store.init();
      return {
        store,
        cleanup: async () => {
          await store.close();
          await pool.end();
        },
      };
    },
  },
];

export async function dropBackendSchemas(): Promise<void> {
  await dropSchemas(schemas.splice(0));
}
