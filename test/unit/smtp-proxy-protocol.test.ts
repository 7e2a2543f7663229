// PROXY protocol parser: v1 and v2 headers parsed exactly, incomplete headers wait, anything malformed is refused.
import { describe, expect, it } from 'vitest';
import { ipv6, parseProxyHeader, V2_SIGNATURE } from '../../src/smtp/proxy-protocol.js';

function v2(cmd: number, fam: number, body: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head[0] = 0x20 | cmd;
  head[1] = fam;
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([V2_SIGNATURE, head, body]);
}
function v4body(src: number[], dst: number[], sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  Buffer.from(src).copy(b, 0);
  Buffer.from(dst).copy(b, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

describe('parseProxyHeader v1', () => {
  it('parses TCP4 and reports the header length', () => {
    const buf = Buffer.from('PROXY TCP4 198.51.100.7 203.0.113.25 51234 25\r\nEHLO x\r\n');
    const r = parseProxyHeader(buf);
    expect(r).toEqual({
      status: 'ok',
      version: 1,
      length: 47,
      source: { address: '198.51.100.7', port: 51234 },
      destination: { address: '203.0.113.25', port: 25 },
    });
  });

  it('parses TCP6 and UNKNOWN', () => {
    const r = parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 2001:db8::2 1000 25\r\n'));
    expect(r.status === 'ok' && r.source).toEqual({ address: '2001:db8::1', port: 1000 });
    const u = parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'));
    expect(u).toEqual({ status: 'ok', version: 1, length: 15, source: null, destination: null });
  });

  it('waits for more bytes while the header is incomplete', () => {
    expect(parseProxyHeader(Buffer.from('PRO')).status).toBe('incomplete');
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4')).status).toBe('incomplete');
  });

  it.each([
    ['no signature', 'EHLO x\r\n'],
    ['bare LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'],
    ['bare CR', 'PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n'],
    ['bad family', 'PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n'],
    ['v6 address in TCP4', 'PROXY TCP4 ::1 5.6.7.8 1 2\r\n'],
    ['leading zero port', 'PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n'],
    ['port too big', 'PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n'],
    ['double space', 'PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n'],
    ['too long', 'PROXY TCP4 ' + '1'.repeat(120)],
  ])('refuses %s', (_n, s) => {
    expect(parseProxyHeader(Buffer.from(s)).status).toBe('invalid');
  });
});

describe('parseProxyHeader v2', () => {
  it('parses PROXY TCP4 and skips TLVs', () => {
    const tlv = Buffer.from([0x04, 0x00, 0x02, 0xaa, 0xbb]);
    const buf = Buffer.concat([v2(1, 0x11, Buffer.concat([v4body([192, 0, 2, 1], [192, 0, 2, 2], 4000, 25), tlv])), Buffer.from('EHLO')]);
    const r = parseProxyHeader(buf);
    expect(r).toEqual({
      status: 'ok',
      version: 2,
      length: 16 + 17,
      source: { address: '192.0.2.1', port: 4000 },
      destination: { address: '192.0.2.2', port: 25 },
    });
  });

  it('parses TCP6 and unmaps IPv4-mapped addresses', () => {
    const body = Buffer.alloc(36);
    Buffer.from('20010db8000000000000000000000001', 'hex').copy(body, 0);
    Buffer.from('00000000000000000000ffffc0000202', 'hex').copy(body, 16);
    body.writeUInt16BE(1234, 32);
    body.writeUInt16BE(25, 34);
    const r = parseProxyHeader(v2(1, 0x21, body));
    expect(r.status === 'ok' && [r.source, r.destination]).toEqual([
      { address: '2001:db8::1', port: 1234 },
      { address: '192.0.2.2', port: 25 },
    ]);
  });

  it('LOCAL keeps the socket addresses and consumes the whole block', () => {
    const r = parseProxyHeader(v2(0, 0x11, v4body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)));
    expect(r).toEqual({ status: 'ok', version: 2, length: 28, source: null, destination: null });
  });

  it('waits while incomplete and refuses bad versions, commands and families', () => {
    const full = v2(1, 0x11, v4body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
    for (const n of [1, 5, 12, 15, 20, full.length - 1]) expect(parseProxyHeader(full.subarray(0, n)).status).toBe('incomplete');
    const badVersion = Buffer.from(full);
    badVersion[12] = 0x11;
    expect(parseProxyHeader(badVersion).status).toBe('invalid');
    const badCmd = Buffer.from(full);
    badCmd[12] = 0x22;
    expect(parseProxyHeader(badCmd).status).toBe('invalid');
    expect(parseProxyHeader(v2(1, 0x12, v4body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2))).status).toBe('invalid');
    expect(parseProxyHeader(v2(1, 0x11, Buffer.alloc(4))).status).toBe('invalid');
    const badSig = Buffer.from(full);
    badSig[4] = 0x01;
    expect(parseProxyHeader(badSig).status).toBe('invalid');
  });

  it('formats IPv6 per RFC 5952', () => {
    expect(ipv6(Buffer.from('00000000000000000000000000000001', 'hex'))).toBe('::1');
    expect(ipv6(Buffer.from('20010db8000000010000000000000001', 'hex'))).toBe('2001:db8:0:1::1');
    expect(ipv6(Buffer.from('20010db8000100010001000100010001', 'hex'))).toBe('2001:db8:1:1:1:1:1:1');
  });
});
