// The CAS push outbox, re-exported from its parts so existing imports stay valid: contract (outbox/types.ts),
// filesystem journal (outbox/fs.ts), PostgreSQL table (outbox/pg.ts) and the pusher that drains either (pusher.ts).
export * from './outbox/types.js';
export * from './outbox/fs.js';
export * from './outbox/pg.js';
export * from './pusher.js';
