// deploy/kubernetes/ validated offline against the Kubernetes API schemas that kubernetes-models ships (runtime JSON schema + its type definitions, which also catch misspelt field names), and against our own config schema.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { loadConfig } from '../../src/config/load.js';

const DIR = resolve('deploy/kubernetes');

/** apiVersion/kind → the model (runtime JSON-schema validation) and its interface (compile-time, strict on field names). */
const MODELS: Record<string, { validate(doc: unknown): void; type: string; module: string }> = {
  'v1/ConfigMap': { validate: (d) => new ConfigMap(d as never).validate(), type: 'IConfigMap', module: 'kubernetes-models/v1/ConfigMap' },
  'v1/Secret': { validate: (d) => new Secret(d as never).validate(), type: 'ISecret', module: 'kubernetes-models/v1/Secret' },
  'v1/Service': { validate: (d) => new Service(d as never).validate(), type: 'IService', module: 'kubernetes-models/v1/Service' },
  'apps/v1/Deployment': { validate: (d) => new Deployment(d as never).validate(), type: 'IDeployment', module: 'kubernetes-models/apps/v1/Deployment' },
  'policy/v1/PodDisruptionBudget': {
    validate: (d) => new PodDisruptionBudget(d as never).validate(),
    type: 'IPodDisruptionBudget',
    module: 'kubernetes-models/policy/v1/PodDisruptionBudget',
  },
  'autoscaling/v2/HorizontalPodAutoscaler': {
    validate: (d) => new HorizontalPodAutoscaler(d as never).validate(),
    type: 'IHorizontalPodAutoscaler',
    module: 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler',
  },
};

type Doc = { file: string; doc: Record<string, any> };

function manifests(dir = DIR): Doc[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .flatMap((file) =>
      parseAllDocuments(readFileSync(join(dir, file), 'utf8')).map((d) => {
        if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
        return { file, doc: d.toJS() as Record<string, any> };
      }),
    );
}

/**
 * Field names checked the way `kubeconform -strict` does: the JSON schemas accept unknown keys, the
 * shipped interfaces do not (object-literal excess property checks), so each document is type-checked
 * as a literal of its interface. Returns the TypeScript errors, empty when all is well.
 */
function strictFieldCheck(docs: Doc[]): string[] {
  const file = resolve('test/unit/__k8s_manifests__.ts');
  const lines: string[] = [];
  docs.forEach(({ doc }, i) => {
    const m = MODELS[`${doc['apiVersion']}/${doc['kind']}`]!;
    lines.push(`import type { ${m.type} as T${i} } from '${m.module}';`);
  });
  docs.forEach(({ doc }, i) => lines.push(`export const d${i}: T${i} = ${JSON.stringify(doc)};`));
  const source = lines.join('\n');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const read = host.readFile.bind(host);
  host.readFile = (f) => (resolve(f) === file ? source : read(f));
  const exists = host.fileExists.bind(host);
  host.fileExists = (f) => resolve(f) === file || exists(f);
  const getSource = host.getSourceFile.bind(host);
  host.getSourceFile = (f, lang, ...rest) => (resolve(f) === file ? ts.createSourceFile(f, source, lang) : getSource(f, lang, ...rest));
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program, program.getSourceFile(file)).map((d) => {
    const at = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const which = at >= docs.length ? docs[at - docs.length]?.file : undefined;
    return `${which ?? '?'}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
  });
}

const docs = manifests();
const byKind = (k: string): Record<string, any> => docs.find((d) => d.doc['kind'] === k)!.doc;

describe('deploy/kubernetes', () => {
  it('has every object the issue asks for, each of a kind we validate', () => {
    expect(docs.map((d) => d.doc['kind']).sort()).toEqual(['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Secret', 'Service']);
    for (const { file, doc } of docs) expect(MODELS[`${doc['apiVersion']}/${doc['kind']}`], `${file}: ${doc['apiVersion']} ${doc['kind']}`).toBeDefined();
  });

  it('every document passes the Kubernetes API JSON schema (types, required fields, enums)', () => {
    for (const { file, doc } of docs) expect(() => MODELS[`${doc['apiVersion']}/${doc['kind']}`]!.validate(doc), file).not.toThrow();
  });

  it('every field name is one the Kubernetes API knows (strict), and a misspelt one is caught', { timeout: 60_000 }, () => {
    expect(strictFieldCheck(docs)).toEqual([]);
    // The check itself must bite: the same manifests with one typo, and one wrong type, fail it.
    const dir = mkdtempSync(join(tmpdir(), 'k8s-typo-'));
    try {
      writeFileSync(join(dir, 'deployment.yaml'), readFileSync(join(DIR, 'deployment.yaml'), 'utf8').replace('readinessProbe:', 'readinesProbe:'));
      const typo = strictFieldCheck(manifests(dir));
      expect(typo.join('\n')).toMatch(/readinesProbe/);
      const badType = byKind('Deployment');
      expect(() => new Deployment({ ...badType, spec: { ...badType['spec'], replicas: 'three' } }).validate()).toThrow(/replicas/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the pod is hardened, probed on /readyz and /healthz, and its grace outlasts preStop + drain delay + drain', () => {
    const pod = byKind('Deployment')['spec']['template']['spec'];
    const c = pod['containers'][0];
    expect(pod['securityContext']['runAsNonRoot']).toBe(true);
    expect(c['securityContext']).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    expect(c['resources']['requests']).toBeDefined();
    expect(c['resources']['limits']).toBeDefined();
    expect(c['readinessProbe']['httpGet']['path']).toBe('/readyz');
    expect(c['livenessProbe']['httpGet']['path']).toBe('/healthz');
    const cfg = relayConfig();
    const needMs = (c['lifecycle']['preStop']['sleep']['seconds'] as number) * 1000 + cfg.limits.drainDelayMs + cfg.limits.shutdownGraceMs;
    expect(pod['terminationGracePeriodSeconds'] * 1000).toBeGreaterThan(needMs);
    // The drain delay must cover the readiness probe noticing (period x failureThreshold) after the preStop sleep.
    expect(cfg.limits.drainDelayMs).toBeGreaterThanOrEqual(0);
    // Ports the probes and Prometheus use are the ones the relay listens on.
    const ports = Object.fromEntries((c['ports'] as Array<{ name: string; containerPort: number }>).map((p) => [p.name, p.containerPort]));
    expect(ports).toEqual({ smtp: cfg.listen.port, admin: cfg.admin.port });
  });

  it('the Service, PDB and HPA point at the Deployment and its pods; every Secret key referenced exists', () => {
    const labels = byKind('Deployment')['spec']['template']['metadata']['labels'];
    expect(labels).toMatchObject(byKind('Service')['spec']['selector']);
    expect(labels).toMatchObject(byKind('PodDisruptionBudget')['spec']['selector']['matchLabels']);
    const hpa = byKind('HorizontalPodAutoscaler')['spec'];
    expect(hpa['scaleTargetRef']).toMatchObject({ kind: 'Deployment', name: byKind('Deployment')['metadata']['name'] });
    expect(hpa['metrics'].map((m: { type: string }) => m.type)).toEqual(['Pods', 'Resource']);
    expect(hpa['metrics'][0]['pods']['metric']['name']).toBe('dlp_relay_smtp_sessions');
    const secret = byKind('Secret');
    const env = byKind('Deployment')['spec']['template']['spec']['containers'][0]['env'] as Array<{
      valueFrom?: { secretKeyRef?: { name: string; key: string } };
    }>;
    for (const e of env.filter((x) => x.valueFrom?.secretKeyRef)) {
      expect(e.valueFrom!.secretKeyRef!.name).toBe(secret['metadata']['name']);
      expect(Object.keys(secret['stringData'])).toContain(e.valueFrom!.secretKeyRef!.key);
    }
  });

  it("the ConfigMap's dlp-relay.yaml is a valid relay configuration (with the Secret's variables set)", () => {
    const cfg = relayConfig();
    expect(cfg.nextHop.endpoints.length).toBeGreaterThan(1);
    expect(Array.isArray(cfg.ucwi.url)).toBe(true);
    expect(cfg.quarantine.url).toMatch(/^postgres:/);
  });
});

function relayConfig(): ReturnType<typeof loadConfig> {
  const dir = mkdtempSync(join(tmpdir(), 'k8s-cfg-'));
  try {
    const file = join(dir, 'dlp-relay.yaml');
    writeFileSync(file, byKind('ConfigMap')['data']['dlp-relay.yaml']);
    const s = byKind('Secret')['stringData'];
    const env = {
      DLP_RELAY_UCWI_ACCESS_KEY: s['ucwi-access-key'],
      DLP_RELAY_UCWI_SECRET_KEY: s['ucwi-secret-key'],
      DLP_RELAY_ADMIN_TOKEN: s['admin-token'],
      DLP_RELAY_LOOP_KEY: s['loop-key'],
      DLP_RELAY_QUARANTINE_URL: s['quarantine-url'],
    };
    return loadConfig({ file, env, systemFile: null });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
