// A network namespace joined to the root namespace by a veth pair, so a test client has a real non-loopback source address; created and removed by the test itself.
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface NetNs {
  name: string;
  /** Address of the root-namespace end (where the relay listens). */
  hostAddr: string;
  /** Address of the client inside the namespace. */
  clientAddr: string;
  /** The /24 both ends are in. */
  cidr: string;
  /** Runs a Node script inside the namespace and resolves with its stdout; asynchronous, so an in-process relay keeps serving; bounded by `timeoutMs`. */
  runNode(script: string, args: string[], timeoutMs?: number): Promise<string>;
  destroy(): void;
}

const ip = (args: string[]) => execFileSync('ip', args, { stdio: 'pipe' }).toString();

/** Why the namespace test cannot run here, or null when it can (root and a working `ip netns`). */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  const probe = spawnSync('ip', ['netns', 'list'], { stdio: 'pipe' });
  if (probe.error) return `the ip command is missing (${probe.error.message}); apt-get install -y iproute2`;
  if (probe.status !== 0) return `ip netns does not work here: ${probe.stderr.toString().trim()}`;
  return null;
}

/**
 * Creates namespace + veth with a /24 not in use on this host. Names carry the pid so parallel runs
 * do not collide; on any failure everything created so far is removed before the error is thrown.
 */
export function createNetNs(tag: string): NetNs {
  const id = `${tag}${process.pid % 100000}`;
  const name = `dlpns-${id}`;
  const hostIf = `dv${id}h`.slice(0, 15);
  const nsIf = `dv${id}n`.slice(0, 15);
  const used = ip(['-4', 'addr', 'show']);
  let octet = -1;
  // 10.250.x.0/24: pick one no interface here already uses (the pid spreads parallel runs apart).
  for (let i = 0; i < 250; i++) {
    const candidate = (process.pid + i) % 250;
    if (!used.includes(`10.250.${candidate}.`)) {
      octet = candidate;
      break;
    }
  }
  if (octet < 0) throw new Error('no free 10.250.x.0/24 for the test namespace');
  const hostAddr = `10.250.${octet}.1`;
  const clientAddr = `10.250.${octet}.2`;
  const destroy = (): void => {
    // Deleting the namespace deletes its veth end, which takes the peer with it; the link delete is a fallback.
    spawnSync('ip', ['netns', 'del', name], { stdio: 'pipe' });
    spawnSync('ip', ['link', 'del', hostIf], { stdio: 'pipe' });
  };
  try {
    ip(['netns', 'add', name]);
    ip(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
    ip(['link', 'set', nsIf, 'netns', name]);
    ip(['addr', 'add', `${hostAddr}/24`, 'dev', hostIf]);
    ip(['link', 'set', hostIf, 'up']);
    ip(['-n', name, 'addr', 'add', `${clientAddr}/24`, 'dev', nsIf]);
    ip(['-n', name, 'link', 'set', nsIf, 'up']);
    ip(['-n', name, 'link', 'set', 'lo', 'up']);
  } catch (e) {
    destroy();
    throw e;
  }
  return {
    name,
    hostAddr,
    clientAddr,
    cidr: `10.250.${octet}.0/24`,
    runNode(script, args, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        execFile('ip', ['netns', 'exec', name, process.execPath, script, ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
          if (err) reject(new Error(`${err.message}\n${stderr}`));
          else resolve(stdout);
        });
      });
    },
    destroy,
  };
}

/**
 * A dependency-free SMTP client script (plain Node, no tsx) that runs one transaction and prints
 * {greeting, replies} as JSON. Stops after a non-220 greeting. Every wait is bounded.
 */
export function writeSmtpClientScript(dir: string): string {
  const path = join(dir, 'smtp-client.mjs');
  writeFileSync(
    path,
    `// Test client run inside the network namespace: one SMTP transaction, replies printed as JSON.
import { connect } from 'node:net';
const [host, port] = process.argv.slice(2);
const sock = connect({ host, port: Number(port) });
let buf = '';
const waiting = [];
const pending = [];
const lines = [];
sock.on('data', (c) => {
  buf += c.toString('latin1');
  let nl;
  while ((nl = buf.indexOf('\\n')) >= 0) {
    const line = buf.slice(0, nl).replace(/\\r$/, '');
    buf = buf.slice(nl + 1);
    lines.push(line);
    if (/^\\d{3} /.test(line) || /^\\d{3}$/.test(line)) { const r = lines.splice(0).join('\\n'); const w = waiting.shift(); if (w) w(r); else pending.push(r); }
  }
});
const closed = new Promise((r) => sock.on('close', r));
sock.on('error', () => {});
const read = () => pending.length ? Promise.resolve(pending.shift()) : Promise.race([new Promise((r) => waiting.push(r)), closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('timeout'), 10000))]);
const out = { greeting: await read(), replies: [] };
if (out.greeting.startsWith('220')) {
  const body = 'From: a@example.test\\r\\nTo: b@example.test\\r\\nSubject: from the namespace\\r\\n\\r\\nhello from outside\\r\\n.\\r\\n';
  for (const cmd of ['EHLO outside.example.test', 'MAIL FROM:<outsider@example.test>', 'RCPT TO:<victim@example.com>', 'DATA']) {
    sock.write(cmd + '\\r\\n');
    out.replies.push(await read());
  }
  if (out.replies[3].startsWith('354')) { sock.write(body); out.replies.push(await read()); }
  sock.write('QUIT\\r\\n');
  await read();
}
sock.destroy();
// Pipes are synchronous on Linux, so the JSON is out before the exit ends the pending read timers.
process.stdout.write(JSON.stringify(out));
process.exit(0);
`,
  );
  return path;
}
