// Spool disk full in the middle of DATA (issue 10 §2): the client hears 452 4.3.1 at its final dot, at once, the session goes on, and the next message relays.
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChain, message, type Chain } from '../helpers/chain.js';
import { SmtpSession } from '../helpers/raw-smtp.js';

let chain: Chain | undefined;
let mounted: string | undefined;

afterEach(async () => {
  await chain?.close();
  chain = undefined;
  if (mounted) {
    try {
      execFileSync('umount', [mounted], { stdio: 'pipe' });
    } catch {
      execFileSync('umount', ['-l', mounted], { stdio: 'pipe' });
    }
    rmSync(mounted, { recursive: true, force: true });
    mounted = undefined;
  }
});

describe('spool disk full during DATA', () => {
  it('answers 452 4.3.1 as soon as the rest of DATA is read, keeps the session, and relays the next message', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip();
    const dir = mkdtempSync(join(tmpdir(), 'dlp-spool-full-'));
    // Mounted before the relay starts, so every spool file (recycled ones too) lives on the small filesystem.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k,mode=0700', 'tmpfs', dir], { stdio: 'pipe' });
    mounted = dir;
    chain = await startChain({ config: { spool: { dir } } });
    const s = await SmtpSession.connect(chain.port);
    await s.cmd('EHLO client.example.test');
    await s.cmd('MAIL FROM:<alice@example.test>');
    await s.cmd('RCPT TO:<bob@example.test>');
    const big = message('clean text\r\n' + ('y'.repeat(998) + '\r\n').repeat(2048)); // about 2 MB, four times the disk
    const t0 = Date.now();
    expect(await s.data(big, { dotStuff: true })).toMatch(/^452 4\.3\.1 Insufficient system storage, try again later \(ref [0-9a-f-]{36}\)$/);
    // Prompt: answered when DATA ended, not after an idle timeout (60 s by default).
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(chain.sink.messages).toHaveLength(0);
    const summary = chain.summaries().at(-1)!;
    expect(summary['action']).toBe('tempfail-spool');
    // The session goes on, and the failed file's space is free again for the next message.
    expect(await s.cmd('MAIL FROM:<alice@example.test>')).toMatch(/^250 /);
    await s.cmd('RCPT TO:<bob@example.test>');
    expect(await s.data(message('clean text, small'), { dotStuff: true })).toMatch(/^250 2\.6\.0 Ok: queued as SINK1$/);
    await s.quit();
    s.close();
    expect(chain.sink.messages).toHaveLength(1);
  });
});
