// DLP policies of the embedded engine: the YAML file format, its validation, and how matched policies turn into one actionCode.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { DETECTOR_KINDS, type DetectorKind } from './detectors.js';

/** One policy as written in config/detectors.yaml or passed to the simulator directly. */
export interface PolicyDef {
  /** Reported back as `matchedPolicies[].name`; unique. */
  name: string;
  detector: DetectorKind;
  /** Required for (and only for) `detector: keywords`. */
  keywords?: string[];
  /** The policy matches when the message holds at least this many matches (default 1). */
  minMatches?: number;
  /** UCWI action code 1..9 (seed table: 1 allow, 2 block, 3 confirm, 4 delete attachment, 5 mail encryption, 6 quarantine, 7/8/9 encryption variants). */
  actionCode: number;
  /** 1 high … 4 info, as the public UCWI client code reads it. */
  severity: number;
  /** Reported back as `matchedPolicies[].actionSettingName`. */
  actionSettingName: string;
}

/** A validated policy: defaults filled in. */
export type Policy = Required<Omit<PolicyDef, 'keywords'>> & Pick<PolicyDef, 'keywords'>;

const policySchema = z
  .strictObject({
    name: z.string().trim().min(1),
    detector: z.enum(DETECTOR_KINDS),
    keywords: z.array(z.string().trim().min(1)).min(1).optional(),
    minMatches: z.int().min(1).default(1),
    actionCode: z.int().min(1).max(9),
    severity: z.int().min(1).max(4),
    actionSettingName: z.string().trim().min(1),
  })
  .superRefine((p, ctx) => {
    if (p.detector === 'keywords' && !p.keywords) {
      ctx.addIssue({ code: 'custom', path: ['keywords'], message: 'required when detector is "keywords"' });
    }
    if (p.detector !== 'keywords' && p.keywords) {
      ctx.addIssue({ code: 'custom', path: ['keywords'], message: `only allowed with detector "keywords", not "${p.detector}"` });
    }
  });

const fileSchema = z.strictObject({ policies: z.array(policySchema) }).superRefine((f, ctx) => {
  const seen = new Map<string, number>();
  f.policies.forEach((p, i) => {
    const prev = seen.get(p.name);
    if (prev !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['policies', i, 'name'], message: `duplicate policy name "${p.name}" (also policies[${prev}])` });
    }
    seen.set(p.name, i);
  });
});

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : `${out ? '.' : ''}${String(seg)}`;
  return out || '(root)';
}

/**
 * Validates policies from any source. A bare list is accepted as well as `{ policies: [...] }`.
 * Throws one Error that lists every problem with its path, so a broken file is fixed in one go.
 */
export function parsePolicies(value: unknown, source = 'policies'): Policy[] {
  const doc = Array.isArray(value) ? { policies: value } : value;
  const r = fileSchema.safeParse(doc);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `  - ${formatPath(i.path)}: ${i.message}`);
    throw new Error(`${source}: invalid DLP policies:\n${lines.join('\n')}`);
  }
  return r.data.policies;
}

/** Reads and validates a policy YAML file; YAML syntax errors are listed with line and column. */
export function loadPolicies(file: string): Policy[] {
  const text = readFileSync(file, 'utf8');
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new Error(`${file}: invalid YAML:\n${doc.errors.map((e) => `  - ${e.message.split('\n')[0]}`).join('\n')}`);
  }
  return parsePolicies(doc.toJS(), file);
}

/** The policy file shipped with the package (config/detectors.yaml), found from src/ and from dist/ alike. */
export const DEFAULT_POLICIES_FILE = fileURLToPath(new URL('../../config/detectors.yaml', import.meta.url));

/**
 * Strictest first: when several policies match, the answer carries the first of these codes among them.
 * Block beats quarantine beats asking the sender; the encryption variants only change how mail leaves.
 * The order is ours (UCWI's own precedence is not public).
 */
export const ACTION_PRECEDENCE: readonly number[] = [2, 6, 3, 4, 5, 8, 7, 9, 1];

export function strictestAction(codes: readonly number[]): number {
  let best = 1;
  let bestRank = ACTION_PRECEDENCE.indexOf(1);
  for (const c of codes) {
    const rank = ACTION_PRECEDENCE.indexOf(c);
    if (rank >= 0 && rank < bestRank) {
      best = c;
      bestRank = rank;
    }
  }
  return best;
}

/** One entry of `incident_info.matchedPolicies`, in the field names the public UCWI client reads. */
export interface MatchedPolicy {
  name: string;
  severity: number;
  actionSettingName: string;
  numberOfMatches: number;
}

export interface Verdict {
  actionCode: number;
  matchedPolicies: MatchedPolicy[];
}

/** Turns per-policy match counts (same order as `policies`) into the verdict UCWI would give. */
export function decide(policies: readonly Policy[], counts: readonly number[]): Verdict {
  const matchedPolicies: MatchedPolicy[] = [];
  const codes: number[] = [];
  policies.forEach((p, i) => {
    const n = counts[i] ?? 0;
    if (n >= p.minMatches) {
      matchedPolicies.push({ name: p.name, severity: p.severity, actionSettingName: p.actionSettingName, numberOfMatches: n });
      codes.push(p.actionCode);
    }
  });
  return { actionCode: strictestAction(codes), matchedPolicies };
}
