// Operational endpoints on the admin listener: /healthz (process up), /readyz (dependencies reachable), /metrics (Prometheus, token required).
import type { AdminServer } from './server.js';
import type { ReadyReport } from '../observability/health.js';
import type { MetricsRenderer } from '../observability/metrics.js';

export function registerOpsRoutes(
  server: AdminServer,
  deps: { metrics: MetricsRenderer; readiness: () => Promise<ReadyReport>; draining: () => boolean },
): void {
  // Open on purpose: container health checks and load balancers carry no token, and these say only up/down.
  server.addRoute('GET', '/healthz', () => ({ status: 200, json: { status: 'ok' } }), { auth: false });
  server.addRoute(
    'GET',
    '/readyz',
    async () => {
      if (deps.draining()) return { status: 503, json: { ready: false, draining: true } };
      const r = await deps.readiness();
      return { status: r.ready ? 200 : 503, json: r };
    },
    { auth: false },
  );
  server.addRoute(
    'GET',
    '/metrics',
    async () => {
      const m = await deps.metrics.render();
      return { status: 200, text: m.body, headers: { 'content-type': m.contentType } };
    },
    { auth: true },
  );
}
