// A minimal UCWI stand-in for the benchmark's diagnostic rows: checks the SKG signature, reads and discards the upload, answers actionCode 1 (or --action-code); it does no content scanning, so it models a DLP server whose CPU is not on this machine.
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkSkgAuth } from '../src/engine/verify-auth.js';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    latency: { type: 'string', default: '0' },
    'action-code': { type: 'string', default: '1' },
  },
});
const accessKey = process.env['DLP_RELAY_UCWI_ACCESS_KEY'] ?? '';
const secretKey = process.env['DLP_RELAY_UCWI_SECRET_KEY'] ?? '';
const latencyMs = Number(values.latency);
const actionCode = Number(values['action-code']);
if (!values.port || !accessKey || !secretKey) {
  process.stderr.write(
    'usage: DLP_RELAY_UCWI_ACCESS_KEY=… DLP_RELAY_UCWI_SECRET_KEY=… node --import tsx bench/ucwi-stub.ts --port P [--latency MS] [--action-code N]\n',
  );
  process.exit(2);
}

let n = 0;
const server = createServer((req, res) => {
  const auth = checkSkgAuth(req.headers, { accessKey, secretKey }, Date.now());
  req.on('data', () => {});
  req.on('end', () => {
    void (async () => {
      if (!auth.ok) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"result":1,"errorCode":401,"message":"Unauthorized"}');
        return;
      }
      if (latencyMs > 0) await sleep(latencyMs);
      n++;
      const body = JSON.stringify({ result: 0, actionCode, queryID: `stub-${n}`, incident_info: { matchedPolicies: [] } });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
    })();
  });
});
server.keepAliveTimeout = 10_000;
server.listen(Number(values.port), values.host, () => process.stderr.write(`UCWI stub on http://${values.host}:${values.port} (latency ${latencyMs} ms)\n`));
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => server.close(() => process.exit(0)).closeAllConnections());
