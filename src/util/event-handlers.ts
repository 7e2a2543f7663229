// A fixed set of event handlers put on an emitter and taken off again as one: both SMTP ends move theirs from the plain socket to the TLS socket at STARTTLS.
import type { EventEmitter } from 'node:events';

/** Whatever EventEmitter.on takes, so each handler keeps its own argument types. */
export type EventHandlers = Readonly<Record<string, Parameters<EventEmitter['on']>[1]>>;

export function attachHandlers(emitter: EventEmitter, handlers: EventHandlers): void {
  for (const [event, fn] of Object.entries(handlers)) emitter.on(event, fn);
}

export function detachHandlers(emitter: EventEmitter, handlers: EventHandlers): void {
  for (const [event, fn] of Object.entries(handlers)) emitter.off(event, fn);
}
