// The pino root logger: JSON lines, secrets redacted by path, children carry {cid} per SMTP session and {queryId} per message.
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
  /** Where JSON lines go; a file descriptor number or a writable stream (tests capture logs this way). */
  destination?: NodeJS.WritableStream | number;
}

export function createLogger(settings: LoggerSettings): Logger {
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
  };
  const dest = settings.destination ?? 1;
  return typeof dest === 'number' ? pino(options, pino.destination({ dest, sync: false })) : pino(options, dest as pino.DestinationStream);
}

/** A logger that drops everything: for library use and tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
