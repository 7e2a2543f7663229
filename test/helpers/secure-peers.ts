// Peers that speak TLS or want credentials: a next-hop SMTP sink with STARTTLS and/or AUTH, and an HTTPS front for the UCWI simulator. For the TLS-verification and secrets tests.
import { listenSmtp } from './chain.js';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

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

export async function startSecureSink(o: SecureSinkOptions): Promise<SecureSink> {
  const sink: SecureSink = { port: 0, messages: [], auths: [], close: async () => {} };
  const options: SMTPServerOptions & Record<string, unknown> = {
    logger: false,
    hideENHANCEDSTATUSCODES: false,
    disabledCommands: [...(o.tls ? [] : ['STARTTLS']), ...(o.auth ? [] : ['AUTH'])],
    authOptional: !o.auth,
    authMethods: ['PLAIN', 'LOGIN'],
    // Loopback test peer: AUTH without TLS is allowed here so the secrets test can run it in clear too.
    allowInsecureAuth: true,
    ...(o.tls ? { key: readFileSync(o.tls.keyFile), cert: readFileSync(o.tls.certFile) } : {}),
    onAuth: (auth, _session, cb) => {
      const ok = !!o.auth && auth.username === o.auth.user && auth.password === o.auth.pass;
      sink.auths.push({ user: auth.username ?? '', ok });
      if (ok) cb(null, { user: auth.username });
      else cb(Object.assign(new Error('5.7.8 Authentication credentials invalid'), { responseCode: 535 }));
    },
    onData: (stream, session, cb) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const data = Buffer.concat(chunks);
        const env = session.envelope as unknown as { mailFrom: { address: string }; rcptTo: Array<{ address: string }> };
        sink.messages.push({
          from: env.mailFrom.address,
          to: env.rcptTo.map((r) => r.address),
          data,
          sha256: createHash('sha256').update(data).digest('hex'),
          secure: session.secure,
          user: typeof session.user === 'string' ? session.user : null,
        });
        cb(null, '2.0.0 Ok: queued');
      });
    },
  };
  const { port, close } = await listenSmtp(new SMTPServer(options));
  sink.port = port;
  sink.close = close;
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
