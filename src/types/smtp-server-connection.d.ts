// Types for smtp-server's connection module, which the package exports (smtp-server/lib/*) but does not type.
declare module 'smtp-server/lib/smtp-connection.js' {
  export class SMTPConnection {
    send(code: number, data?: string | string[], context?: string | false): void;
    _useEnhancedStatusCodes(): boolean;
  }
}
