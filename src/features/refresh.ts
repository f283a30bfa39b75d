import { Type } from '@sinclair/typebox';
import { RequestError, isAuthRefusal } from '../protocol/errors.js';
import { idKey, type IdKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import type { Session } from '../session/session.js';
import { OptionalChatId, TokenSchema } from './schemas.js';

/**
 * refresh: hand over a fresh token before the current one expires, without re-registering.
 * The token is verified with the main API for each chat it is to cover (`chat_id`, or every
 * registered chat) and must name the connection's user; only when every verify passes do the
 * registrations switch to it (`refreshed`). Otherwise nothing changes: the error says why, and
 * the old token stays in force until it expires.
 */
export const refresh = defineFeature({
  type: 'refresh',
  impliedChat: false,
  schema: Type.Object({ type: Type.Literal('refresh'), token: TokenSchema, chat_id: OptionalChatId }),
  async handle(session, frame) {
    session.requireAccepting();
    if (session.refreshing !== null) throw new RequestError('rate_limited', 'a refresh is already in progress; wait for its answer');
    const wait = Math.ceil(session.refreshPacedUntil - performance.now());
    if (wait > 0) throw new RequestError('rate_limited', `refreshes are paced at RATE_LIMIT_PER_SEC main-API verifies a second; refresh again in ${wait} ms`);
    const chats: IdKey[] = frame.chat_id === undefined ? [...session.chats.keys()] : [idKey(frame.chat_id)];
    if (chats.length === 0 || chats.some((chat) => !session.chats.has(chat))) throw new RequestError('not_registered', 'not registered to this chat');
    const tokenFrame = ++session.tokenFrames;
    session.refreshing = new Set(chats);
    try {
      const cached = chats.every((chat) => session.ctx.api.isCached(frame.token, chat));
      const asked = { calls: 0 };
      try {
        await verifyEvery(session, frame.token, chats, asked);
      } catch (err) {
        if (isAuthRefusal(err)) session.noteAuthResult(true);
        throw err;
      } finally {
        // One frame, many main-API calls: the calls beyond the first (which the frame's token
        // paid for) pace the next refresh at the token bucket's rate, so refreshing with fresh
        // tokens cannot multiply the bucket's bound by the number of registered chats.
        session.refreshPacedUntil = performance.now() + (Math.max(0, asked.calls - 1) * 1000) / session.ctx.config.rateLimitPerSec;
      }
      session.noteAuthResult(false, !cached);
      const switched = chats.filter((chat) => session.chats.has(chat));
      // Every chat it was for ended meanwhile (unregistered, revoked): nothing was refreshed.
      if (switched.length === 0) throw new RequestError('not_registered', 'not registered to this chat any more');
      for (const chat of switched) {
        const reg = session.registration(chat);
        // A register received after this refresh (answered first) holds a newer token: it stays.
        if (tokenFrame < reg.tokenFrame) continue;
        reg.token = frame.token;
        reg.tokenFrame = tokenFrame;
        session.watchCredentials(reg);
      }
      session.send(out.refreshed(switched));
    } finally {
      session.refreshing = null;
    }
    return 'ok' as const;
  },
});

/**
 * Verifies `token` for each chat; throws at the first refusal, or `forbidden` for a token of
 * another user. The first chat is asked alone, so a token the main API refuses costs one call,
 * not one per registered chat; then at most MAX_UPSTREAM_PER_CONNECTION at a time, and none is
 * started after a refusal. `asked` counts the calls that were not answered from the cache.
 */
async function verifyEvery(session: Session, token: string, chats: readonly IdKey[], asked: { calls: number }): Promise<void> {
  const check = async (chat: IdKey): Promise<void> => {
    if (!session.ctx.api.isCached(token, chat)) asked.calls++;
    if ((await session.verify(token, chat)) !== session.user) throw new RequestError('forbidden', 'the new token belongs to another user');
  };
  await check(chats[0]!);
  let next = 1;
  let stopped = false;
  const worker = async (): Promise<void> => {
    while (!stopped && next < chats.length) {
      try {
        await check(chats[next++]!);
      } catch (err) {
        stopped = true;
        throw err;
      }
    }
  };
  const width = Math.min(session.ctx.config.maxUpstreamPerConnection, chats.length - 1);
  await Promise.all(Array.from({ length: width }, worker));
}
