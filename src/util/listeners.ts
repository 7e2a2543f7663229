// Named listeners: bind errors that say which listener and address, and a check that the ports are free before start-up touches any store.
import { createServer } from 'node:net';

/** EADDRINUSE and friends name the listener and address, so an admin knows which port to look at. */
export function listenError(name: string, host: string, port: number, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  const why =
    code === 'EADDRINUSE'
      ? 'address already in use (another process listens there)'
      : code === 'EACCES'
        ? 'permission denied (ports below 1024 need privileges)'
        : (err as Error).message;
  return new Error(`cannot listen for ${name} on ${host}:${port}: ${why}${code ? ` [${code}]` : ''}`, { cause: err });
}

export async function listenNamed<T>(name: string, host: string, port: number, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (err) {
    throw listenError(name, host, port, err);
  }
}

export interface PlannedListener {
  name: string;
  host: string;
  port: number;
}

/**
 * Binds each fixed port for a moment and lets it go, throwing the named error of the first one that is taken.
 * Run before start-up recovery and retention: a second `serve` with the same configuration must fail here,
 * not after it has swept the live relay's spool and outbox (whose fresh files look exactly like a crash's).
 * Binding the real listeners first instead would let sessions in before recovery ran. Port 0 is always free.
 * A port taken between this check and the real bind still fails there, with the same message.
 */
export async function ensurePortsFree(listeners: readonly PlannedListener[]): Promise<void> {
  for (const l of listeners) {
    if (l.port === 0) continue;
    await new Promise<void>((resolve, reject) => {
      const probe = createServer();
      probe.once('error', (err) => reject(listenError(l.name, l.host, l.port, err)));
      // exclusive: never a handle shared through a cluster primary; the bind must really be tried here.
      probe.listen({ host: l.host, port: l.port, exclusive: true }, () => probe.close(() => resolve()));
    });
  }
}
