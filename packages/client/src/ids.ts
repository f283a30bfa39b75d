import type { ChatId } from './types.js';

/** A chat id the gateway accepts (docs/protocol.md, "Ids"): a safe integer ≥ 1, or 1–64 of these characters, not only dots. */
const CHAT_ID = /^(?!\.+$)[A-Za-z0-9_.:-]{1,64}$/;

/** A chat id the gateway accepts. */
export function isChatId(id: unknown): id is ChatId {
  return typeof id === 'number' ? Number.isSafeInteger(id) && id >= 1 : typeof id === 'string' && CHAT_ID.test(id);
}

/** A message id: a UUID where the runtime offers one (randomUUID needs a secure context in browsers). */
export function newId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c === undefined) throw new Error('no crypto.getRandomValues in this runtime: pass message ids yourself');
  if (typeof c.randomUUID === 'function') return c.randomUUID();
  return Array.from(c.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}
