// Local outbox: one durable .eml plus its .json envelope sidecar per message, no leftovers on failure.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import { LocalOutbox, type OutboxSidecar } from '../../src/egress/outbox.js';
import type { Envelope as OutboundEnvelope } from '../../src/smtp/envelope.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'outbox-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const envelope: OutboundEnvelope = {
  from: 'sender@example.com',
  to: [{ address: 'a@example.net', notify: ['FAILURE'], orcpt: 'rfc822;a@example.net' }, { address: 'b@example.net' }],
  smtpUtf8: false,
  bodyType: '8bitmime',
  envid: 'E1',
};

describe('LocalOutbox', () => {
  it('writes the message bytes and an envelope sidecar, both mode 0600', async () => {
    const outbox = new LocalOutbox(join(dir, 'out'));
    const bytes = Buffer.concat([Buffer.from('Subject: hi\r\n\r\n.dot line\r\n'), Buffer.from([0xff, 0x00, 0x80]), Buffer.from('\r\n')]);
    const { path } = await outbox.deliver(envelope, () => Readable.from([bytes.subarray(0, 5), bytes.subarray(5)]), 'q-1');

    expect(basename(path)).toMatch(/^\d{4}-\d{2}-\d{2}T\d{6}\.\d{3}Z-q-1\.eml$/);
    expect(await readFile(path)).toEqual(bytes);
    const sidecar = JSON.parse(await readFile(path.replace(/\.eml$/, '.json'), 'utf8')) as OutboxSidecar;
    expect(sidecar.queryId).toBe('q-1');
    expect(sidecar.message).toBe(basename(path));
    expect(sidecar.envelope).toEqual(envelope);
    expect(new Date(sidecar.storedAt).toString()).not.toBe('Invalid Date');

    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(path.replace(/\.eml$/, '.json'))).mode & 0o777).toBe(0o600);
    // Nothing else in the directory: no temp files left behind.
    expect((await readdir(join(dir, 'out'))).sort()).toEqual([basename(path).replace(/\.eml$/, '.json'), basename(path)].sort());
  });

  it('gives every message its own files, even for the same queryId', async () => {
    const outbox = new LocalOutbox(dir);
    const results = await Promise.all([1, 2, 3].map((i) => outbox.deliver(envelope, () => Readable.from([Buffer.from(`m${i}\r\n`)]), 'same')));
    const paths = new Set(results.map((r) => r.path));
    expect(paths.size).toBe(3);
    const contents = await Promise.all(results.map((r) => readFile(r.path, 'utf8')));
    expect(contents.sort()).toEqual(['m1\r\n', 'm2\r\n', 'm3\r\n']);
    expect((await readdir(dir)).filter((f) => f.endsWith('.json'))).toHaveLength(3);
  });

  it('keeps a hostile queryId inside the directory', async () => {
    const outbox = new LocalOutbox(dir);
    const { path } = await outbox.deliver(envelope, () => Readable.from([Buffer.from('x\r\n')]), '../../etc/passwd');
    expect(path.startsWith(dir + '/')).toBe(true);
    expect(basename(path)).not.toContain('/');
  });

  it('leaves neither message nor sidecar when the message stream fails', async () => {
    const outbox = new LocalOutbox(dir);
    const failing = (): Readable =>
      new Readable({
        read() {
          this.destroy(new Error('spool gone'));
        },
      });
    await expect(outbox.deliver(envelope, failing, 'q-err')).rejects.toThrow('spool gone');
    expect(await readdir(dir)).toEqual([]);
  });

  it('removes a copy finished after the deadline fired: the client was told 451 and will retry', async () => {
    const outbox = new LocalOutbox(dir);
    const deadline = new AbortController();
    const slow = (): Readable =>
      Readable.from(
        (async function* () {
          yield Buffer.from('Subject: late\r\n\r\n');
          deadline.abort(new Error('deadline'));
          yield Buffer.from('body\r\n');
        })(),
      );
    await expect(outbox.deliver(envelope, slow, 'q-late', deadline.signal)).rejects.toThrow('deadline');
    expect(await readdir(dir)).toEqual([]);
  });

  it('leaves nothing when opening the message throws', async () => {
    const outbox = new LocalOutbox(dir);
    await expect(
      outbox.deliver(
        envelope,
        () => {
          throw new Error('cannot open');
        },
        'q-throw',
      ),
    ).rejects.toThrow('cannot open');
    expect(await readdir(dir)).toEqual([]);
  });
});
