// The error family: one table maps every stable code to an SMTP reply, an HTTP status and a CLI exit code.
import { describe, expect, it } from 'vitest';
import { CATALOGUE, ERROR_CODES, errorCodeOf, exitCodeFor, httpStatusFor, smtpReplyFor, RelayError, type DlpErrorCode } from '../../src/errors.js';
import { ConfigError } from '../../src/config/load.js';
import { CliError } from '../../src/cli/admin-client.js';
import { CasPollTimeoutError } from '../../src/cas/client.js';
import { DeliveryError } from '../../src/egress/next-hop-errors.js';
import { QuarantineInputError } from '../../src/quarantine/common.js';
import { QuarantineNotFoundError, QuarantineUnavailableError } from '../../src/quarantine/errors.js';
import { DataPhaseError } from '../../src/smtp/types.js';
import { ReplySyntaxError } from '../../src/smtp/reply.js';
import { SmtpClientError } from '../../src/smtp/client-socket.js';
import { SessionEnded } from '../../src/smtp/session-io.js';

describe('ERROR_CODES', () => {
  it('every row names a catalogue reply, and our own failures are never a 5xx', () => {
    for (const [code, row] of Object.entries(ERROR_CODES)) {
      expect(code).toMatch(/^DLP_ERR_[A-Z_]+$/);
      const reply = CATALOGUE[row.reply];
      expect(reply, code).toBeDefined();
      expect(reply.code, `${code} -> ${row.reply}`).toBeGreaterThanOrEqual(400);
      expect(reply.code, `${code} -> ${row.reply}`).toBeLessThan(500);
      expect([0, 1, 2]).toContain(row.exit);
      expect(row.http).toBeGreaterThanOrEqual(400);
    }
  });

  it('each error class carries its own code', () => {
    const cases: Array<[unknown, DlpErrorCode]> = [
      [new ConfigError([{ path: 'x', message: 'bad' }]), 'DLP_ERR_CONFIG'],
      [new CliError('x'), 'DLP_ERR_CLI'],
      [new CasPollTimeoutError('b', 1, []), 'DLP_ERR_CAS_POLL_TIMEOUT'],
      [new DeliveryError('x', { kind: 'transient', phase: 'connect' }), 'DLP_ERR_NEXT_HOP'],
      [new QuarantineInputError('x'), 'DLP_ERR_QUARANTINE_INPUT'],
      [new QuarantineNotFoundError('id'), 'DLP_ERR_QUARANTINE_NOT_FOUND'],
      [new QuarantineUnavailableError('x'), 'DLP_ERR_QUARANTINE_UNAVAILABLE'],
      [new DataPhaseError(CATALOGUE.BARE_LINE_ENDING, 'x'), 'DLP_ERR_DATA_PHASE'],
      [new ReplySyntaxError('x'), 'DLP_ERR_REPLY_SYNTAX'],
      [new SmtpClientError('connect', 'timeout', 'x'), 'DLP_ERR_SMTP_CLIENT'],
      [new SessionEnded('quit'), 'DLP_ERR_SESSION_ENDED'],
      [new RelayError('DEADLINE_EXCEEDED'), 'DLP_ERR_DEADLINE'],
      [new Error('plain'), 'DLP_ERR_INTERNAL'],
      ['a string', 'DLP_ERR_INTERNAL'],
    ];
    for (const [err, code] of cases) expect(errorCodeOf(err), String(err)).toBe(code);
  });

  it('maps to reply, status and exit code, with instance values taking precedence', () => {
    expect(smtpReplyFor(new Error('boom'), 'Q1')).toEqual({ code: 451, enhanced: '4.3.0', text: 'Local error in processing, try again later (ref Q1)' });
    expect(smtpReplyFor(new QuarantineUnavailableError('db down'))).toEqual(CATALOGUE.QUARANTINE_FAILED);
    expect(smtpReplyFor(new DataPhaseError(CATALOGUE.BARE_LINE_ENDING, 'x'))).toEqual(CATALOGUE.BARE_LINE_ENDING);
    expect(httpStatusFor(new QuarantineInputError('bad cursor'))).toBe(400);
    expect(httpStatusFor(new QuarantineNotFoundError('x'))).toBe(404);
    expect(httpStatusFor(new Error('x'))).toBe(500);
    expect(exitCodeFor(new QuarantineInputError('bad'))).toBe(2);
    expect(exitCodeFor(new CliError('x', 2))).toBe(2);
    expect(exitCodeFor(new CliError('x'))).toBe(1);
    expect(exitCodeFor(new Error('x'))).toBe(1);
  });
});
