// CAS integration settings: regions, the zod schema with every default, and the types inferred from it (config/schema.ts embeds it).
import { z } from 'zod';

/** Regional service hosts (cas.md §1, from the vendor's "Understanding the URL" page). */
export const CAS_REGION_HOSTS = {
  us: 'api.tmcas.trendmicro.com',
  eu: 'api-eu.tmcas.trendmicro.com',
  jp: 'api.tmcas.trendmicro.co.jp',
  au: 'api-au.tmcas.trendmicro.com',
  uk: 'api.tmcas.trendmicro.co.uk',
  ca: 'api-ca.tmcas.trendmicro.com',
  sg: 'api.tmcas.trendmicro.com.sg',
  in: 'api-in.tmcas.trendmicro.com',
} as const;
export type CasRegion = keyof typeof CAS_REGION_HOSTS;
export const CAS_REGIONS = Object.keys(CAS_REGION_HOSTS) as CasRegion[];

const positiveInt = z.number().int().positive();

/** Schema with every default filled in, so `{}` (or a partial YAML block) yields complete settings. */
export const casSettingsSchema = z
  .object({
    /** Off by default: pushing to a tenant-wide block list is a decision an operator makes explicitly. */
    enabled: z.boolean().default(false),
    /** UCWI actionCodes that cause a push; 2 = block. */
    triggers: z.array(z.number().int().min(1).max(9)).default([2]),
    push: z
      .object({
        sender: z.boolean().default(true),
        attachmentHashes: z.boolean().default(false),
        urls: z.boolean().default(false),
        /** Cap on URLs taken from one message: a newsletter must not fill the 2,048-item list. */
        maxUrls: positiveInt.max(2048).default(50),
      })
      .strict()
      .prefault({}),
    /** Senders in these domains (and their subdomains) are never pushed: our own users. Default: policy.localDomains. */
    exemptDomains: z.array(z.string().min(1)).default([]),
    exemptSenders: z.array(z.string().min(1)).default([]),
    /** Sender pushing with no exempt domain is refused at start unless this says it is meant. */
    allowEmptyExemptions: z.boolean().default(false),
    /** Items the relay may have on one blocked list at a time; creates past it are held back (CAS's cap is 2,048). */
    maxListItems: positiveInt.max(2048).default(2048),
    /** Days after which what the relay added is removed again; null keeps it forever. */
    ttlDays: z.number().positive().nullable().default(null),
    rate: z
      .object({
        /** Requests allowed per window; the vendor's documented throttle is 20 per minute per token. */
        limit: positiveInt.default(20),
        windowMs: positiveInt.default(60_000),
      })
      .strict()
      .prefault({}),
    retry: z
      .object({
        /** Attempts per API call, the first one included. */
        maxAttempts: positiveInt.max(20).default(5),
        /** Exponential backoff base and cap (full jitter is applied on top). */
        baseMs: positiveInt.default(2_000),
        maxMs: positiveInt.default(32_000),
        /** Budget for one call including limiter waits and retries; the call fails once it is spent. */
        totalMs: positiveInt.default(180_000),
      })
      .strict()
      .prefault({}),
    region: z
      .enum(CAS_REGIONS as [CasRegion, ...CasRegion[]])
      .nullable()
      .default(null),
    /** Explicit base URL (e.g. a proxy or the simulator); wins over `region`. */
    url: z
      .url({ protocol: /^https?$/ })
      .nullable()
      .default(null),
    /** File holding the bearer token; DLP_RELAY_CAS_TOKEN wins when set. */
    tokenFile: z.string().min(1).nullable().default(null),
    timeouts: z
      .object({
        connectMs: positiveInt.default(10_000),
        headersMs: positiveInt.default(30_000),
        bodyMs: positiveInt.default(30_000),
        /** Deadline for one HTTP attempt, from send to the last body byte. */
        requestMs: positiveInt.default(60_000),
      })
      .strict()
      .prefault({}),
    outbox: z
      .object({
        backend: z.enum(['fs', 'pg']).default('fs'),
        /** Journal directory for the fs backend. */
        dir: z.string().min(1).default('var/cas-outbox'),
        /** Push attempts per outbox entry before it is marked `failed` (then only the CLI retries it). */
        maxAttempts: positiveInt.default(20),
        baseMs: positiveInt.default(30_000),
        maxMs: positiveInt.default(3_600_000),
        /** How often the pusher looks for due entries. */
        intervalMs: positiveInt.default(5_000),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type CasSettings = z.output<typeof casSettingsSchema>;
export type CasRateSettings = CasSettings['rate'];
export type CasRetrySettings = CasSettings['retry'];
export type CasTimeoutSettings = CasSettings['timeouts'];

/** Parses a (partial) settings object; throws a ZodError naming every bad key. */
export function parseCasSettings(input: unknown): CasSettings {
  return casSettingsSchema.parse(input ?? {});
}

export const DEFAULT_CAS_SETTINGS: CasSettings = parseCasSettings({});
