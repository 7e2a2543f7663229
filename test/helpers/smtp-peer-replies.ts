// The reply texts of the test SMTP peer: its own plain set, and the set of the smtp-server package the sinks used to run on, so tests asserting those exact lines keep passing.

/** Every reply the peer makes on its own (scripts may answer anything else). Each is a whole line without CRLF. */
export interface PeerReplies {
  greeting: (name: string) => string;
  /** First line of the EHLO reply, without its "250-" or "250 ". */
  ehlo: (name: string, remoteAddress: string) => string;
  helo: (name: string, remoteAddress: string) => string;
  mail: string;
  rcpt: string;
  data: string;
  /** Reply to the final dot of the n-th message this peer accepted (1-based). */
  queued: (n: number) => string;
  rset: string;
  noop: string;
  quit: string;
  unknown: string;
  syntax: string;
  heloFirst: string;
  nestedMail: string;
  needMail: string;
  needRcpt: string;
  /** A declared SIZE or a message over the peer's size limit. */
  tooBig: (limit: number) => string;
  starttls: string;
  authOk: string;
  authFailed: string;
  authRequired: string;
  authUnknown: string;
  authAborted: string;
  bdat: (bytes: number) => string;
}

export const PLAIN_REPLIES: PeerReplies = {
  greeting: (name) => `220 ${name} ESMTP`,
  ehlo: (name) => name,
  helo: (name) => `250 ${name}`,
  mail: '250 2.1.0 Ok',
  rcpt: '250 2.1.5 Ok',
  data: '354 End data with <CR><LF>.<CR><LF>',
  queued: (n) => `250 2.0.0 Ok: queued as PEER${n}`,
  rset: '250 2.0.0 Ok',
  noop: '250 2.0.0 Ok',
  quit: '221 2.0.0 Bye',
  unknown: '502 5.5.2 Command not recognized',
  syntax: '501 5.5.4 Syntax error in parameters',
  heloFirst: '503 5.5.1 Send EHLO first',
  nestedMail: '503 5.5.1 Error: nested MAIL command',
  needMail: '503 5.5.1 Error: need MAIL command',
  needRcpt: '554 5.5.1 Error: no valid recipients',
  tooBig: (limit) => `552 5.3.4 Message size exceeds fixed limit ${limit}`,
  starttls: '220 2.0.0 Ready to start TLS',
  authOk: '235 2.7.0 Authentication successful',
  authFailed: '535 5.7.8 Authentication credentials invalid',
  authRequired: '530 5.7.0 Authentication required',
  authUnknown: '504 5.5.4 Unrecognized authentication type',
  authAborted: '501 5.7.0 Authentication aborted',
  bdat: (bytes) => `250 2.0.0 ${bytes} octets received`,
};

// smtp-server 3.x (lib/smtp-connection.js): the enhanced code it puts after the basic one, by reply context.
const BY_CODE: Record<number, string> = {
  220: '2.0.0',
  221: '2.0.0',
  235: '2.7.0',
  250: '2.0.0',
  421: '4.4.2',
  450: '4.2.1',
  451: '4.3.0',
  452: '4.2.2',
  454: '4.7.0',
  500: '5.5.2',
  501: '5.5.4',
  502: '5.5.1',
  503: '5.5.1',
  504: '5.5.4',
  530: '5.7.0',
  535: '5.7.8',
  550: '5.1.1',
  551: '5.1.6',
  552: '5.2.2',
  553: '5.1.3',
  554: '5.6.0',
  555: '5.5.4',
};
const BY_CONTEXT = { MAIL_OK: '2.1.0', RCPT_OK: '2.1.5', DATA_OK: '2.6.0', TOO_BIG: '5.3.4' } as const;

/**
 * A reply the way smtp-server writes it: with `enhanced`, the basic code is followed by an enhanced code chosen by
 * context or basic code (whatever the text already holds: "550 5.1.1 5.1.1 no such user" is what it sends), none
 * for 3xx; without, the basic code alone.
 */
export function mtaReply(code: number, text: string, o: { enhanced: boolean; context?: keyof typeof BY_CONTEXT }): string {
  if (!o.enhanced || (code >= 300 && code < 400)) return `${code} ${text}`;
  const enh = (o.context && BY_CONTEXT[o.context]) ?? BY_CODE[code] ?? (code < 400 ? '2.0.0' : code < 500 ? '4.0.0' : '5.0.0');
  return `${code} ${enh} ${text}`;
}

/** smtp-server's own replies (with or without its enhanced codes); `queued` is the sink's "Ok: queued as <prefix><n>". */
export function mtaReplies(o: { enhanced: boolean; queued: (n: number) => string }): PeerReplies {
  const r = (code: number, text: string, context?: keyof typeof BY_CONTEXT): string =>
    mtaReply(code, text, { enhanced: o.enhanced, ...(context ? { context } : {}) });
  return {
    greeting: (name) => `220 ${name} ESMTP`,
    ehlo: (name, ip) => `${name} Nice to meet you, [${ip}]`,
    helo: (name, ip) => `250 ${name} Nice to meet you, [${ip}]`,
    mail: r(250, 'Accepted', 'MAIL_OK'),
    rcpt: r(250, 'Accepted', 'RCPT_OK'),
    data: '354 End data with <CR><LF>.<CR><LF>',
    queued: (n) => r(250, o.queued(n), 'DATA_OK'),
    rset: r(250, 'Flushed'),
    noop: r(250, 'OK'),
    quit: r(221, 'Bye'),
    unknown: r(500, 'Error: command not recognized'),
    syntax: r(501, 'Error: Bad command parameter syntax'),
    heloFirst: r(503, 'Error: send HELO/EHLO first'),
    nestedMail: r(503, 'Error: nested MAIL command'),
    needMail: r(503, 'Error: need MAIL command'),
    needRcpt: r(503, 'Error: need RCPT command'),
    tooBig: (limit) => r(552, `Error: message exceeds fixed maximum message size ${limit}`, 'TOO_BIG'),
    starttls: r(220, 'Ready to start TLS'),
    authOk: r(235, 'Authentication successful'),
    authFailed: r(535, 'Error: Authentication credentials invalid'),
    authRequired: r(530, 'Error: authentication Required'),
    authUnknown: r(504, 'Error: Unrecognized authentication type'),
    authAborted: r(501, 'Authentication aborted'),
    bdat: (bytes) => r(250, `${bytes} octets received`),
  };
}
