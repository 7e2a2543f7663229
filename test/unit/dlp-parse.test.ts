// Table-driven tests of UCWI response parsing: both documented success shapes and every failure class.
import { describe, expect, it } from 'vitest';
import { parseUcwiResponse } from '../../src/dlp/parse.js';
import { ucwiAuthHeaders } from '../../src/dlp/auth.js';
// The client's headers are checked by the simulator's verifier, which is written independently from the client.
import { checkSkgAuth as verifyUcwiAuth } from '../../src/engine/verify-auth.js';

describe('parseUcwiResponse', () => {
  const ok: Array<{ name: string; status: number; body: string; actionCode: number; policies?: number }> = [
    { name: 'result 0 shape (seed table)', status: 200, body: '{"result":0,"actionCode":1}', actionCode: 1 },
    {
      name: 'responseCode 200 shape (seed sample)',
      status: 200,
      body: '{"responseCode":200,"message":"ok","actionCode":2,"incident_info":{"matchedPolicies":[{"name":"PCI","severity":1,"actionSettingName":"Block","numberOfMatches":3}]}}',
      actionCode: 2,
      policies: 1,
    },
    { name: 'only actionCode', status: 200, body: '{"actionCode":6}', actionCode: 6 },
    { name: 'actionCode as numeric string', status: 200, body: '{"result":0,"actionCode":"5"}', actionCode: 5 },
    { name: 'empty incident_info', status: 200, body: '{"result":0,"actionCode":1,"incident_info":{}}', actionCode: 1, policies: 0 },
    { name: 'incident_info as empty list', status: 200, body: '{"result":0,"actionCode":1,"incident_info":[]}', actionCode: 1, policies: 0 },
  ];
  it.each(ok)('success: $name', ({ status, body, actionCode, policies }) => {
    const r = parseUcwiResponse(status, body);
    expect(r).toMatchObject({ ok: true, actionCode });
    if (policies !== undefined && r.ok) expect(r.policies).toHaveLength(policies);
  });

  it('reads matched policies defensively', () => {
    const r = parseUcwiResponse(
      200,
      JSON.stringify({
        result: 0,
        actionCode: 2,
        incident_info: { matchedPolicies: [{ name: 'PCI', severity: 1, actionSettingName: 'Block', numberOfMatches: 2 }, { severity: 'x' }, 7, null] },
      }),
    );
    expect(r).toEqual({
      ok: true,
      actionCode: 2,
      policies: [
        { name: 'PCI', severity: 1, actionSettingName: 'Block', numberOfMatches: 2 },
        { name: '(unnamed)', severity: null, actionSettingName: null, numberOfMatches: null },
      ],
    });
  });

  const failures: Array<{ name: string; status: number; body: string; cls: string }> = [
    { name: 'HTTP 401', status: 401, body: '{"result":1,"errorCode":401,"message":"Unauthorized"}', cls: 'auth' },
    { name: 'HTTP 403 text', status: 403, body: 'forbidden', cls: 'auth' },
    { name: 'HTTP 400', status: 400, body: '{"result":1,"errorCode":400,"message":"Invalid parameter"}', cls: 'client_error' },
    { name: 'HTTP 404', status: 404, body: '', cls: 'client_error' },
    { name: 'HTTP 500', status: 500, body: '{"result":1,"errorCode":500,"message":"Invalid parameter"}', cls: 'server_error' },
    { name: 'HTTP 503 HTML', status: 503, body: '<html>busy</html>', cls: 'server_error' },
    { name: 'HTTP 302', status: 302, body: '', cls: 'bad_response' },
    { name: '200 non-JSON', status: 200, body: 'garbage<<', cls: 'bad_response' },
    { name: '200 truncated JSON', status: 200, body: '{"result":0,"actio', cls: 'bad_response' },
    { name: '200 JSON array', status: 200, body: '[1,2]', cls: 'bad_response' },
    { name: '200 missing actionCode', status: 200, body: '{"result":0}', cls: 'bad_response' },
    { name: '200 actionCode not a number', status: 200, body: '{"result":0,"actionCode":"block"}', cls: 'bad_response' },
    { name: '200 unknown actionCode', status: 200, body: '{"result":0,"actionCode":42}', cls: 'unknown_action' },
    { name: '200 actionCode 0', status: 200, body: '{"result":0,"actionCode":0}', cls: 'unknown_action' },
    { name: '200 result=1 errorCode 500', status: 200, body: '{"result":1,"errorCode":500,"message":"Invalid parameter"}', cls: 'server_error' },
    { name: '200 result=1 errorCode 401', status: 200, body: '{"result":1,"errorCode":401}', cls: 'auth' },
    { name: '200 responseCode 400', status: 200, body: '{"responseCode":400,"message":"bad"}', cls: 'client_error' },
  ];
  it.each(failures)('failure: $name → $cls', ({ status, body, cls }) => {
    expect(parseUcwiResponse(status, body)).toMatchObject({ ok: false, errorClass: cls });
  });
});

describe('UCWI auth', () => {
  it('matches the reference test vector', () => {
    expect(ucwiAuthHeaders('AK_EXAMPLE', 'SK_EXAMPLE', 1_700_000_000_000)).toEqual({
      'x-skg-timestamp': '1700000000',
      authorization: 'SKG AK_EXAMPLE:4a80702b685e5f38ac7e5b1868b9fefcc9bf794256ce08f08cfb621f30d17efc',
    });
  });
  it.each([
    { name: 'valid', skewMs: 0, key: 'AK', reason: null },
    { name: 'skew 299 s', skewMs: 299_000, key: 'AK', reason: null },
    { name: 'skew 301 s', skewMs: 301_000, key: 'AK', reason: 'clock_skew' },
    { name: 'wrong access key', skewMs: 0, key: 'OTHER', reason: 'unknown_key' },
  ])('verify: $name', ({ skewMs, key, reason }) => {
    const now = 1_700_000_000_000;
    const h = ucwiAuthHeaders(key, 'SK', now - skewMs);
    const r = verifyUcwiAuth(h, { accessKey: 'AK', secretKey: 'SK' }, now);
    expect(r.ok ? null : r.reason).toBe(reason);
  });
  it('rejects a signature made with another secret', () => {
    const h = ucwiAuthHeaders('AK', 'WRONG', 1_700_000_000_000);
    expect(verifyUcwiAuth(h, { accessKey: 'AK', secretKey: 'SK' }, 1_700_000_000_000)).toEqual({ ok: false, reason: 'bad_signature' });
  });
});
