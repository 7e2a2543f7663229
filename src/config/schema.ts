// The configuration schema: every key, its default and its limits (the policy part in policy-schema.ts, CAS in cas-schema.ts). config/default.yaml documents the same keys.
import { z } from 'zod';
import { casSettingsSchema } from './cas-schema.js';
import { cidr, ms, nullableString, port } from './fields.js';
import { policySchema } from './policy-schema.js';

const hostPort = z.object({ host: z.string().min(1), port }).strict();
const ucwiUrl = z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL with the scheme written out, e.g. https://ucwi.example:5443' });
/** MX-style preference of an upstream endpoint; also what a server given without one (a bare URL, nextHop.host) gets. */
export const DEFAULT_PRIORITY = 10;
const priority = z.number().int().min(0).max(65535).default(DEFAULT_PRIORITY);
const backoff = () =>
  z
    .object({ initialMs: ms(5_000, 600_000), maxMs: ms(60_000, 3_600_000) })
    .strict()
    .prefault({});

const tlsFiles = z
  .object({
    certFile: nullableString,
    keyFile: nullableString,
    /** Refuse MAIL FROM until the client has done STARTTLS. */
    require: z.boolean().default(false),
  })
  .strict()
  .superRefine((t, ctx) => {
    if ((t.certFile === null) !== (t.keyFile === null)) ctx.addIssue({ code: 'custom', message: 'certFile and keyFile go together', path: ['certFile'] });
    if (t.require && t.certFile === null) ctx.addIssue({ code: 'custom', message: 'require needs a certificate (certFile/keyFile)', path: ['require'] });
  });

/** Connections to one SMTP peer (the next hop, an encryption gateway). */
const smtpPool = (maxConnections: number) =>
  z
    .object({
      maxConnections: z.number().int().min(1).max(1000).default(maxConnections),
      maxMessagesPerConnection: z.number().int().min(1).max(100_000).default(100),
      idleTimeoutMs: ms(10_000),
      /**
       * A client transaction holds one next-hop connection from MAIL FROM to its end (lockstep, as
       * Postfix's before-queue proxy): past maxConnections a new MAIL waits this long, then gets 451.
       */
      acquireTimeoutMs: ms(5_000),
    })
    .strict()
    .prefault({});

const smtpTimeouts = z
  .object({ connectMs: ms(10_000), greetingMs: ms(10_000), socketMs: ms(30_000) })
  .strict()
  .prefault({});

export const configSchema = z
  .object({
    /**
     * Base of the default data directories (spool, quarantine, outbox, cas-outbox). null: the package's
     * var/ in a checkout, /var/lib/dlp-relay when installed; filled in by load.ts, never the cwd.
     */
    stateDir: z.string().min(1).nullable().default(null),
    listen: hostPort.prefault({ host: '127.0.0.1', port: 2525 }),
    smtp: z
      .object({
        /** Name in the banner, EHLO reply and our Received-free headers. */
        hostname: z.string().min(1).default('dlp-relay.localdomain'),
        maxMessageBytes: z
          .number()
          .int()
          .min(1024)
          .max(2 ** 40)
          .default(50 * 1024 * 1024), // 50 MiB
        maxClients: z.number().int().min(1).max(100_000).default(200),
        /**
         * SMTP worker processes (node:cluster) sharing the listen port; 1 runs everything in one process.
         * maxClients and the UCWI/next-hop pools apply per worker.
         */
        workers: z.number().int().min(1).max(64).default(1),
        /**
         * How connections reach the workers: `kernel` (each worker accepts on the shared socket; cheapest, but a
         * few connections at a time may all land on one worker) or `round-robin` (the supervisor accepts and
         * hands each connection to the next worker over IPC: even, at about 0.4 ms of CPU per connection).
         */
        workerBalancing: z.enum(['kernel', 'round-robin']).default('kernel'),
        maxRecipients: z.number().int().min(1).max(100_000).default(1000),
        /** Idle time on a session (no byte from the client) before we answer 421 and hang up. */
        idleTimeoutMs: ms(60_000),
        /** Whole-session cap, however busy the client is (RFC 5321 leaves it to us; Postfix has none, Haraka none). */
        sessionTimeoutMs: ms(1_800_000, 86_400_000),
        /**
         * Slowloris guard: a command line or DATA must arrive at least this fast (bytes per second, averaged
         * over 30 s); a client dribbling a byte every few seconds loses its slot. 0 turns it off.
         */
        minBytesPerSecond: z.number().int().min(0).max(1_000_000_000).default(256),
        /**
         * Early-talker pause before the greeting (0: greet at once). A client that talks first is refused,
         * like Postfix's postscreen pregreet test; costs every connection this much latency.
         */
        greetingDelayMs: z.number().int().min(0).max(60_000).default(0),
        /** Bare CR or LF in DATA: pass through as data (our client stuffs dots after them) or refuse with 550 5.5.2. */
        bareLineEndings: z.enum(['accept', 'reject']).default('accept'),
        /**
         * PROXY protocol v1/v2 (HAProxy send-proxy[-v2]) from these load balancers only. When set, every
         * connection must start with a PROXY header; the address it gives is the one checked and logged.
         */
        proxyProtocolFrom: z.array(cidr).default([]),
        /** Networks allowed to send through us; everything else gets 554 at connect. Never an open relay. */
        allowedClients: z.array(cidr).min(1).default(['127.0.0.0/8', '::1/128']),
        tls: tlsFiles.prefault({}),
        /** Advertise DSN and carry RET/ENVID/NOTIFY/ORCPT to the next hop. */
        dsn: z.boolean().default(true),
        /**
         * SMTP AUTH for submission-style deployments: PLAIN and LOGIN, offered only after STARTTLS.
         * usersFile lines are "user:scrypt$<salt b64>$<hash b64>" (make them with `dlp-relay hash-password`).
         */
        auth: z
          .object({
            enabled: z.boolean().default(false),
            required: z.boolean().default(false),
            usersFile: nullableString,
            /** Failed AUTH attempts on one connection before it is closed with 421 4.7.0. */
            maxFailures: z.number().int().min(1).max(100).default(3),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        /**
         * One budget for everything after the final dot (DLP call + next hop), well under Postfix's
         * 100 s smtpd_proxy_timeout: past it the client gets 451, never a late 250.
         */
        dataDeadlineMs: ms(60_000, 600_000),
        /** On SIGTERM: time for messages already past the final dot to finish before the rest get 421. */
        shutdownGraceMs: ms(20_000, 600_000),
        /**
         * On SIGTERM, before the drain: /readyz answers 503 for this long while new sessions are still
         * served, so a load balancer (or Kubernetes endpoints) stops sending first. 0: drain at once.
         */
        drainDelayMs: z.number().int().min(0).max(300_000).default(0),
      })
      .strict()
      .prefault({}),
    spool: z
      .object({ dir: z.string().min(1).default('var/spool') })
      .strict()
      .prefault({}),
    ucwi: z
      .object({
        /** Base URL of the UCWI server, e.g. https://ucwi.example:5443. null: start the embedded engine on loopback. */
        /**
         * Or a list of them, each a URL or { url, priority }: lowest priority first, equal ones share the load
         * (default priority 10 for all, i.e. shared). A scan moves to the next server only when no answer came.
         */
        url: z
          .union([
            ucwiUrl,
            z
              .array(z.union([ucwiUrl, z.object({ url: ucwiUrl, priority: priority }).strict()]))
              .min(1)
              .max(32),
          ])
          .nullable()
          .default(null),
        /** Down period of a failing UCWI server before it is probed again (doubled per failed probe, up to maxMs). */
        backoff: backoff(),
        /** Path segment after /channel/email/: the vendor docs name only SMTP. */
        protocol: z
          .string()
          .regex(/^[A-Za-z0-9_-]+$/)
          .default('smtp'),
        /** Secrets are never read from this file: environment or files only. */
        accessKeyFile: nullableString,
        secretKeyFile: nullableString,
        tls: z
          .object({
            /** Certificate verification; turn off only knowingly (UCWI appliances often ship self-signed). */
            rejectUnauthorized: z.boolean().default(true),
            caFile: nullableString,
          })
          .strict()
          .prefault({}),
        timeouts: z
          .object({
            connectMs: ms(5_000),
            headersMs: ms(30_000),
            bodyMs: ms(30_000),
            /** Overall deadline for one verdict (Haraka's plugin timeout is 30 s). */
            deadlineMs: ms(30_000),
          })
          .strict()
          .prefault({}),
        /** In-flight UCWI calls at most; further messages wait for a slot within the deadline. */
        maxConcurrent: z.number().int().min(1).max(10_000).default(64),
        /** Longest wait for a free slot; past it the message is a DLP error of class "saturated". */
        queueTimeoutMs: ms(10_000),
        keepAliveMs: ms(4_000),
      })
      .strict()
      .prefault({}),
    embeddedDlp: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: port.default(0),
        policiesFile: z.string().min(1).default('config/detectors.yaml'),
      })
      .strict()
      .prefault({}),
    /** Verdict → action: mode, action table, rules, verdict and loop headers (policy-schema.ts). */
    policy: policySchema.prefault({}),
    nextHop: z
      .object({
        /** null: no next hop, accepted mail goes to the local outbox directory (unless endpoints are listed). */
        host: z.string().min(1).nullable().default(null),
        port: port.default(25),
        /**
         * Several next hops instead of host/port, MX-style: lowest priority first, equal ones share the load.
         * A transaction moves to the next one only before MAIL was accepted (never after the final dot).
         */
        endpoints: z
          .array(z.object({ host: z.string().min(1), port: port.optional(), priority: priority }).strict())
          .max(32)
          .default([]),
        /** Down period of a failing next hop before it is probed again (doubled per failed probe, up to maxMs). */
        backoff: backoff(),
        secure: z.boolean().default(false),
        starttls: z.enum(['opportunistic', 'required', 'off']).default('opportunistic'),
        tls: z
          .object({
            rejectUnauthorized: z.boolean().default(true),
            caFile: nullableString,
            servername: nullableString,
          })
          .strict()
          .prefault({}),
        /** AUTH user; the password comes from DLP_RELAY_NEXT_HOP_PASS or passFile. */
        authUser: nullableString,
        passFile: nullableString,
        pool: smtpPool(20),
        timeouts: smtpTimeouts,
      })
      .strict()
      .prefault({}),
    /**
     * Encryption gateways (next hops for route_to_gateway), by name. TLS is always required and verified:
     * implicit TLS with secure: true, else STARTTLS; without it the answer is 4xx, never a relay in clear.
     */
    gateways: z
      .record(
        z.string().regex(/^[a-z0-9][a-z0-9_-]{0,40}$/, 'gateway names are lower-case letters, digits, - and _'),
        z
          .object({
            host: z.string().min(1),
            port: port.default(25),
            secure: z.boolean().default(false),
            tls: z.object({ caFile: nullableString, servername: nullableString }).strict().prefault({}),
            /** AUTH user; the password is read from passFile. */
            authUser: nullableString,
            passFile: nullableString,
            pool: smtpPool(10),
            timeouts: smtpTimeouts,
          })
          .strict()
          .superRefine((g, ctx) => {
            if (g.authUser !== null && g.passFile === null) ctx.addIssue({ code: 'custom', message: 'AUTH needs passFile', path: ['passFile'] });
          }),
      )
      .default({}),
    outbox: z
      .object({ dir: z.string().min(1).default('var/outbox') })
      .strict()
      .prefault({}),
    quarantine: z
      .object({
        dir: z.string().min(1).default('var/quarantine'),
        /** postgres://… selects the PostgreSQL store; the URL may carry a password, so it is masked in output. */
        url: z
          .string()
          .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL')
          .nullable()
          .default(null),
        /** Held messages older than this are purged (also periodically by the relay); 0 keeps them forever. */
        retentionDays: z.number().min(0).max(36_500).default(30),
        retentionIntervalMs: ms(3_600_000, 86_400_000),
        /** Sender notices on quarantine or reject (off by default); templates in templateDir. */
        notifications: z
          .object({
            enabled: z.boolean().default(false),
            onQuarantine: z.boolean().default(true),
            onReject: z.boolean().default(false),
            from: z.string().min(3).default('postmaster@localhost'),
            helpContact: z.string().min(1).default('your IT help desk'),
            templateDir: z.string().min(1).default('config'),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    /** Trend Micro Cloud App Security: blocked-list push through a durable outbox (off by default). */
    cas: casSettingsSchema.prefault({}),
    admin: z
      .object({
        /** Admin HTTP listener: /healthz and /readyz (open), /metrics and /api/v1 (bearer token). */
        host: z.string().min(1).default('127.0.0.1'),
        /** 8425: not 8025, which Mailpit and MailHog (often on the same test host) listen on. */
        port: port.default(8425),
        enabled: z.boolean().default(true),
        /** The token comes from DLP_RELAY_ADMIN_TOKEN or this file; without one only /healthz and /readyz answer. */
        tokenFile: nullableString,
      })
      .strict()
      .prefault({}),
    /** Browser console for reviewers and the sender's confirm page, served by the admin listener (off by default; see README). */
    console: z
      .object({
        enabled: z.boolean().default(false),
        /** Path prefix, so a reverse proxy can map it (e.g. https://mail-admin.example/quarantine/ → /console/). */
        basePath: z
          .string()
          .regex(/^\/[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*$/, 'must look like /console')
          .default('/console'),
        /** Console accounts (`dlp-relay user add`); relative paths are under the state directory. */
        usersFile: z.string().min(1).default('var/console-users.json'),
        /** The admin listener is loopback by default; serving the console elsewhere must be asked for explicitly. */
        allowRemote: z.boolean().default(false),
        /** Honour X-Forwarded-For/-Proto from the proxy in front (Secure cookie when it says https; audit source). */
        trustProxy: z.boolean().default(false),
        /** Always mark the cookie Secure (TLS terminated in front without X-Forwarded-Proto). */
        secureCookie: z.boolean().default(false),
        sessionIdleMs: ms(1_800_000, 86_400_000),
        sessionMaxMs: ms(43_200_000, 7 * 86_400_000),
        /** Failed sign-ins (per account) before it is locked for lockoutMs. */
        maxFailures: z.number().int().min(1).max(100).default(5),
        lockoutMs: ms(900_000, 86_400_000),
        /** Sender self-service for held messages whose actionCode is listed ("confirm"). */
        confirm: z
          .object({
            enabled: z.boolean().default(false),
            actionCodes: z.array(z.number().int().min(1).max(9)).default([3]),
            /** release: the sender's confirmation releases at once; review: it asks a reviewer. */
            onConfirm: z.enum(['release', 'review']).default('release'),
            linkTtlMs: ms(259_200_000, 30 * 86_400_000),
            /** Origin the links in sender notices point to (the proxy in front), e.g. https://mail-admin.example. */
            publicUrl: z.string().url().nullable().default(null),
            /** HMAC key for the links, created (0600) on first use so links survive restarts. */
            linkKeyFile: z.string().min(1).default('var/console-link.key'),
          })
          .strict()
          .prefault({}),
        /** Reviewer digests: a mail listing the messages held since the last digest, with links to their console pages (off by default). */
        digest: z
          .object({
            enabled: z.boolean().default(false),
            interval: z.enum(['hourly', 'daily']).default('daily'),
            /** Hour of the day (UTC) a daily digest is sent at; it covers the 24 hours before. */
            dailyHourUtc: z.number().int().min(0).max(23).default(7),
            recipients: z.array(z.string().regex(/^[^\s<>@]+@[^\s<>@]+$/, 'must be an address like reviewers@corp.example')).default([]),
            from: z
              .string()
              .regex(/^[^\s<>@]+@[^\s<>@]+$/, 'must be an address')
              .default('postmaster@localhost'),
            /** Origin of the links (the proxy in front of the console); default console.confirm.publicUrl, else the admin listener. */
            publicUrl: z.string().url().nullable().default(null),
            /** Messages listed by name; the rest are counted. */
            maxItems: z.number().int().min(1).max(1000).default(200),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        /** json (one object per line, for collectors) or text (one readable line, for a terminal). */
        format: z.enum(['json', 'text']).default('json'),
      })
      .strict()
      .prefault({}),
    /** Runtime secrets, filled from the environment or *File keys only; see load.ts. */
    secrets: z
      .object({
        ucwiAccessKey: z.string().nullable().default(null),
        ucwiSecretKey: z.string().nullable().default(null),
        nextHopPass: z.string().nullable().default(null),
        adminToken: z.string().nullable().default(null),
        casToken: z.string().nullable().default(null),
        loopKey: z.string().nullable().default(null),
        loopPreviousKey: z.string().nullable().default(null),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((c, ctx) => {
    // A route to a gateway that is not configured would only be found at the first such verdict.
    const check = (spec: { action: string; gateway?: string | undefined } | undefined, path: Array<string | number>) => {
      if (spec?.action === 'route_to_gateway' && spec.gateway !== undefined && !(spec.gateway in c.gateways))
        ctx.addIssue({ code: 'custom', message: `no gateway "${spec.gateway}" in gateways`, path: [...path, 'gateway'] });
    };
    for (const [code, spec] of Object.entries(c.policy.actions)) check(spec, ['policy', 'actions', code]);
    check(c.policy.unknownAction, ['policy', 'unknownAction']);
    c.policy.rules.forEach((r, i) => {
      for (const [code, spec] of Object.entries(r.actions ?? {})) check(spec, ['policy', 'rules', i, 'actions', code]);
      check(r.unknownAction, ['policy', 'rules', i, 'unknownAction']);
      if (r.nextHop !== undefined && !(r.nextHop in c.gateways))
        ctx.addIssue({ code: 'custom', message: `no gateway "${r.nextHop}" in gateways`, path: ['policy', 'rules', i, 'nextHop'] });
    });
  });

export type Config = z.infer<typeof configSchema>;
export type DeepReadonly<T> = T extends (infer U)[] ? ReadonlyArray<DeepReadonly<U>> : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;
export type FrozenConfig = DeepReadonly<Config>;
