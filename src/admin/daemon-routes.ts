// Admin API for operating the running relay: /api/v1/status, /api/v1/reload, and the CAS outbox (list, retry) that the CLI reaches through the relay instead of opening the journal itself.
import { HttpError, type AdminServer } from './server.js';
import type { ReadyReport } from '../observability/health.js';
import type { ReloadReport } from '../reload.js';
import type { CasOutbox } from '../cas/outbox.js';
import type { OutageState } from '../observability/outage.js';

export interface StatusReport {
  version: string;
  pid: number;
  startedAt: string;
  uptimeS: number;
  /** The config file in force, or null for the built-in defaults. */
  configFile: string | null;
  draining: boolean;
  /** Open SMTP sessions (null in a cluster supervisor: the workers hold them). */
  sessions: number | null;
  ucwi: { url: string; inFlight: number; waiting: number; outage: OutageState | null };
  readiness: ReadyReport;
  /** Held quarantined messages (null when the store cannot be read right now). */
  held: number | null;
  casOutbox: { pending: number; failed: number; done: number } | null;
  lastReload: ReloadReport | null;
}

export interface DaemonRouteDeps {
  status(): Promise<StatusReport>;
  /** null when this process cannot reload (no loader given). */
  reload: ((trigger: string) => Promise<ReloadReport>) | null;
  /** The live CAS outbox, or null when CAS is off. */
  casOutbox(): CasOutbox | null;
}

export function registerDaemonRoutes(server: AdminServer, deps: DaemonRouteDeps): void {
  const auth = { auth: true };
  server.addRoute('GET', '/api/v1/status', async () => ({ status: 200, json: await deps.status() }), auth);
  server.addRoute(
    'POST',
    '/api/v1/reload',
    async () => {
      if (!deps.reload) throw new HttpError(501, 'this process cannot reload its configuration');
      const r = await deps.reload('admin-api');
      // 422: the new file is wrong; the relay keeps running on the old one.
      return { status: r.ok ? 200 : 422, json: r };
    },
    auth,
  );
  const outbox = (): CasOutbox => {
    const o = deps.casOutbox();
    if (!o) throw new HttpError(404, 'CAS is not enabled on this relay');
    return o;
  };
  server.addRoute(
    'GET',
    '/api/v1/cas/outbox',
    async (req) => {
      const o = outbox();
      const limit = Math.min(Math.max(Number(req.query.get('limit') ?? 1000) || 1000, 1), 10_000);
      const [stats, entries] = await Promise.all([o.stats(), o.list({ statuses: ['pending', 'inflight', 'failed'], limit })]);
      return { status: 200, json: { stats, entries } };
    },
    auth,
  );
  server.addRoute('POST', '/api/v1/cas/outbox/retry', async () => ({ status: 200, json: { retried: await outbox().retryFailed() } }), auth);
}
