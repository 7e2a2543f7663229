// The quarantine commands' backend over the running relay's admin API: the relay's own store, next hop and UCWI do the work, whatever shell the command runs in.
import type { QuarantineBackend } from '../quarantine/cli.js';
import type { MessagePreview, ReleaseOutcome } from '../quarantine/operations.js';
import type { AuditFilter, AuditPage, QuarantineFilter, QuarantinePage, QuarantineRecord } from '../quarantine/types.js';
import { QuarantineInputError } from '../quarantine/common.js';
import { AdminClient, CliError, apiError } from './admin-client.js';

const BASE = '/api/v1/quarantine';

function query(f: Record<string, unknown>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(f)) {
    if (v === undefined) continue;
    q.set(k, v instanceof Date ? v.toISOString() : v === null ? 'none' : String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

function fail(r: { status: number; body: unknown }): never {
  if (r.status === 400) throw new QuarantineInputError(apiError(r).replace(/^HTTP 400: /, ''));
  throw new CliError(`the relay answered ${apiError(r)}`);
}

export function remoteBackend(client: AdminClient): QuarantineBackend {
  const id = (s: string) => encodeURIComponent(s.trim());
  return {
    describe: `relay ${client.target.url} (${client.target.from})`,
    async list(f: QuarantineFilter) {
      const r = await client.json('GET', `${BASE}${query({ ...f })}`);
      return r.status === 200 ? (r.body as QuarantinePage) : fail(r);
    },
    async show(s) {
      const r = await client.json('GET', `${BASE}/${id(s)}`);
      if (r.status === 404) return null;
      return r.status === 200 ? (r.body as { record: QuarantineRecord; preview: MessagePreview }) : fail(r);
    },
    async download(s) {
      const stream = await client.stream(`${BASE}/${id(s)}/eml`);
      return stream ? { stream } : null;
    },
    async release(s, o): Promise<ReleaseOutcome> {
      const r = await client.json('POST', `${BASE}/${id(s)}/release`, o);
      const b = (r.body ?? {}) as Record<string, unknown>;
      if (r.status === 200) return r.body as ReleaseOutcome;
      if (r.status === 404) return { status: 'not-found', id: s };
      if (r.status === 409 && b['error'] === 'already released') return { status: 'already-released', id: s, release: (b['release'] as never) ?? null };
      if (r.status === 409) return { status: 'in-progress', id: s, claim: (b['claim'] as never) ?? null };
      if (r.status === 422) return { status: 'blocked', id: s, rescan: b['rescan'] as never };
      if (r.status === 400) return { status: 'invalid', id: s, message: String(b['error'] ?? 'invalid') };
      if (r.status === 502) return { status: 'failed', id: s, message: String(b['detail'] ?? b['error'] ?? 'failed') };
      return fail(r);
    },
    async delete(s) {
      const r = await client.json('DELETE', `${BASE}/${id(s)}`);
      if (r.status === 404) return 'not-found';
      if (r.status === 409) return 'in-progress';
      return r.status === 200 ? 'deleted' : fail(r);
    },
    async purge(days) {
      const r = await client.json('POST', `${BASE}/purge`, { olderThanDays: days });
      return r.status === 200 ? (r.body as { purged: number; olderThan: string; ids?: string[] }) : fail(r);
    },
    async audit(f: AuditFilter) {
      const r = await client.json('GET', `${BASE}/audit${query({ ...f })}`);
      return r.status === 200 ? (r.body as AuditPage) : fail(r);
    },
  };
}
