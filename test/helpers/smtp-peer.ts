// The one scriptable SMTP peer of the tests: every fake next hop is this server on raw node:net/node:tls sockets. Written apart from src/smtp on purpose (it is what checks our engine): records every command line and message byte for byte, keeps transaction state like an MTA, answers by script.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { Conn } from './smtp-peer-conn.js';
import type { PeerOptions, SmtpPeer } from './smtp-peer-script.js';

export { mtaReplies, mtaReply, PLAIN_REPLIES, type PeerReplies } from './smtp-peer-replies.js';
export * from './smtp-peer-script.js';
export { dotStuff, unstuff, type PathArgs } from './smtp-peer-wire.js';

export async function startSmtpPeer(o: PeerOptions = {}): Promise<SmtpPeer> {
  const sockets = new Set<Socket>();
  const peer: SmtpPeer = {
    port: 0,
    script: o.script ?? {},
    sessions: [],
    messages: [],
    auths: [],
    connections: 0,
    closedConnections: 0,
    dataStarted: 0,
    dots: 0,
    partial: 0,
    count: (prefix) => peer.sessions.reduce((n, s) => n + s.commands.filter((l) => l.toUpperCase().startsWith(prefix.toUpperCase())).length, 0),
    close: async () => {},
  };
  const onConnection = (sock: Socket): void => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    peer.connections++;
    peer.sessions.push(new Conn(peer, o, peer.sessions.length, sock));
  };
  const server: Server = o.implicitTls && o.tls ? createTlsServer({ key: o.tls.key, cert: o.tls.cert }, onConnection) : createServer(onConnection);
  // A client failing its TLS handshake is a test case, not an error of the peer.
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  peer.port = (server.address() as AddressInfo).port;
  peer.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return peer;
}
