// Temporary directories that remove themselves when the test that made them ends, so `npm test` leaves nothing in the temp dir.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';

/**
 * mkdtemp under the OS temp dir, removed after the current test (after its afterEach hooks, so a relay closed
 * there has let go of its files). Call it inside a test, not at module or describe level.
 */
export function testTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
