// Peers that speak TLS or want credentials: a next-hop SMTP sink with STARTTLS and/or AUTH (the test SMTP peer), and an HTTPS front for the UCWI simulator. For the TLS-verification and secrets tests.
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { hostname } from 'node:os';
import { mtaReplies, mtaReply, startSmtpPeer } from './smtp-peer.js';

export interface SecureSink {
  port: number;
  messages: Array<{ from: string; to: string[]; data: Buffer; sha256: string; secure: boolean; user: string | null }>;
  /** Every AUTH attempt: user name and whether it was accepted (never the password). */
  auths: Array<{ user: string; ok: boolean }>;
  close(): Promise<void>;
}

export interface SecureSinkOptions {
  /** STARTTLS with this key and certificate. */
  tls?: { keyFile: string; certFile: string };
  /** Require AUTH (PLAIN/LOGIN) with these credentials before MAIL FROM. */
  auth?: { user: string; pass: string };
}

/** smtp-server's replies as this sink had them (DSN not offered, enhanced codes on), since tests assert its final reply. */
export async function startSecureSink(o: SecureSinkOptions): Promise<SecureSink> {
  const peer = await startSmtpPeer({
    name: hostname(),
    replies: {
      ...mtaReplies({ enhanced: true, queued: () => '2.0.0 Ok: queued' }),
      authFailed: mtaReply(535, '5.7.8 Authentication credentials invalid', { enhanced: true }),
    },
    extensions: { dsn: false },
    ...(o.tls ? { tls: { key: readFileSync(o.tls.keyFile), cert: readFileSync(o.tls.certFile) } } : {}),
    // Loopback test peer: AUTH without TLS is allowed here so the secrets test can run it in clear too.
    ...(o.auth ? { auth: o.auth, authRequired: true } : {}),
    script: {
      accepted: (m) =>
        void sink.messages.push({ from: m.from, to: m.to.map((r) => r.address), data: m.data, sha256: m.sha256, secure: m.secure, user: m.user }),
    },
  });
  const sink: SecureSink = { port: peer.port, messages: [], auths: peer.auths, close: () => peer.close() };
  return sink;
}

export interface HttpsFront {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** https://127.0.0.1:PORT forwarding every request to an http://127.0.0.1 upstream (the simulator). */
export async function startHttpsFront(upstreamPort: number, tls: { keyFile: string; certFile: string }): Promise<HttpsFront> {
  const server: HttpsServer = createHttpsServer({ key: readFileSync(tls.keyFile), cert: readFileSync(tls.certFile) }, (req, res) => {
    const up = httpRequest({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `https://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
