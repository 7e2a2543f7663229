// The UCWI simulator's fault knobs: what a test may switch on, their validation, and how they bend an answer of the email endpoint.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { sendError, sendJson, sendRaw } from './wire.js';

/** What a 200 answer's body looks like on the wire. */
export type UcwiBodyMode = 'normal' | 'garbage' | 'truncated' | 'empty' | 'no_action' | 'unknown_action';

export interface UcwiFaults {
  /**
   * Response time in milliseconds, counted from the request's arrival: the answer goes out no sooner
   * than this, and the upload and the scan count toward it (a DLP server "with 200 ms latency" answers
   * in 200 ms, not 200 ms plus its own scan). A scan that takes longer answers when it is done.
   */
  latencyMs: number;
  /** Answer this HTTP status with the UCWI error envelope instead of the real answer; null = off. */
  status: number | null;
  /** Corrupt a 200 answer: non-JSON text, JSON cut in the middle, no body, no actionCode, actionCode 42. */
  body: UcwiBodyMode;
  /** Answer this actionCode whatever the scan found; null = off. */
  forceActionCode: number | null;
  /** Destroy the socket instead of answering. */
  dropConnection: boolean;
}

export const NO_FAULTS: Readonly<UcwiFaults> = { latencyMs: 0, status: null, body: 'normal', forceActionCode: null, dropConnection: false };

const faultsSchema = z
  .strictObject({
    latencyMs: z.number().min(0),
    status: z.int().min(200).max(599).nullable(),
    body: z.enum(['normal', 'garbage', 'truncated', 'empty', 'no_action', 'unknown_action']),
    forceActionCode: z.int().nullable(),
    dropConnection: z.boolean(),
  })
  .partial();

/** The knobs a test asked for, checked; throws naming every bad one. */
export function validFaults(f: Partial<UcwiFaults>): Partial<UcwiFaults> {
  const r = faultsSchema.safeParse(f);
  if (!r.success) throw new Error(`invalid UCWI simulator faults: ${z.prettifyError(r.error)}`);
  return r.data;
}

/** Pending latency waits, released by close() so no handler outlives the server. */
export class LatencyWaits {
  private readonly waits = new Map<NodeJS.Timeout, () => void>();

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.waits.delete(t);
        resolve();
      }, ms);
      this.waits.set(t, resolve);
    });
  }

  releaseAll(): void {
    for (const [t, wake] of this.waits) {
      clearTimeout(t);
      wake();
    }
    this.waits.clear();
  }
}

/** Applies the fault knobs to an answer of the email endpoint, then sends it. */
export async function deliver(
  req: IncomingMessage,
  res: ServerResponse,
  f: UcwiFaults & { arrivedAt: number },
  status: number,
  body: Record<string, unknown>,
  waits: LatencyWaits,
): Promise<void> {
  const wait = f.latencyMs - (performance.now() - f.arrivedAt);
  if (wait >= 1) await waits.sleep(wait);
  // The client may have given up (its own timeout) or close() may have ended the connection meanwhile.
  if (res.destroyed || res.headersSent || req.socket.destroyed) return;
  if (f.dropConnection) {
    req.socket.destroy();
    return;
  }
  if (f.status !== null) return sendError(res, f.status);
  if (status !== 200) return sendJson(res, status, body);
  const out = { ...body };
  if ('actionCode' in out) {
    if (f.forceActionCode !== null) out['actionCode'] = f.forceActionCode;
    if (f.body === 'no_action') delete out['actionCode'];
    if (f.body === 'unknown_action') out['actionCode'] = 42;
  }
  const text = JSON.stringify(out);
  switch (f.body) {
    case 'garbage':
      // Still labelled JSON: the client must not trust the content type.
      return sendRaw(res, 200, 'application/json; charset=utf-8', '<html><body>502 Bad Gateway (ucwi-sim garbage)</body></html>');
    case 'truncated':
      // A JSON text cut in half, with a Content-Length that matches the cut text: only parsing can tell.
      return sendRaw(res, 200, 'application/json; charset=utf-8', text.slice(0, Math.floor(text.length / 2)));
    case 'empty':
      return sendRaw(res, 200, 'application/json; charset=utf-8', '');
    default:
      return sendRaw(res, 200, 'application/json; charset=utf-8', text);
  }
}
