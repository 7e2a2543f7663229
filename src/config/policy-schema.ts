// The verdict policy's part of the configuration schema (actions, rules, verdict and loop headers) with every default; src/policy takes its types from here.
import { z } from 'zod';
import { CATALOGUE } from '../errors.js';
import { cidr, nullableString } from './fields.js';

/** What the relay does with a message; see src/policy for the semantics. */
export const actionName = z.enum(['relay', 'relay_with_headers', 'reject', 'tempfail', 'quarantine', 'remove_attachments', 'route_to_gateway']);

const actionSpec = z
  .object({
    action: actionName,
    /** reject/tempfail only: basic code, enhanced code and text (placeholders: {queryId}). */
    code: z.number().int().min(400).max(599).optional(),
    enhanced: z
      .string()
      .regex(/^[45]\.\d{1,3}\.\d{1,3}$/, 'must look like 5.7.1')
      .optional(),
    text: z.string().min(1).max(400).optional(),
    /** route_to_gateway only: the name of an entry in `gateways` (an encryption gateway next hop). */
    gateway: z.string().min(1).optional(),
    /** route_to_gateway only: also stamp the encryption header (default true). */
    header: z.boolean().optional(),
  })
  .strict()
  .superRefine((a, ctx) => {
    if (a.action === 'route_to_gateway' && a.gateway === undefined)
      ctx.addIssue({ code: 'custom', message: 'route_to_gateway needs a gateway name', path: ['gateway'] });
    if (a.action !== 'route_to_gateway' && (a.gateway !== undefined || a.header !== undefined))
      ctx.addIssue({ code: 'custom', message: `gateway and header apply only to route_to_gateway, not ${a.action}`, path: ['gateway'] });
    if (a.code !== undefined && a.action !== 'reject' && a.action !== 'tempfail')
      ctx.addIssue({ code: 'custom', message: `code applies only to reject or tempfail, not ${a.action}`, path: ['code'] });
    if (a.action === 'reject' && a.code !== undefined && a.code < 500) ctx.addIssue({ code: 'custom', message: 'a reject needs a 5xx code', path: ['code'] });
    if (a.action === 'tempfail' && a.code !== undefined && a.code >= 500)
      ctx.addIssue({ code: 'custom', message: 'a tempfail needs a 4xx code', path: ['code'] });
    if (a.code !== undefined && a.enhanced !== undefined && a.enhanced[0] !== String(a.code)[0])
      ctx.addIssue({ code: 'custom', message: 'enhanced code class must match the basic code', path: ['enhanced'] });
  });
export type ActionSpec = z.infer<typeof actionSpec>;

/**
 * The defaults of the action table (UCWI codes: 1 allow, 2 block, 3 confirm, 4 delete attachment,
 * 5 mail encryption, 6 quarantine, 7 endpoint system encryption, 8 mail content encryption,
 * 9 endpoint personal-key encryption). 3 needs a human, so it waits in quarantine; 4 relays a copy
 * without its attachments; 5, 7, 8 and 9 (all encryption actions) are handed to a downstream
 * encryption gateway by header, or routed to one (route_to_gateway).
 */
export const DEFAULT_ACTIONS: Readonly<Record<string, ActionSpec>> = Object.freeze({
  '1': { action: 'relay' },
  '2': { action: 'reject', code: CATALOGUE.POLICY_REJECT.code, enhanced: CATALOGUE.POLICY_REJECT.enhanced },
  '3': { action: 'quarantine' },
  '4': { action: 'remove_attachments' },
  '5': { action: 'relay_with_headers' },
  '6': { action: 'quarantine' },
  '7': { action: 'relay_with_headers' },
  '8': { action: 'relay_with_headers' },
  '9': { action: 'relay_with_headers' },
});

/** The configured table over the defaults: a code the admin did not mention keeps its default. */
export function effectiveActions(configured: Readonly<Record<string, ActionSpec>>): Record<string, ActionSpec> {
  return { ...DEFAULT_ACTIONS, ...configured };
}

/** actionCode → action. Codes 1..9 as documented by UCWI. */
const actionTable = z.record(z.string().regex(/^[1-9]$/, 'action codes are 1..9'), actionSpec);
/** enforce: act on the verdict; monitor: relay everything, log and count the would-be action, no CAS push. */
const policyMode = z.enum(['enforce', 'monitor']);
/** Verdict headers on relayed copies: auto = on when enforcing, off in monitor mode. The loop header is always added. */
const headerSetting = z.enum(['auto', 'on', 'off']);
/** What a DLP failure (down, timeout, 401, garbage) does. */
const onDlpError = z.enum(['tempfail', 'relay', 'quarantine']);

/** "user@example.com", or a domain as "example.com", "@example.com" or ".example.com" (it and its subdomains). */
const addressOrDomain = z.string().regex(/^(?:[^@\s]+@[A-Za-z0-9.-]+|[@.]?[A-Za-z0-9.-]+)$/, 'must be an address or a domain');

const headerName = z.string().regex(/^[!-9;-~]+$/, 'must be a valid header field name');

/** One of the ordered rules: what it matches on, and the settings it replaces for those messages. */
const policyRule = z
  .object({
    name: z.string().min(1).max(100),
    match: z
      .object({
        /** Envelope sender: "user@example.com" exactly, or a domain ("example.com", "@example.com") and its subdomains. */
        senders: z.array(addressOrDomain).min(1).optional(),
        /** Envelope recipients, same forms; see allRecipients. */
        recipients: z.array(addressOrDomain).min(1).optional(),
        /** false (default): one matching recipient is enough; true: every recipient must match. */
        allRecipients: z.boolean().optional(),
        /** The client's address inside one of these networks. */
        clientNetworks: z.array(cidr).min(1).optional(),
        /** The SMTP AUTH user, exactly (case-insensitive). */
        authUsers: z.array(z.string().min(1)).min(1).optional(),
      })
      .strict(),
    mode: policyMode.optional(),
    headers: headerSetting.optional(),
    /** Codes given here replace the default table's; the others keep policy.actions. */
    actions: actionTable.optional(),
    unknownAction: actionSpec.optional(),
    onDlpError: onDlpError.optional(),
    /**
     * A gateway (by name, from `gateways`) that takes this rule's mail instead of the default next hop. Chosen at
     * MAIL FROM (lockstep: recipients are answered by the next hop itself), so such a rule may match only on
     * senders, client networks and AUTH users.
     */
    nextHop: z.string().min(1).optional(),
  })
  .strict();

export const policySchema = z
  .object({
    mode: policyMode.default('enforce'),
    headers: headerSetting.default('auto'),
    // The default table lives here with every other default: codes the file does not mention keep theirs, and the
    // parsed config (what check-config prints) is the effective table.
    actions: actionTable.default({}).transform(effectiveActions),
    unknownAction: actionSpec.prefault({ action: 'quarantine' }),
    onDlpError: onDlpError.default('tempfail'),
    // The catalogue holds the wording of every reply we make; these defaults add only the reference.
    rejectText: z.string().min(1).max(400).default(`${CATALOGUE.POLICY_REJECT.text} (ref {queryId})`),
    quarantineText: z.string().min(1).max(400).default(`${CATALOGUE.QUARANTINED.text} (ref {queryId})`),
    verdictHeaders: z
      .object({
        queryId: headerName.default('X-DLP-Query-ID'),
        actionCode: headerName.default('X-DLP-Action-Code'),
        action: headerName.default('X-DLP-Action'),
        /** remove_attachments: how many attachments were replaced by a note. */
        removedCount: headerName.default('X-DLP-Attachments-Removed'),
      })
      .strict()
      .prefault({}),
    encryptionHeader: z
      .object({ name: headerName.default('X-DLP-Encrypt'), value: z.string().min(1).default('required') })
      .strict()
      .prefault({}),
    /** remove_attachments (actionCode 4 by default). */
    attachments: z
      .object({
        /** Images an HTML body shows inline (multipart/related, Content-ID) are removed too. */
        removeInlineImages: z.boolean().default(false),
        /** A message deeper or with more parts than this cannot be rewritten and is quarantined instead. */
        maxParts: z.number().int().min(1).max(100_000).default(1000),
        maxDepth: z.number().int().min(1).max(1000).default(32),
      })
      .strict()
      .prefault({}),
    /** Ordered rules, first match wins; each replaces mode, headers and actions for the messages it matches. */
    rules: z
      .array(policyRule)
      .default([])
      .superRefine((rules, ctx) => {
        const seen = new Set<string>();
        rules.forEach((r, i) => {
          if (seen.has(r.name)) ctx.addIssue({ code: 'custom', message: `rule name "${r.name}" is used twice`, path: [i, 'name'] });
          seen.add(r.name);
          if (r.nextHop !== undefined && r.match.recipients)
            ctx.addIssue({
              code: 'custom',
              message: 'a rule with nextHop cannot match on recipients: the next hop is chosen at MAIL FROM',
              path: [i, 'nextHop'],
            });
        });
      }),
    /** Our own mail domains; cas.exemptDomains defaults to them, so CAS never blocks our own users. */
    localDomains: z
      .array(
        z
          .string()
          .min(1)
          .regex(/^[@.]?[A-Za-z0-9.-]+$/, 'must be a domain name'),
      )
      .default([]),
    loop: z
      .object({
        /** Marks a message we already scanned; trusted networks may send it back without a second scan. */
        header: headerName.default('X-DLP-Relay-Scanned'),
        trustedNetworks: z.array(cidr).default([]),
        /**
         * The header's value is signed (HMAC-SHA-256) with this key; relays that reflect mail to each
         * other share it. DLP_RELAY_LOOP_KEY (or its _FILE) wins. None: a random key per process.
         */
        keyFile: nullableString,
        /** Key rotation: the key before the current one, accepted for incoming values until previousKeyUntil. */
        previousKeyFile: nullableString,
        previousKeyUntil: z.iso.datetime({ offset: true }).or(z.iso.date()).nullable().default(null),
        /** A signed value older than this is not trusted: the copy is scanned again. */
        maxAgeSeconds: z
          .number()
          .int()
          .min(60)
          .max(30 * 86_400)
          .default(3600),
      })
      .strict()
      .prefault({}),
  })
  .strict();

/** The policy settings as parsed: every default filled in, the action table complete. */
export type PolicyConfig = z.output<typeof policySchema>;
