// Quarantine-specific failures, so callers (relay, admin API, CLI) can tell "no such message" from "store unreachable" without parsing messages.

import { DlpError } from '../errors.js';

/** The id is unknown, or not even a well-formed id: both look the same from outside so ids never turn into paths or probes. */
export class QuarantineNotFoundError extends DlpError {
  readonly errorCode = 'DLP_ERR_QUARANTINE_NOT_FOUND' as const;
  readonly id: string;
  constructor(id: string) {
    super('no quarantined message with this id');
    this.name = 'QuarantineNotFoundError';
    this.id = id;
  }
}

/**
 * The backend cannot be reached or does not answer in time (database down, pool exhausted, timeout).
 * The relay maps it to 451 on new quarantines and the admin API to 503; the cause keeps the details for the log.
 */
export class QuarantineUnavailableError extends DlpError {
  readonly errorCode = 'DLP_ERR_QUARANTINE_UNAVAILABLE' as const;
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'QuarantineUnavailableError';
  }
}

export function isNotFound(err: unknown): err is QuarantineNotFoundError {
  return err instanceof QuarantineNotFoundError;
}

export function isUnavailable(err: unknown): err is QuarantineUnavailableError {
  return err instanceof QuarantineUnavailableError;
}
