import type { RecoveryFailure, StreamPosition } from '../engine/stream.js';
import { ERROR_CODES, type ErrorCode } from './errors.js';
import { wireId, type IdKey, type WireId } from './ids.js';
import { encode } from './codec.js';

/** Builders for every gateway → client frame. Each returns the encoded bytes. */

/**
 * `seq`/`epoch`: the chat's position when the registration went live (every later broadcast on
 * this connection is after it). `recovery`: only when the client asked to resume (`since`).
 */
export function registered(
  chat: IdKey,
  user: IdKey,
  online: readonly IdKey[],
  position: StreamPosition,
  recovery?: { recovered: true } | { recovered: false; reason: RecoveryFailure },
): Buffer {
  return encode({ type: 'registered', chat_id: wireId(chat), user_id: wireId(user), online: online.map(wireId), seq: position.seq, epoch: position.epoch, ...recovery });
}

/**
 * Why the gateway ended a registration the client did not unregister: the main API answered
 * 401 (`unauthorized`) or 403 (`forbidden`) for it, the backend revoked the user's membership
 * through the server API (`revoked`), or the token's JWT `exp` passed without a `refresh`
 * (`token_expired`). An `unregistered` answering the client's own `unregister` has no reason.
 */
export type UnregisterReason = 'unauthorized' | 'forbidden' | 'revoked' | 'token_expired';

export function unregistered(chat: IdKey, reason?: UnregisterReason): Buffer {
  return encode(reason === undefined ? { type: 'unregistered', chat_id: wireId(chat) } : { type: 'unregistered', chat_id: wireId(chat), reason });
}

/** Answers `refresh`: the chats whose registrations now use the new token. */
export function refreshed(chats: readonly IdKey[]): Buffer {
  return encode({ type: 'refreshed', chat_ids: chats.map(wireId) });
}

export type AckOp = 'message' | 'edit_message' | 'delete_message';

/** `position`: where the broadcast of this operation went in the chat's stream (none for a duplicate). */
export function ack(op: AckOp, id: string, chat: IdKey, duplicate: boolean, position: StreamPosition | null = null): Buffer {
  const chat_id = wireId(chat);
  // Two literals, not a spread: this runs for every message.
  return encode(position === null ? { type: 'ack', op, id, chat_id, duplicate } : { type: 'ack', op, id, chat_id, duplicate, seq: position.seq, epoch: position.epoch });
}

/**
 * A broadcast of message, edit_message or delete_message with its data. `data` may be given as
 * its JSON already serialized (a message's body as saved at the main API): it is used as is,
 * so a message is serialized once for both.
 */
export function broadcast(type: AckOp, chat: IdKey, data: object | string): Buffer {
  const json = typeof data === 'string' ? data : JSON.stringify(data);
  return Buffer.from(`{"type":"${type}","chat_id":${JSON.stringify(wireId(chat))},"data":${json}}`);
}

/** A system event the backend published through the server API; numbered in the chat stream like messages. */
export function event(chat: IdKey, data: object): Buffer {
  return encode({ type: 'event', chat_id: wireId(chat), data });
}

export function presence(chat: IdKey, user: IdKey, status: 'online' | 'offline'): Buffer {
  return encode({ type: 'presence', chat_id: wireId(chat), user_id: wireId(user), status });
}

/** Several users' presence changes of one window at once (see hub/presence-announcer.ts). */
export function presenceBatch(chat: IdKey, online: readonly IdKey[], offline: readonly IdKey[]): Buffer {
  return encode({ type: 'presence_batch', chat_id: wireId(chat), online: online.map(wireId), offline: offline.map(wireId) });
}

export function typing(chat: IdKey, user: IdKey): Buffer {
  return encode({ type: 'typing', chat_id: wireId(chat), user_id: wireId(user) });
}

export const PONG: Buffer = encode({ type: 'pong' });

export interface ErrorContext {
  op?: string | undefined;
  id?: string | undefined;
  chat?: IdKey | undefined;
  /** The token bucket's pause (see RequestError.retryAfterMs). */
  retryAfterMs?: number | undefined;
}

export function error(code: ErrorCode, message: string, ctx: ErrorContext = {}): Buffer {
  const frame: Record<string, unknown> = { type: 'error', code, message };
  if (ctx.op !== undefined) frame.op = ctx.op;
  if (ctx.id !== undefined) frame.id = ctx.id;
  if (ctx.chat !== undefined) frame.chat_id = wireId(ctx.chat);
  frame.retryable = ERROR_CODES[code].retryable;
  if (ctx.retryAfterMs !== undefined) frame.retry_after_ms = ctx.retryAfterMs;
  return encode(frame);
}

export type { WireId };
