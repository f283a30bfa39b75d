import type { Chats } from './chats.js';
import type { Core } from './core.js';
import { ClientError, type ClientErrorCode } from './errors.js';
import { WRITE_OPS } from './outbox.js';
import { writeKey } from './requests.js';
import type { TokenRefresh } from './token-refresh.js';
import type { ChatId, Frame, UserId } from './types.js';
import type { Writes } from './writes.js';

/** Hands each frame from the gateway to the part of the client it concerns. */
export class Dispatcher {
  constructor(
    private readonly core: Core,
    private readonly chats: Chats,
    private readonly writes: Writes,
    private readonly refresh: TokenRefresh,
  ) {}

  /** A message of the connection: frames the SDK does not know, nor expects, are `unhandled`. */
  onMessage(data: unknown): void {
    if (typeof data !== 'string') return;
    let frame: Frame;
    try {
      frame = JSON.parse(data) as Frame;
    } catch {
      return;
    }
    if (typeof frame !== 'object' || frame === null || typeof frame.type !== 'string') return;
    const { requests } = this.core;
    const chatKey = String(frame.chat_id);
    const state = frame.chat_id === undefined ? undefined : this.chats.get(chatKey);
    // A chat being left gets no more events, but its registration still answers, and its stream
    // and presence are still kept (muted): opened again before the leave completes, it goes on.
    const open = state !== undefined && state.status !== 'gone' ? state : undefined;
    const live = open !== undefined && !open.leaving ? open : undefined;
    switch (frame.type) {
      case 'message':
      case 'edit_message':
      case 'delete_message':
      case 'event':
        if (open === undefined) break;
        return this.chats.onBroadcast(open, frame);
      case 'presence':
        if (open === undefined) break;
        this.chats.onPresence(open, frame.user_id as UserId, frame.status === 'online' ? 'online' : 'offline');
        return;
      case 'presence_batch':
        if (open === undefined) break;
        for (const user of Array.isArray(frame.online) ? (frame.online as UserId[]) : []) this.chats.onPresence(open, user, 'online');
        for (const user of Array.isArray(frame.offline) ? (frame.offline as UserId[]) : []) this.chats.onPresence(open, user, 'offline');
        return;
      case 'typing':
        if (live === undefined) break;
        this.core.emit('typing', { chatId: live.chat.id, userId: frame.user_id as UserId });
        return;
      case 'registered': {
        const request = requests.answered(`r:${chatKey}`);
        if (state === undefined || state.status === 'gone') {
          // The chat was left while its register was out: the gateway registered it all the same.
          if (request !== undefined && frame.chat_id !== undefined) return this.chats.unregister(frame.chat_id as ChatId, chatKey);
          break;
        }
        // Also a second answer to a register sent twice (after a drop or a timeout), or one
        // that comes while a refused resend waits to be retried: as truthful as the first.
        return this.chats.onRegistered(state, frame);
      }
      case 'unregistered':
        // Without a reason it answers our own `unregister`: the chat is already forgotten.
        if (typeof frame.reason !== 'string') {
          requests.answered(`u:${chatKey}`);
          return this.chats.placeFreed();
        }
        if (state === undefined || state.status === 'gone') {
          // A chat left that the gateway ended itself (revoked, forbidden, expired): its place there is free.
          this.chats.placeFreed();
          break;
        }
        return this.chats.onUnregistered(state, frame.reason);
      case 'refreshed':
        if (this.refresh.onRefreshed()) return;
        break;
      case 'ack':
        return this.writes.onAck(frame);
      case 'error':
        return this.onError(frame);
      case 'pong':
        // Only the SDK sends pings, so a pong is never news to the app: one that finds no ping
        // waiting answers a resend whose first send the gateway read after all.
        return requests.answered('p')?.onAnswer?.(true);
    }
    // A chat being left, or left lately (a replay, or frames before its unregister's answer): expected.
    if (frame.chat_id !== undefined && (state?.leaving === true || (state === undefined && this.chats.leftLately(chatKey)))) return;
    this.core.emit('unhandled', frame);
  }

  private onError(frame: Frame): void {
    const { requests } = this.core;
    const op = typeof frame.op === 'string' ? frame.op : '';
    const code = String(frame.code) as ClientErrorCode;
    const details = {
      retryable: frame.retryable === true,
      op,
      ...(typeof frame.id === 'string' ? { id: frame.id } : {}),
      ...(frame.chat_id === undefined ? {} : { chatId: frame.chat_id as ChatId }),
    };
    const error = new ClientError(code, typeof frame.message === 'string' ? frame.message : code, details);
    const chatKey = String(frame.chat_id);
    const key =
      op === 'register' ? `r:${chatKey}`
      : op === 'unregister' ? `u:${chatKey}`
      : op === 'ping' ? 'p'
      : op === 'refresh' ? 'f'
      : WRITE_OPS.has(op) && typeof frame.id === 'string' && frame.chat_id !== undefined ? writeKey(chatKey, op, frame.id)
      : null;
    const request = key === null ? undefined : requests.answered(key);
    // Refused by the token bucket: the frame was not read (see `isBucketPause`).
    const unread = code === 'rate_limited' && isBucketPause(frame);
    if (unread) {
      // Which frame was refused tells which later ones the gateway may have dropped unread;
      // when it cannot be told (typing, a frame of sendRaw), every unanswered one is suspect.
      const no = request?.no ?? (op === 'typing' ? (this.chats.get(chatKey)?.lastTypingNo ?? 0) : 0);
      requests.rateLimited(no);
    }
    if (op === 'register') {
      const state = this.chats.get(chatKey);
      if (state?.status === 'registering') return unread ? this.chats.registerUnread(state, request) : this.chats.registerRefused(state, error);
      // A chat left while its register was out holds no place at the gateway any more (nor took
      // one, if the register was not read).
      if (request !== undefined && (state === undefined || state.status === 'gone')) this.chats.placeFreed();
      if (request !== undefined) return; // a second answer to a register sent twice
    } else if (WRITE_OPS.has(op) && typeof frame.id === 'string') {
      if (this.writes.onError(request, op, frame.id, frame.chat_id === undefined ? undefined : chatKey, error)) return;
    } else if (op === 'ping') {
      // Refused by the token bucket: sent again once the gateway reads again (the pacer holds it
      // back meanwhile), as every request it dropped is. The connection is up: not `disconnected`.
      if (code === 'rate_limited' && request !== undefined) return request.resend();
      return request?.onAnswer?.(false);
    } else if (op === 'refresh') {
      // Refused by the token bucket: sent again after the pause (not a failed attempt).
      if (unread ? this.refresh.onUnread(request !== undefined) : this.refresh.onError(error, request !== undefined, code === 'rate_limited' && refreshInProgress(frame))) return;
    } else if (op === 'unregister') {
      // Refused by the token bucket: not read, so the gateway still holds the chat (its members
      // still see the user online, and it takes a place): sent again once the gateway reads again
      // (the pacer holds it back meanwhile) — unless the chat was opened again since.
      if (unread) return request?.resend();
      // The chat is forgotten here either way; only an answer saying the gateway holds no
      // registration of it frees a place there.
      if (code === 'not_registered') this.chats.placeFreed();
      return;
    } else if (op === 'typing') {
      return; // best effort
    } else if (op === '' && !unread) {
      requests.onUnnamedError(error);
    }
    this.core.emit('unhandled', frame);
  }
}

/**
 * A `rate_limited` from the gateway's token bucket: it stops reading the connection and drops
 * what it had read with the refused frame. Such errors carry `retry_after_ms`; a gateway older
 * than that field is recognised by its message, and an error without `op` can only be the
 * bucket. Every other `rate_limited` (a register or refresh already in flight, the pending-writes
 * cap, a main-API 429) drops nothing and is an ordinary answer.
 */
function isBucketPause(frame: Frame): boolean {
  if (typeof frame.retry_after_ms === 'number') return true;
  return typeof frame.op !== 'string' || (typeof frame.message === 'string' && /too many requests/i.test(frame.message));
}

/** The answer to a `refresh` sent while another is verified: that one's answer is still to come. */
function refreshInProgress(frame: Frame): boolean {
  return !isBucketPause(frame) && typeof frame.message === 'string' && /already in progress/i.test(frame.message);
}
