// CIDR lists for client access control, built on node's BlockList so IPv4, IPv6 and IPv4-mapped IPv6 all match correctly.
import { BlockList, isIP } from 'node:net';

/** Parses "10.0.0.0/8", "::1/128" or a bare address; returns an error string when it is not one. */
export function parseCidr(s: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | string {
  const [addr, prefixText, extra] = s.trim().split('/');
  if (extra !== undefined || !addr) return `"${s}" is not an address or CIDR`;
  const v = isIP(addr);
  if (v === 0) return `"${s}" is not an IP address or CIDR`;
  const max = v === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText ?? String(max)) || prefix > max) return `"${s}" has a bad prefix length (0..${max})`;
  return { address: addr, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

/** Addresses whose answer is remembered before the memory starts over. */
const SEEN_MAX = 4096;

export class NetworkList {
  private readonly list = new BlockList();
  readonly entries: readonly string[];
  constructor(cidrs: readonly string[]) {
    this.entries = [...cidrs];
    for (const c of cidrs) {
      const p = parseCidr(c);
      if (typeof p === 'string') throw new Error(p);
      this.list.addSubnet(p.address, p.prefix, p.family);
    }
  }
  /**
   * Answers per address, remembered: BlockList.check builds a SocketAddress per call, which showed in the
   * per-connection profile, while a relay sees the same few MTAs over and over. The list never changes (a
   * reload builds a new one), so a remembered answer stays right; the memory is bounded by clearing it.
   */
  private readonly seen = new Map<string, boolean>();

  /** True when the remote address is inside one of the networks; IPv4-mapped IPv6 (::ffff:a.b.c.d) counts as IPv4. */
  has(address: string | undefined): boolean {
    if (!address) return false;
    const known = this.seen.get(address);
    if (known !== undefined) return known;
    const answer = this.check(address);
    if (this.seen.size >= SEEN_MAX) this.seen.clear();
    this.seen.set(address, answer);
    return answer;
  }

  private check(address: string): boolean {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    const a = mapped ? mapped[1]! : address;
    const v = isIP(a);
    if (v === 0) return false;
    return this.list.check(a, v === 4 ? 'ipv4' : 'ipv6');
  }
}
