// Reloader: a setting that needs a restart stays reported until the process restarts or the value goes back, however many reloads come in between.
import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { Reloader } from '../../src/reload.js';
import type { FrozenConfig } from '../../src/config/load.js';

const cfg = (port: number, level = 'info'): FrozenConfig =>
  loadConfig({ file: '/dev/null', env: {}, overrides: { nextHop: { host: '127.0.0.1', port }, log: { level } } });
const quiet = createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) });

describe('Reloader', () => {
  it('keeps naming a restart-only change on later reloads until the value is back', async () => {
    let next = cfg(2526);
    const applied: string[][] = [];
    const r = new Reloader(cfg(2526), () => next, { apply: async (_n, _p, changed) => (applied.push([...changed]), []) }, quiet);
    next = cfg(2527);
    expect((await r.reload('test')).restartNeeded).toEqual(['nextHop.port']);
    // A second reload with nothing new must not report "no changes" while the restart is still pending.
    next = cfg(2527, 'debug');
    const second = await r.reload('test');
    expect(second.applied).toEqual(['log.level']);
    expect(second.restartNeeded).toEqual(['nextHop.port']);
    next = cfg(2526, 'debug');
    expect((await r.reload('test')).restartNeeded).toEqual([]);
    expect(applied).toEqual([['nextHop.port'], ['log.level'], ['nextHop.port']]);
  });
});
