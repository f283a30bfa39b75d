import { Type } from '@sinclair/typebox';
import { CancelledError, RequestError, isAuthRefusal } from '../protocol/errors.js';
import { IdSchema, idKey, type IdKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import type { Session } from '../session/session.js';
import { defineFeature } from './feature.js';

/**
 * register: verify the token for the chat with the main API, subscribe, record presence,
 * answer `registered` once broadcasts will reach this connection, announce `online`.
 */
export const register = defineFeature({
  type: 'register',
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
    // One register per (connection, chat) at a time: a flood of them cannot queue main-API calls.
    if (session.pendingChats.has(chat)) {
      throw new RequestError('rate_limited', 'a register for this chat is already in progress; wait for its answer');
    }
    const { maxChatsPerConnection } = session.ctx.config;
    if (!session.chats.has(chat) && chatsHeld(session) >= maxChatsPerConnection) {
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

/** Chats registered or being registered, each counted once. */
function chatsHeld(session: Session): number {
  let n = session.chats.size;
  for (const chat of session.pendingChats) if (!session.chats.has(chat)) n++;
  return n;
}

async function registerChat(session: Session, chat: IdKey, token: string): Promise<void> {
  const { hub, engine } = session.ctx;
  session.requireEngine();
  let user: IdKey;
  try {
    user = await session.verify(token, chat);
  } catch (err) {
    if (isAuthRefusal(err)) {
      // The main API no longer admits this connection to the chat: a registration it holds ends too.
      const existing = session.chats.get(chat);
      if (existing !== undefined) session.endRegistration(existing, err.code);
      session.noteAuthResult(true);
    }
    throw err;
  }
  // Bind the connection to its user in the same tick as the check, so two registers in flight
  // for different chats can never leave one connection acting as two users.
  if (session.user === null) session.user = user;
  else if (session.user !== user) {
    session.noteAuthResult(true);
    throw new RequestError('forbidden', 'every registration of a connection must be the same user');
  }
  session.noteAuthResult(false);
  const existing = session.chats.get(chat);
  if (existing !== undefined) {
    // Idempotent: same subscription and presence; a fresh token replaces the old one.
    existing.token = token;
    session.send(out.registered(chat, user, await engine.online(chat)));
    return;
  }
  if (session.closed) throw new CancelledError();
  const { online, cameOnline } = await hub.join(chat, user, session.id);
  if (session.closed) {
    // Closed while joining: take the presence back; nobody was told `online`, so no `offline` either.
    await hub.undoJoin(chat, user, session.id, cameOnline);
    throw new CancelledError();
  }
  session.chats.set(chat, { chat, user, token, lastTypingAt: 0 });
  session.pendingChats.delete(chat);
  session.registeredOnce();
  // Same tick as `registered`: from here on every delivery of the chat reaches this connection.
  hub.attach(chat, session);
  session.send(out.registered(chat, user, online));
  if (cameOnline) await hub.publishQuietly(chat, out.presence(chat, user, 'online'), session.id);
}
