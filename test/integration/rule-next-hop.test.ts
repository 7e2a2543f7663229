// A policy rule's own next hop (policy.rules[].nextHop): chosen at MAIL FROM from the sender, client or AUTH user, so its recipients are answered by that gateway in lockstep.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { message, sendMessage, startChain, type Chain } from '../helpers/chain.js';
import { startSecureSink, type SecureSink } from '../helpers/secure-peers.js';
import { makeTestPki } from '../helpers/tls-certs.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.js';
import { nextHopFor } from '../../src/policy/rules.js';

const dir = mkdtempSync(join(tmpdir(), 'rule-hop-'));
let gateway: SecureSink;
let chain: Chain;

beforeAll(async () => {
  const pki = makeTestPki(dir);
  gateway = await startSecureSink({ tls: { keyFile: pki.keyFile, certFile: pki.certFile } });
  chain = await startChain({
    config: {
      gateways: {
        partners: { host: '127.0.0.1', port: gateway.port, tls: { caFile: pki.caFile }, timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 } },
      },
      policy: { rules: [{ name: 'partner-route', match: { senders: ['partner.test'] }, nextHop: 'partners' }] },
    },
  });
});

afterAll(async () => {
  await chain?.close();
  await gateway?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('policy rule with its own next hop', () => {
  it("a matching sender's transaction runs at the rule's gateway over verified TLS; others at the default next hop", async () => {
    const routed = await sendMessage(chain.port, message('clean text for a partner'), { from: 'alice@partner.test', to: ['bob@example.test'] });
    expect(routed.rcpts[0]).toMatch(/^250 /);
    expect(routed.data).toMatch(/^250 /);
    expect(gateway.messages).toHaveLength(1);
    expect(gateway.messages[0]!.secure).toBe(true);
    expect(gateway.messages[0]!.from).toBe('alice@partner.test');
    expect(chain.sink.messages).toHaveLength(0);

    const plain = await sendMessage(chain.port, message('clean text, default route'), { from: 'alice@example.test', to: ['bob@example.test'] });
    expect(plain.data).toMatch(/^250 2\.6\.0 Ok: queued as SINK1$/);
    expect(chain.sink.messages).toHaveLength(1);
    expect(gateway.messages).toHaveLength(1);
  });

  it('the first rule that can be judged at MAIL FROM decides; rules on recipients are passed over', () => {
    const rules = [
      { name: 'by-recipient', match: { recipients: ['x.test'] } },
      { name: 'lab', match: { clientNetworks: ['10.0.0.0/8'] } },
      { name: 'partners', match: { senders: ['partner.test'] }, nextHop: 'partners' },
    ];
    expect(nextHopFor(rules, { sender: 'a@partner.test', clientAddress: '192.0.2.1', authUser: null })).toBe('partners');
    // The lab rule matches first and names no next hop: the default one.
    expect(nextHopFor(rules, { sender: 'a@partner.test', clientAddress: '10.1.2.3', authUser: null })).toBeNull();
    expect(nextHopFor(rules, { sender: 'a@other.test', clientAddress: '192.0.2.1', authUser: null })).toBeNull();
  });

  it('refuses a rule whose nextHop names no gateway, or that also matches on recipients', () => {
    const problems = (policy: Record<string, unknown>, gateways: Record<string, unknown> = {}) => {
      try {
        loadConfig({ file: '/dev/null', env: {}, overrides: { policy, gateways } });
        return [];
      } catch (e) {
        return (e as { problems: Array<{ path: string; message: string }> }).problems.map((p) => `${p.path}: ${p.message}`);
      }
    };
    expect(problems({ rules: [{ name: 'r', match: { senders: ['a.test'] }, nextHop: 'nowhere' }] })).toEqual([
      'policy.rules.0.nextHop: no gateway "nowhere" in gateways',
    ]);
    const gw = { g: { host: '127.0.0.1' } };
    expect(problems({ rules: [{ name: 'r', match: { recipients: ['a.test'] }, nextHop: 'g' }] }, gw)).toEqual([
      'policy.rules.0.nextHop: a rule with nextHop cannot match on recipients: the next hop is chosen at MAIL FROM',
    ]);
    expect(problems({ rules: [{ name: 'r', match: { senders: ['a.test'] }, nextHop: 'g' }] }, gw)).toEqual([]);
  });
});
