import { Type } from '@sinclair/typebox';
import { RequestError, isAuthRefusal } from '../protocol/errors.js';
import { idKey, type IdKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
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
    if (session.refreshing) throw new RequestError('rate_limited', 'a refresh is already in progress; wait for its answer');
    const chats: IdKey[] = frame.chat_id === undefined ? [...session.chats.keys()] : [idKey(frame.chat_id)];
    if (chats.length === 0 || chats.some((chat) => !session.chats.has(chat))) throw new RequestError('not_registered', 'not registered to this chat');
    session.refreshing = true;
    try {
      let users: IdKey[];
      try {
        users = await Promise.all(chats.map((chat) => session.verify(frame.token, chat)));
      } catch (err) {
        if (isAuthRefusal(err)) session.noteAuthResult(true);
        throw err;
      }
      if (users.some((user) => user !== session.user)) {
        session.noteAuthResult(true);
        throw new RequestError('forbidden', 'the new token belongs to another user');
      }
      session.noteAuthResult(false);
      const switched = chats.filter((chat) => session.chats.has(chat));
      // Every chat it was for ended meanwhile (unregistered, revoked): nothing was refreshed.
      if (switched.length === 0) throw new RequestError('not_registered', 'not registered to this chat any more');
      for (const chat of switched) {
        const reg = session.registration(chat);
        reg.token = frame.token;
        reg.refreshes++;
        session.watchCredentials(reg);
      }
      session.send(out.refreshed(switched));
    } finally {
      session.refreshing = false;
    }
    return 'ok' as const;
  },
});
