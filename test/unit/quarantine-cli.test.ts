// The quarantine CLI functions against a real fs store in a temp dir: output (table / JSON), exit codes 0/1/2, clear unknown-id errors, release once.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { FsQuarantineStore } from '../../src/quarantine/fs-store.js';
import {
  quarantineAudit,
  quarantineDelete,
  quarantineDownload,
  quarantineList,
  quarantinePurge,
  quarantineRelease,
  quarantineShow,
  type CliContext,
} from '../../src/quarantine/cli.js';
import type { DeliverFn } from '../../src/quarantine/operations.js';
import type { NewQuarantineRecord, QuarantineStore } from '../../src/quarantine/types.js';
import { QuarantineUnavailableError } from '../../src/quarantine/errors.js';
import { acceptAll } from '../helpers/deliver-report.js';

const MSG = Buffer.from('From: alice@example.com\r\nTo: bob@example.org\r\nSubject: Numbers\r\n\r\nCard 4111 1111 1111 1111\r\n');

function record(over: Partial<NewQuarantineRecord> = {}): NewQuarantineRecord {
  const id = randomUUID();
  return {
    id,
    queryId: id,
    receivedAt: new Date().toISOString(),
    envelope: { from: 'alice@example.com', to: [{ address: 'bob@example.org' }, { address: 'carol@example.net' }], smtpUtf8: false },
    clientAddress: '127.0.0.1',
    heloName: null,
    size: MSG.length,
    sha256: createHash('sha256').update(MSG).digest('hex'),
    md5: createHash('md5').update(MSG).digest('hex'),
    subject: 'Numbers \u001b[31m',
    messageId: null,
    actionCode: 6,
    reason: 'dlp:6',
    policies: [{ name: 'PCI', severity: 3, actionSettingName: null, numberOfMatches: 1 }],
    instance: 'test:1',
    ...over,
  };
}

function sink() {
  let text = '';
  return {
    write(s: string) {
      text += s;
      return true;
    },
    get text() {
      return text;
    },
  };
}

describe('quarantine CLI', () => {
  let dir: string;
  let store: FsQuarantineStore;
  let out: ReturnType<typeof sink>;
  let err: ReturnType<typeof sink>;
  let deliveries: number;
  let ctx: CliContext;

  const put = async (over: Partial<NewQuarantineRecord> = {}) => {
    const rec = record(over);
    await store.put(rec, () => Readable.from([MSG]));
    return rec;
  };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'q-cli-'));
    store = new FsQuarantineStore(join(dir, 'q'));
    await store.init();
    out = sink();
    err = sink();
    deliveries = 0;
    const deliver: DeliverFn = async (env) => {
      deliveries++;
      return acceptAll(env, '250 ok');
    };
    ctx = { store, deliver, out, err, actor: { name: 'cli:tester', source: 'testhost' } };
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('lists as a table with control characters neutralised, or as JSON', async () => {
    const rec = await put();
    expect(await quarantineList({}, ctx)).toBe(0);
    const lines = out.text.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+QUARANTINED\s+STATUS\s+ACTION\s+FROM\s+TO\s+SIZE\s+SUBJECT$/);
    expect(lines[1]).toContain(rec.id);
    expect(lines[1]).toContain('bob@example.org +1');
    expect(out.text).not.toContain('\u001b');
    out = sink();
    ctx.out = out;
    expect(await quarantineList({ json: true, sender: 'ALICE@example.com' }, ctx)).toBe(0);
    expect(JSON.parse(out.text).items[0].id).toBe(rec.id);
  });

  it('exits 2 on bad input with a clear message', async () => {
    expect(await quarantineList({ from: 'last tuesday' }, ctx)).toBe(2);
    expect(await quarantineList({ limit: '0' }, ctx)).toBe(2);
    expect(await quarantineList({ status: 'gone' }, ctx)).toBe(2);
    expect(await quarantineList({ cursor: 'zzz' }, ctx)).toBe(2);
    expect(await quarantinePurge({ olderThanDays: 'soon' }, ctx)).toBe(2);
    expect(await quarantineRelease({ id: randomUUID(), recipients: 'a@b.c', redirectTo: 'd@e.f' }, ctx)).toBe(2);
    expect(err.text).toMatch(/--from must be an ISO 8601 time/);
  });

  it('says "dlp-relay: quarantine: no quarantined message with id …" and exits 1 for an unknown id, even one that is not an id', async () => {
    const id = randomUUID();
    for (const fn of [quarantineShow, quarantineDelete, quarantineRelease]) {
      err = sink();
      ctx.err = err;
      expect(await fn({ id }, ctx)).toBe(1);
      expect(err.text).toBe(`dlp-relay: quarantine: no quarantined message with id "${id}"\n`);
    }
    err = sink();
    ctx.err = err;
    expect(await quarantineShow({ id: '../etc/passwd\u001b' }, ctx)).toBe(1);
    expect(err.text).toBe('dlp-relay: quarantine: no quarantined message with id "../etc/passwd\\u001b" (ids are UUIDs)\n');
  });

  it('shows metadata and the preview', async () => {
    const rec = await put();
    expect(await quarantineShow({ id: rec.id }, ctx)).toBe(0);
    expect(out.text).toContain(`id:            ${rec.id}`);
    expect(out.text).toContain('policies:      PCI');
    expect(out.text).toContain('Card 4111 1111 1111 1111');
    expect(out.text).not.toContain('\u001b');
  });

  it('releases each recipient once; once all are delivered a further attempt says already released and exits 1', async () => {
    const rec = await put();
    expect(await quarantineRelease({ id: rec.id, recipients: ['carol@example.net'] }, ctx)).toBe(0);
    expect(out.text).toBe(`accepted  carol@example.net  250  250 ok\n${rec.id}: 1 of 1 accepted; still held for bob@example.org\n`);
    out = sink();
    ctx.out = out;
    // The plain release that follows goes to the one not yet delivered.
    expect(await quarantineRelease({ id: rec.id }, ctx)).toBe(0);
    expect(out.text).toBe(`accepted  bob@example.org  250  250 ok\n${rec.id}: released completely\n`);
    expect(await quarantineRelease({ id: rec.id }, ctx)).toBe(1);
    expect(err.text).toBe(
      `dlp-relay: quarantine: ${rec.id}: already released at ${(await store.get(rec.id))!.release!.at} by cli:tester [testhost]; not delivered again\n`,
    );
    expect(deliveries).toBe(2);
    const audit = await store.listAudit({ target: rec.id, action: 'release' });
    expect(audit.items.map((a) => [a.actor, a.source, a.result])).toEqual([
      ['cli:tester', 'testhost', 'already-released'],
      ['cli:tester', 'testhost', 'ok'],
      ['cli:tester', 'testhost', 'ok'],
    ]);
  });

  it('downloads to a new file only, deletes, purges, and lists the audit', async () => {
    const rec = await put();
    const file = join(dir, 'out.eml');
    expect(await quarantineDownload({ id: rec.id, output: file }, ctx)).toBe(0);
    expect((await readFile(file)).equals(MSG)).toBe(true);
    expect(await quarantineDownload({ id: rec.id, output: file }, ctx)).toBe(1); // never overwrites
    expect(await quarantineDelete({ id: rec.id }, ctx)).toBe(0);
    expect(await quarantineDelete({ id: rec.id }, ctx)).toBe(1);
    const doomed = await put();
    // "Older than 0 days" means quarantined before the purge's own clock reading: let the clock move past
    // the put's millisecond (on a fast runtime both can fall in the same one, and then nothing is older).
    await new Promise((r) => setTimeout(r, 5));
    expect(await quarantinePurge({ olderThanDays: '0', json: true }, ctx)).toBe(0);
    expect(JSON.parse(out.text.trim().split('\n').pop()!)).toMatchObject({ purged: 1, ids: [doomed.id] });
    out = sink();
    ctx.out = out;
    expect(await quarantineAudit({ action: 'purge' }, ctx)).toBe(0);
    expect(out.text).toMatch(/cli:tester\s+testhost\s+purge\s+-\s+ok/);
    expect(out.text).toMatch(new RegExp(`purge\\s+${doomed.id}\\s+ok`)); // the per-id entry names the message
  });

  it('exits 1 with a clear message when the store is unreachable', async () => {
    const down = new Proxy({} as QuarantineStore, {
      get: () => async () => {
        throw new QuarantineUnavailableError('quarantine database unavailable (list): connect ECONNREFUSED');
      },
    });
    expect(await quarantineList({}, { ...ctx, store: down })).toBe(1);
    expect(err.text).toMatch(/^dlp-relay: quarantine: store unavailable: /);
  });
});
