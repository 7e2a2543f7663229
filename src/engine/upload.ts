// Reads one email-channel upload (multipart/form-data): the metadata field, and the EML part streamed straight into the scanner, never buffered.
import type { IncomingMessage } from 'node:http';
import busboy from 'busboy';
import { scanMessage, type CompiledPolicy, type ScanLimits, type ScanReport } from './scan.js';

const METADATA_MAX_BYTES = 1024 * 1024;

export interface ParsedUpload {
  outcome: 'ok' | 'too_large' | 'bad_form' | 'aborted';
  metadataRaw: string | undefined;
  metadataTruncated: boolean;
  scan: Promise<ScanReport> | null;
}

export interface UploadLimits {
  compiled: CompiledPolicy[];
  scanLimits: Partial<ScanLimits>;
  maxBodyBytes: number;
}

export function readUpload(req: IncomingMessage, signal: AbortSignal, o: UploadLimits): Promise<ParsedUpload> {
  const result: ParsedUpload = { outcome: 'ok', metadataRaw: undefined, metadataTruncated: false, scan: null };
  let bb: busboy.Busboy;
  try {
    bb = busboy({
      headers: req.headers,
      limits: { fields: 32, files: 8, parts: 64, fieldSize: METADATA_MAX_BYTES, fileSize: o.maxBodyBytes },
    });
  } catch {
    // Not multipart/form-data at all.
    return Promise.resolve({ ...result, outcome: 'bad_form' });
  }
  bb.on('field', (name, value, info) => {
    if (name === 'metadata' && result.metadataRaw === undefined) {
      result.metadataRaw = value;
      result.metadataTruncated = info.valueTruncated;
    }
  });
  bb.on('file', (name, stream) => {
    if (name === 'request' && result.scan === null) {
      // The EML is never buffered: it streams from the socket through busboy into the parser.
      result.scan = scanMessage(stream, o.compiled, { limits: o.scanLimits, signal });
      // Paths that answer 400/413 never await the scan; a failure there must not become an unhandled rejection.
      result.scan.catch(() => {});
    } else {
      stream.resume();
    }
  });
  return new Promise<ParsedUpload>((resolve) => {
    let settled = false;
    let received = 0;
    const settle = (outcome: ParsedUpload['outcome']): void => {
      if (settled) return;
      settled = true;
      if (outcome !== 'ok') req.unpipe(bb);
      resolve({ ...result, outcome });
    };
    req.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > o.maxBodyBytes) settle('too_large');
    });
    req.on('close', () => {
      if (!req.complete) settle('aborted');
    });
    bb.on('error', () => settle('bad_form'));
    bb.on('close', () => settle('ok'));
    req.pipe(bb);
  });
}
