import { Type } from '@sinclair/typebox';
import { RequestError } from '../protocol/errors.js';
import { IdSchema, idKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import type { Session } from '../session/session.js';
import { defineFeature } from './feature.js';

/**
 * register: verify the token for the chat with the main API, subscribe, record presence,
 * answer `registered` once broadcasts will reach this connection, announce `online`.
 */
export const register = defineFeature({
  type: 'register',
  rateLimited: false,
  impliedChat: false,
  schema: Type.Object({
    type: Type.Literal('register'),
    // Printable ASCII without spaces: the token travels in an Authorization header.
    token: Type.String({ minLength: 1, maxLength: 8192, pattern: '^[\\x21-\\x7E]+$' }),
    chat_id: IdSchema,
  }),
  async handle(session, frame) {
    const chat = idKey(frame.chat_id);
    session.requireAccepting();
    const { maxChatsPerConnection } = session.ctx.config;
    const known = session.chats.has(chat) || session.pendingChats.has(chat);
    if (!known && session.chats.size + session.pendingChats.size >= maxChatsPerConnection) {
      throw new RequestError('bad_request', `a connection may register to at most ${maxChatsPerConnection} chats`);
    }
    session.pendingChats.add(chat);
    try {
      await session.enqueue(chat, () => registerChat(session, chat, frame.token));
    } finally {
      session.pendingChats.delete(chat);
    }
    return 'ok' as const;
  },
});

async function registerChat(session: Session, chat: string, token: string): Promise<void> {
  const { api, hub, engine } = session.ctx;
  session.requireEngine();
  const user = await api.verify(token, chat);
  // Bind the connection to its user in the same tick as the check, so two registers in flight
  // for different chats can never leave one connection acting as two users.
  if (session.user === null) session.user = user;
  else if (session.user !== user) {
    throw new RequestError('forbidden', 'every registration of a connection must be the same user');
  }
  const existing = session.chats.get(chat);
  if (existing !== undefined) {
    // Idempotent: same subscription and presence; a fresh token replaces the old one.
    existing.token = token;
    session.send(out.registered(chat, user, await engine.online(chat)));
    return;
  }
  const { online, cameOnline } = await hub.join(chat, user, session.id);
  if (session.closed) {
    await hub.leave(chat, user, session);
    return;
  }
  session.chats.set(chat, { chat, user, token, lastTypingAt: 0 });
  session.pendingChats.delete(chat);
  session.registeredOnce();
  // Same tick as `registered`: from here on every delivery of the chat reaches this connection.
  hub.attach(chat, session);
  session.send(out.registered(chat, user, online));
  if (cameOnline) await hub.publishQuietly(chat, out.presence(chat, user, 'online'), session.id);
}
