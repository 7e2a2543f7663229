// The reply catalogue and the error family: every reply the relay makes, and every error code with its SMTP/HTTP/CLI mapping.

/** One SMTP reply: basic code, enhanced status code (RFC 3463) and the text the client sees. */
export interface SmtpReply {
  code: number;
  enhanced: string;
  text: string;
}

export function formatReply(r: SmtpReply): string {
  return `${r.code} ${r.enhanced} ${r.text}`;
}

export type ReplyClass = '2xx' | '4xx' | '5xx';
export function replyClass(code: number): ReplyClass {
  return code >= 500 ? '5xx' : code >= 400 ? '4xx' : '2xx';
}

/**
 * Stable codes for our own failures. The rule behind the table: only a policy decision or the next
 * hop's own 5xx may yield 5xx; everything that is our fault (or our dependencies') is 4xx so the
 * sending MTA keeps the message and retries. Texts never carry internals (Postfix keeps its proxy
 * errors vague for the same reason); the log carries the details.
 */
export const CATALOGUE = {
  /** Client address not in the allowed networks: we are never an open relay. */
  CLIENT_NOT_ALLOWED: { code: 554, enhanced: '5.7.1', text: 'Access denied: client host is not allowed to relay' },
  /** Too many concurrent sessions: try again later (Postfix "stop accepting mail" under load). */
  SATURATED: { code: 421, enhanced: '4.3.2', text: 'Too many connections, try again later' },
  SHUTTING_DOWN: { code: 421, enhanced: '4.3.2', text: 'Service shutting down, try again later' },
  /** Declared (MAIL FROM SIZE=) or actual size over the limit; permanent, the message will not shrink. */
  SIZE_EXCEEDED: { code: 552, enhanced: '5.3.4', text: 'Message size exceeds fixed maximum message size' },
  TOO_MANY_RECIPIENTS: { code: 452, enhanced: '4.5.3', text: 'Too many recipients' },
  /** STARTTLS required by configuration but not yet done. */
  TLS_REQUIRED: { code: 530, enhanced: '5.7.0', text: 'Must issue a STARTTLS command first' },
  AUTH_REQUIRED: { code: 530, enhanced: '5.7.0', text: 'Authentication required' },
  /** Writing the spool file failed (disk full, permissions): the client keeps the message. */
  SPOOL_FAILED: { code: 451, enhanced: '4.3.0', text: 'Local error in processing, try again later' },
  /** The spool disk is full (ENOSPC, quota): answered once the rest of DATA is read, and the session goes on. */
  SPOOL_FULL: { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage, try again later' },
  /** UCWI could not give a verdict and policy says tempfail. */
  DLP_UNAVAILABLE: { code: 451, enhanced: '4.7.1', text: 'Content inspection unavailable, try again later' },
  /** The end-of-DATA budget ran out before a verdict and a next-hop answer: never a late 250. */
  DEADLINE_EXCEEDED: { code: 451, enhanced: '4.4.7', text: 'Processing deadline exceeded, try again later' },
  /** Quarantine store unwritable: we must not answer 250 for a message we could not keep. */
  QUARANTINE_FAILED: { code: 451, enhanced: '4.3.0', text: 'Quarantine storage unavailable, try again later' },
  /** Local outbox (no next hop configured) unwritable. */
  OUTBOX_FAILED: { code: 451, enhanced: '4.3.0', text: 'Local delivery failed, try again later' },
  /** The next hop could not be reached or timed out. */
  NEXT_HOP_UNAVAILABLE: { code: 451, enhanced: '4.4.1', text: 'Next hop unavailable, try again later' },
  /** The connection to the next hop broke during the transaction. */
  NEXT_HOP_LOST: { code: 451, enhanced: '4.4.2', text: 'Connection to next hop lost, try again later' },
  /** The next hop answered 4xx: we pass on a tempfail of our own (its text goes to the log). */
  NEXT_HOP_TEMPFAIL: { code: 451, enhanced: '4.4.0', text: 'Next hop deferred the message, try again later' },
  /** Every next-hop connection is busy with other transactions and none came free in time. */
  NEXT_HOP_BUSY: { code: 451, enhanced: '4.3.2', text: 'All next-hop connections busy, try again later' },
  /** Anything unexpected: tempfail, never a 5xx by accident (smtp-server's own default is 450). */
  INTERNAL: { code: 451, enhanced: '4.3.0', text: 'Local error in processing, try again later' },

  // SMTP protocol replies: everything the engine in src/smtp/ says on its own. An empty `enhanced` marks the
  // replies RFC 2034 gives no enhanced code (3xx intermediates); the greeting and EHLO/HELO 250 are built there.
  SMTP_OK: { code: 250, enhanced: '2.0.0', text: 'Ok' },
  MAIL_OK: { code: 250, enhanced: '2.1.0', text: 'Ok' },
  RCPT_OK: { code: 250, enhanced: '2.1.5', text: 'Ok' },
  QUIT: { code: 221, enhanced: '2.0.0', text: 'Bye' },
  HELP: { code: 214, enhanced: '2.0.0', text: 'See RFC 5321' },
  /** RFC 5321 3.5.3: 252 when we will not verify, never a 250 without checking. */
  VRFY: { code: 252, enhanced: '2.5.0', text: 'Cannot VRFY user, but will accept message and attempt delivery' },
  EXPN: { code: 502, enhanced: '5.5.1', text: 'EXPN not supported' },
  DATA_GO: { code: 354, enhanced: '', text: 'End data with <CR><LF>.<CR><LF>' },
  STARTTLS_GO: { code: 220, enhanced: '2.0.0', text: 'Ready to start TLS' },
  SYNTAX: { code: 501, enhanced: '5.5.4', text: 'Syntax error in parameters or arguments' },
  BAD_SEQUENCE: { code: 503, enhanced: '5.5.1', text: 'Bad sequence of commands' },
  UNKNOWN_COMMAND: { code: 500, enhanced: '5.5.2', text: 'Command unrecognized' },
  LINE_TOO_LONG: { code: 500, enhanced: '5.5.6', text: 'Line too long' },
  /** Command line with a bare LF, a CR or a NUL: strict parsing closes the door to smuggling tricks. */
  BAD_LINE: { code: 500, enhanced: '5.5.2', text: 'Command lines must end in <CR><LF> and hold no CR or NUL' },
  NO_VALID_RECIPIENTS: { code: 554, enhanced: '5.5.1', text: 'No valid recipients' },
  BAD_ADDRESS: { code: 501, enhanced: '5.1.3', text: 'Bad address syntax' },
  PATH_TOO_LONG: { code: 501, enhanced: '5.1.3', text: 'Path too long' },
  UTF8_ADDRESS: { code: 553, enhanced: '5.6.7', text: 'Must declare SMTPUTF8 to send unicode address' },
  PARAM_UNKNOWN: { code: 555, enhanced: '5.5.4', text: 'Unsupported parameter' },
  PARAM_SYNTAX: { code: 501, enhanced: '5.5.4', text: 'Bad parameter syntax' },
  IDLE_TIMEOUT: { code: 421, enhanced: '4.4.2', text: 'Idle timeout, closing connection' },
  SLOW_CLIENT: { code: 421, enhanced: '4.4.2', text: 'Client too slow, closing connection' },
  SESSION_TIMEOUT: { code: 421, enhanced: '4.4.2', text: 'Session time limit exceeded, closing connection' },
  /** Talked before a delayed greeting: a spambot's habit (Postfix postscreen "pregreet"). */
  EARLY_TALKER: { code: 554, enhanced: '5.5.0', text: 'Protocol error: client sent data before the greeting' },
  /** The connect handler failed, or the session met an unexpected error: close with a tempfail, never a 5xx. */
  SESSION_FAILED: { code: 421, enhanced: '4.3.0', text: 'Local error, try again later' },
  TLS_NOT_AVAILABLE: { code: 454, enhanced: '4.7.0', text: 'TLS not available' },
  AUTH_CONTINUE: { code: 334, enhanced: '', text: '' },
  AUTH_USERNAME: { code: 334, enhanced: '', text: 'VXNlcm5hbWU6' },
  AUTH_PASSWORD: { code: 334, enhanced: '', text: 'UGFzc3dvcmQ6' },
  AUTH_OK: { code: 235, enhanced: '2.7.0', text: 'Authentication successful' },
  AUTH_FAILED: { code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid' },
  AUTH_NEEDS_TLS: { code: 538, enhanced: '5.7.11', text: 'Encryption required for requested authentication mechanism' },
  AUTH_MECHANISM: { code: 504, enhanced: '5.5.4', text: 'Unrecognized authentication type' },
  AUTH_CANCELLED: { code: 501, enhanced: '5.0.0', text: 'Authentication cancelled' },
  AUTH_BAD_RESPONSE: { code: 501, enhanced: '5.5.2', text: 'Cannot decode authentication response' },
  AUTH_TOO_MANY_FAILURES: { code: 421, enhanced: '4.7.0', text: 'Too many failed authentication attempts, closing connection' },
  /** Policy reject default code; the text comes from config policy.rejectText (or the action's own text). */
  POLICY_REJECT: { code: 550, enhanced: '5.7.1', text: 'Message rejected by data-loss-prevention policy' },
  /** Policy quarantine: accepted and held; the text comes from config policy.quarantineText. */
  QUARANTINED: { code: 250, enhanced: '2.0.0', text: 'Ok: message held for review' },
  /** No next hop configured: the message went to the local outbox directory. */
  OUTBOX_STORED: { code: 250, enhanced: '2.0.0', text: 'Ok: stored in local outbox' },
  BARE_LINE_ENDING: { code: 550, enhanced: '5.5.2', text: 'Message contains bare <CR> or <LF>' },
  DATA_LINE_TOO_LONG: { code: 552, enhanced: '5.3.4', text: 'Message contains a line longer than the maximum line length' },
} as const satisfies Record<string, SmtpReply>;

export type ErrorCode = keyof typeof CATALOGUE;

/** What one stable error code becomes on each surface, and what it means. */
export interface ErrorCodeRow {
  reply: ErrorCode;
  http: number;
  exit: 0 | 1 | 2;
  what: string;
}

/** A row: an unexpected error's 451 INTERNAL, HTTP 500 and exit 1, except where `differs` says otherwise. */
function codeRow(what: string, differs: Partial<Omit<ErrorCodeRow, 'what'>> = {}): ErrorCodeRow {
  return { reply: 'INTERNAL', http: 500, exit: 1, ...differs, what };
}

/** The next hop failed us: 451 NEXT_HOP_UNAVAILABLE on SMTP, 502 Bad Gateway on the admin API. */
const NEXT_HOP_DOWN = { reply: 'NEXT_HOP_UNAVAILABLE', http: 502 } as const;

/**
 * Stable error codes (like fastify's FST_ERR_*): every error class of ours carries one, and this one table says
 * what each becomes on every surface: the SMTP reply (a CATALOGUE key; `(ref …)` is added by the caller), the
 * admin API's HTTP status and the CLI's exit code (0 ok, 1 failure, 2 bad input). Codes never change meaning;
 * new failures get a new row. Anything unknown is DLP_ERR_INTERNAL: 451 4.3.0, never a 5xx by accident.
 * Each row gives what the code means and only where it differs from DLP_ERR_INTERNAL's reply, status and exit code.
 */
export const ERROR_CODES = {
  DLP_ERR_INTERNAL: codeRow('unexpected error (bug or unknown failure)'),
  DLP_ERR_CONFIG: codeRow('configuration invalid (config/load.ts ConfigError)'),
  DLP_ERR_CLI: codeRow('admin CLI call failed; the instance may carry its own exit code (CliError)'),
  DLP_ERR_USAGE: codeRow('bad command line or option value (quarantine/cli.ts BadInput; cli/send.ts UsageError after the merge)', { http: 400, exit: 2 }),
  DLP_ERR_HTTP: codeRow('admin API answer other than 200; the instance carries its status (HttpError)'),
  DLP_ERR_DEADLINE: codeRow('end-of-DATA budget ran out (RelayError)', { reply: 'DEADLINE_EXCEEDED', http: 504 }),
  DLP_ERR_NEXT_HOP: codeRow('next-hop delivery failed; its own 5xx passes through (DeliveryError)', NEXT_HOP_DOWN),
  DLP_ERR_SMTP_CLIENT: codeRow('SMTP client connection/protocol failure (SmtpClientError)', NEXT_HOP_DOWN),
  DLP_ERR_REPLY_SYNTAX: codeRow('malformed SMTP reply from a server (ReplySyntaxError)', NEXT_HOP_DOWN),
  DLP_ERR_SESSION_ENDED: codeRow('SMTP session over while a handler waited (SessionEnded)', { reply: 'SESSION_FAILED' }),
  DLP_ERR_DATA_PHASE: codeRow('DATA phase broken; the instance carries the exact reply (DataPhaseError)'),
  DLP_ERR_CAS: codeRow('CAS API call failed (CasError)', { http: 502 }),
  DLP_ERR_CAS_POLL_TIMEOUT: codeRow('CAS results not final in time (CasPollTimeoutError)', { http: 504 }),
  DLP_ERR_QUARANTINE_INPUT: codeRow('bad quarantine filter or cursor (QuarantineInputError)', { http: 400, exit: 2 }),
  DLP_ERR_QUARANTINE_NOT_FOUND: codeRow('unknown quarantine id (QuarantineNotFoundError)', { http: 404 }),
  DLP_ERR_QUARANTINE_UNAVAILABLE: codeRow('quarantine store unreachable (QuarantineUnavailableError)', { reply: 'QUARANTINE_FAILED', http: 503 }),
} as const satisfies Record<string, ErrorCodeRow>;

export type DlpErrorCode = keyof typeof ERROR_CODES;

/**
 * Base of every error class of ours. Subclasses only declare `readonly errorCode = 'DLP_ERR_…' as const`; the
 * property is not called `code` because Node (ENOENT), pg (08006), CAS and SMTP errors already use that name.
 */
export abstract class DlpError extends Error {
  abstract readonly errorCode: DlpErrorCode;
}

export function errorCodeOf(err: unknown): DlpErrorCode {
  return err instanceof DlpError ? err.errorCode : 'DLP_ERR_INTERNAL';
}

/** The SMTP reply an error stands for (DataPhaseError carries its own; next-hop 5xx goes through nextHopFailureReply). */
export function smtpReplyFor(err: unknown, ref?: string): SmtpReply {
  if (err instanceof DlpError && 'reply' in err && isSmtpReply(err.reply)) return { ...err.reply };
  return catalogueReply(ERROR_CODES[errorCodeOf(err)].reply, ref);
}

/** HTTP status for the admin API; an instance with its own numeric `status` (HttpError) keeps it. */
export function httpStatusFor(err: unknown): number {
  if (err instanceof DlpError && 'status' in err && typeof err.status === 'number' && err.status >= 400) return err.status;
  return ERROR_CODES[errorCodeOf(err)].http;
}

/** CLI exit code; an instance with its own numeric `exitCode` (CliError) keeps it. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof DlpError && 'exitCode' in err && typeof err.exitCode === 'number') return err.exitCode;
  return ERROR_CODES[errorCodeOf(err)].exit;
}

function isSmtpReply(v: unknown): v is SmtpReply {
  return typeof v === 'object' && v !== null && typeof (v as SmtpReply).code === 'number' && typeof (v as SmtpReply).text === 'string';
}

/** Abort reason of a pipeline that ran out of its end-of-DATA budget: knows its catalogue entry. */
export class RelayError extends DlpError {
  readonly errorCode = 'DLP_ERR_DEADLINE' as const;
  readonly reply: SmtpReply;
  constructor(code: ErrorCode, opts?: { cause?: unknown }) {
    const reply = CATALOGUE[code];
    super(`${reply.enhanced} ${reply.text}`, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RelayError';
    this.reply = reply;
  }
}

/** Reply for a catalogue entry, optionally with a reference (queryID) appended for the sender's help desk. */
export function catalogueReply(code: ErrorCode, ref?: string): SmtpReply {
  const base = CATALOGUE[code];
  return ref ? { ...base, text: `${base.text} (ref ${ref})` } : { ...base };
}

/** What the catalogue needs to know of a failed next-hop delivery (egress/next-hop-errors.ts DeliveryError has these). */
export interface NextHopFailure {
  kind: 'permanent' | 'transient';
  phase: string;
  code?: number | undefined;
  enhanced?: string | undefined;
  response?: string | undefined;
}

/**
 * The reply for a failed next-hop delivery: the next hop's own 5xx passes through with its code and
 * text (the only 5xx that is not a policy decision); everything else is our 451 4.4.x.
 */
export function nextHopFailureReply(f: NextHopFailure, ref: string): SmtpReply {
  if (f.kind === 'permanent' && f.code !== undefined && f.code >= 500 && f.code < 600) {
    const text =
      (f.response ?? '')
        .replace(/^\d{3}[ -]?/, '')
        .replace(/^[245]\.\d{1,3}\.\d{1,3}\s*/, '')
        .trim() || 'Rejected by next hop';
    return { code: f.code, enhanced: f.enhanced ?? '5.0.0', text: text.slice(0, 400) };
  }
  if (f.phase === 'pool') return catalogueReply('NEXT_HOP_BUSY', ref);
  if (f.phase === 'aborted' || f.phase === 'timeout') return catalogueReply('NEXT_HOP_UNAVAILABLE', ref);
  if (f.code !== undefined && f.code >= 400 && f.code < 500) return catalogueReply('NEXT_HOP_TEMPFAIL', ref);
  if (f.phase === 'data' || f.phase === 'rcpt') return catalogueReply('NEXT_HOP_LOST', ref);
  return catalogueReply('NEXT_HOP_UNAVAILABLE', ref);
}
