// The pino root logger: JSON lines (or readable text lines), secrets redacted by path, children carry {cid} per SMTP session and {queryId} per message; the level can change at run time (reload).
import { pino, type Logger, type LoggerOptions } from 'pino';
import { maskSecrets } from '../util/mask.js';

export type { Logger } from 'pino';

/** Field paths that may hold secrets anywhere in a logged object; pino replaces them before serialising. */
export const REDACT_PATHS = [
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'secretKey',
  '*.secretKey',
  'accessKey',
  '*.accessKey',
  'password',
  '*.password',
  'pass',
  '*.pass',
  'token',
  '*.token',
  '*.*.secretKey',
  '*.*.token',
  '*.*.pass',
];

export interface LoggerSettings {
  level: string;
  /** json (default) or text: one readable line per event, for a terminal. */
  format?: 'json' | 'text';
  /** Where lines go; a file descriptor number or a writable stream (tests capture logs this way). */
  destination?: NodeJS.WritableStream | number;
}

/** Children of each root logger, weakly held: a reload changes their level too (pino copies the level at child()). */
const families = new WeakMap<Logger, Set<WeakRef<Logger>>>();

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const TEXT_SKIP = new Set(['level', 'time', 'msg', 'service', 'pid', 'hostname', 'component']);

/** One JSON line as "TIME LEVEL [component] msg key=value ...": what an admin reads in a terminal or journalctl. */
export function jsonLineToText(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const parts = [String(o['time'] ?? ''), (LEVEL_NAMES[Number(o['level'])] ?? String(o['level'])).padEnd(5)];
  if (o['component']) parts.push(`[${String(o['component'])}]`);
  parts.push(String(o['msg'] ?? ''));
  for (const [k, v] of Object.entries(o)) {
    if (TEXT_SKIP.has(k) || v === undefined) continue;
    const text = typeof v === 'string' ? (/[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v) : JSON.stringify(v);
    parts.push(`${k}=${text}`);
  }
  return parts.join(' ') + '\n';
}

export function createLogger(settings: LoggerSettings): Logger {
  const children = new Set<WeakRef<Logger>>();
  let added = 0;
  const options: LoggerOptions = {
    level: settings.level,
    base: { service: 'dlp-relay' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    // Redaction works by field name; these catch a secret inside text: a message or an error quoting a URL with a password.
    hooks: {
      logMethod(args, method) {
        for (let i = 0; i < args.length; i++) if (typeof args[i] === 'string') args[i] = maskSecrets(args[i] as string);
        method.apply(this, args);
      },
    },
    serializers: {
      err: (e: unknown): unknown => {
        if (typeof e === 'string') return maskSecrets(e);
        if (!e || typeof e !== 'object' || Object.isFrozen(e)) return e;
        const o = pino.stdSerializers.err(e as Error);
        if ((o as unknown) === e) return o; // not error-like: pino passes it through, and so do we (never mutate the caller's object)
        if (typeof o.message === 'string') o.message = maskSecrets(o.message);
        if (o.stack) o.stack = maskSecrets(o.stack);
        return o;
      },
    },
    timestamp: pino.stdTimeFunctions.isoTime,
    onChild: (child) => {
      children.add(new WeakRef(child));
      // Children made per message would pile up: sweep collected ones now and then.
      if (++added % 1000 === 0) for (const r of children) if (!r.deref()) children.delete(r);
    },
  };
  const dest = settings.destination ?? 1;
  // Synchronous on purpose: the summary line is written before the client hears its reply, so a relay killed
  // (SIGKILL, OOM) right after a 250 still has the line on record; an async buffer would lose the last lines.
  let stream: pino.DestinationStream = typeof dest === 'number' ? pino.destination({ dest, sync: true }) : dest;
  if (settings.format === 'text') {
    const inner = stream as pino.DestinationStream & { flush?: (cb?: (err?: Error) => void) => void };
    stream = {
      write: (line: string) => inner.write(jsonLineToText(line)),
      ...(inner.flush ? { flush: (cb?: (err?: Error) => void) => inner.flush!(cb) } : {}),
    };
  }
  const root = pino(options, stream);
  families.set(root, children);
  return root;
}

/** Changes the level of a logger made by createLogger and of every child it has made (SIGHUP reload). */
export function setLogLevel(root: Logger, level: string): void {
  root.level = level;
  for (const r of families.get(root) ?? []) {
    const child = r.deref();
    if (child) child.level = level;
  }
}

/** A logger that drops everything: for library use and tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
