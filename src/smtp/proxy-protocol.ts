// PROXY protocol v1 (text) and v2 (binary) header parser: strict, incremental (says "incomplete" until the whole header is in), never guesses.
import { isIPv4, isIPv6 } from 'node:net';

export interface ProxyEndpoint {
  address: string;
  port: number;
}

export type ProxyParseResult =
  | { status: 'incomplete' }
  | { status: 'invalid'; reason: string }
  | {
      status: 'ok';
      version: 1 | 2;
      /** Header bytes to consume; anything after them is the client's own data. */
      length: number;
      /** null for v1 UNKNOWN, v2 LOCAL or an unspecified family: keep the socket's own addresses. */
      source: ProxyEndpoint | null;
      destination: ProxyEndpoint | null;
    };

export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ');
/** v1 header limit including CRLF (the spec's 107). */
const V1_MAX = 107;

/** Parses the header at the start of `buf`. */
export function parseProxyHeader(buf: Buffer): ProxyParseResult {
  if (startsWithPrefixOf(buf, V2_SIGNATURE)) return buf.length < 16 ? { status: 'incomplete' } : parseV2(buf);
  if (startsWithPrefixOf(buf, V1_PREFIX)) return buf.length < V1_PREFIX.length ? { status: 'incomplete' } : parseV1(buf);
  return { status: 'invalid', reason: 'no PROXY protocol signature' };
}

/** True when buf and sig agree over their common length (buf may be shorter: more may come). */
function startsWithPrefixOf(buf: Buffer, sig: Buffer): boolean {
  const n = Math.min(buf.length, sig.length);
  return buf.subarray(0, n).equals(sig.subarray(0, n));
}

function parseV1(buf: Buffer): ProxyParseResult {
  const window = buf.subarray(0, V1_MAX);
  const lf = window.indexOf(0x0a);
  if (lf < 0) return buf.length >= V1_MAX ? { status: 'invalid', reason: 'v1 header without CRLF within 107 bytes' } : incompleteUnlessCr(window);
  if (lf === 0 || window[lf - 1] !== 0x0d) return { status: 'invalid', reason: 'v1 header line does not end in CRLF' };
  const line = window.subarray(0, lf - 1).toString('latin1');
  if (/[\r\n\0]/.test(line)) return { status: 'invalid', reason: 'v1 header holds a control character' };
  const parts = line.split(' ');
  const length = lf + 1;
  if (parts[1] === 'UNKNOWN') return { status: 'ok', version: 1, length, source: null, destination: null };
  if (parts.length !== 6) return { status: 'invalid', reason: 'v1 header does not have 6 fields' };
  const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const valid = proto === 'TCP4' ? isIPv4 : proto === 'TCP6' ? isIPv6 : null;
  if (!valid) return { status: 'invalid', reason: `v1 protocol "${proto.slice(0, 10)}" unknown` };
  if (!valid(src) || !valid(dst)) return { status: 'invalid', reason: 'v1 address does not match its protocol' };
  const sp = parsePort(sport);
  const dp = parsePort(dport);
  if (sp === null || dp === null) return { status: 'invalid', reason: 'v1 port invalid' };
  return { status: 'ok', version: 1, length, source: { address: unmapIPv4(src), port: sp }, destination: { address: unmapIPv4(dst), port: dp } };
}

/** A lone CR not followed by LF is already invalid; otherwise wait for more bytes. */
function incompleteUnlessCr(window: Buffer): ProxyParseResult {
  const cr = window.indexOf(0x0d);
  return cr >= 0 && cr < window.length - 1 ? { status: 'invalid', reason: 'v1 header holds a bare CR' } : { status: 'incomplete' };
}

function parsePort(s: string): number | null {
  if (!/^(0|[1-9]\d{0,4})$/.test(s)) return null;
  const n = Number(s);
  return n <= 65535 ? n : null;
}

function parseV2(buf: Buffer): ProxyParseResult {
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return { status: 'invalid', reason: 'v2 version is not 2' };
  const cmd = verCmd & 0x0f;
  if (cmd !== 0 && cmd !== 1) return { status: 'invalid', reason: 'v2 command is neither LOCAL nor PROXY' };
  const famProto = buf[13]!;
  const len = buf.readUInt16BE(14);
  const length = 16 + len;
  if (buf.length < length) return { status: 'incomplete' };
  // LOCAL: the proxy's own connection (health check); the address block, if any, is skipped.
  if (cmd === 0) return { status: 'ok', version: 2, length, source: null, destination: null };
  // UNSPEC: the receiver uses the real connection endpoints.
  if (famProto === 0x00) return { status: 'ok', version: 2, length, source: null, destination: null };
  const family = V2_TCP_FAMILIES.get(famProto);
  if (!family) return { status: 'invalid', reason: `v2 family/transport 0x${famProto.toString(16)} not supported for SMTP` };
  // Source address, destination address, source port, destination port; anything after them (TLVs) is skipped.
  const n = family.addressBytes;
  if (len < 2 * n + 4) return { status: 'invalid', reason: `v2 ${family.name} address block too short` };
  const body = buf.subarray(16, length);
  return {
    status: 'ok',
    version: 2,
    length,
    source: { address: family.text(body.subarray(0, n)), port: body.readUInt16BE(2 * n) },
    destination: { address: family.text(body.subarray(n, 2 * n)), port: body.readUInt16BE(2 * n + 2) },
  };
}

/** The v2 address families SMTP can use (TCP over IPv4, TCP over IPv6): address size and text form. */
const V2_TCP_FAMILIES = new Map<number, { name: string; addressBytes: number; text: (b: Buffer) => string }>([
  [0x11, { name: 'IPv4', addressBytes: 4, text: (b) => ipv4(b) }],
  [0x21, { name: 'IPv6', addressBytes: 16, text: (b) => unmapIPv4(ipv6(b)) }],
]);

function ipv4(b: Buffer): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952 text form: lower-case hex, no leading zeros, the longest run (>= 2) of zero groups as '::'. */
export function ipv6(b: Buffer): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** '::ffff:192.0.2.1' → '192.0.2.1' (also the hex form '::ffff:c000:201'); other addresses unchanged. */
export function unmapIPv4(address: string): string {
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (dotted) return dotted[1]!;
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (hex) {
    const hi = parseInt(hex[1]!, 16);
    const lo = parseInt(hex[2]!, 16);
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return address;
}
