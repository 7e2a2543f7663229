// Field types several parts of the configuration schema share (durations, ports, nullable paths, networks), so each limit is written once.
import { z } from 'zod';
import { parseCidr } from '../util/cidr.js';

/** A duration in milliseconds with its default; at least 1, at most `max` (an hour unless said). */
export const ms = (def: number, max = 3_600_000) => z.number().int().min(1).max(max).default(def);
export const port = z.number().int().min(0).max(65535);
/** A path or name that may be left unset. */
export const nullableString = z.string().min(1).nullable().default(null);

/** An address or CIDR; checked here so it is reported together with every other problem. */
export const cidr = z.string().superRefine((v, ctx) => {
  const p = parseCidr(v);
  if (typeof p === 'string') ctx.addIssue({ code: 'custom', message: p });
});
