import { Type } from '@sinclair/typebox';
import { CLOSE, CancelledError, RequestError, isAuthRefusal } from '../protocol/errors.js';
import type { StreamPosition } from '../engine/stream.js';
import { IdSchema, idKey, type IdKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { Registration } from '../session/registration.js';
import type { Session } from '../session/session.js';
import { defineFeature } from './feature.js';
import { TokenSchema } from './schemas.js';

/**
 * register: verify the token for the chat with the main API, subscribe, record presence,
 * replay what the client missed since its position (if it gave one and history has it), answer
 * `registered` once broadcasts will reach this connection, announce `online`.
 */
export const register = defineFeature({
  type: 'register',
  impliedChat: false,
  schema: Type.Object({
    type: Type.Literal('register'),
    token: TokenSchema,
    chat_id: IdSchema,
    /** Resume after this position: the broadcasts after it are replayed before `registered`. */
    since: Type.Optional(
      Type.Object({
        seq: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
        epoch: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' }),
      }),
    ),
  }),
  async handle(session, frame) {
    const chat = idKey(frame.chat_id);
    session.requireAccepting();
    // One register per (connection, chat) at a time: a flood of them cannot queue main-API calls.
    if (session.chats.isRegistering(chat)) {
      throw new RequestError('rate_limited', 'a register for this chat is already in progress; wait for its answer');
    }
    const { maxChatsPerConnection } = session.ctx.config;
    if (!session.chats.has(chat) && session.chats.held >= maxChatsPerConnection) {
      throw new RequestError('bad_request', `a connection may register to at most ${maxChatsPerConnection} chats`);
    }
    session.chats.startRegistering(chat);
    const tokenFrame = ++session.tokenFrames;
    try {
      await session.enqueue(chat, () => registerChat(session, chat, frame.token, frame.since, tokenFrame));
    } finally {
      session.chats.doneRegistering(chat);
    }
    return 'ok' as const;
  },
});

/** `tokenFrame`: which of the connection's token-carrying frames this register is (Session.tokenFrames). */
async function registerChat(session: Session, chat: IdKey, token: string, since: StreamPosition | undefined, tokenFrame: number): Promise<void> {
  const { hub, engine, api } = session.ctx;
  session.requireEngine();
  // The server API may revoke (user, chat) while this register is under way (see below).
  const asked = api.revision();
  const cached = api.isCached(token, chat);
  let user: IdKey;
  try {
    user = await session.verify(token, chat);
  } catch (err) {
    if (isAuthRefusal(err)) {
      // The main API no longer admits this connection to the chat: a registration it holds ends
      // too — unless only this register's token was refused (401) and the registration holds a
      // newer one (a refresh received after this register was applied first).
      const existing = session.chats.get(chat);
      if (existing !== undefined && (err.code === 'forbidden' || tokenFrame > existing.tokenFrame)) session.endRegistration(existing, err.code);
      session.noteAuthResult(true);
    }
    throw err;
  }
  // Bind the connection to its user in the same tick as the check, so two registers in flight
  // for different chats can never leave one connection acting as two users.
  if (session.user === null) {
    // The server API disconnected the user while this first register was under way: that
    // disconnect could not find this connection (not bound yet), so it takes effect here.
    if (api.disconnectedSince(user, asked)) {
      session.close(CLOSE.disconnected, 'disconnected by the server API');
      throw new CancelledError();
    }
    const { userConnections } = session.ctx;
    if (!userConnections.bind(user)) {
      throw new RequestError('rate_limited', `this user has ${userConnections.max} connections on this instance (MAX_CONNECTIONS_PER_USER); close one first`);
    }
    session.user = user;
  } else if (session.user !== user) {
    session.noteAuthResult(true);
    throw new RequestError('forbidden', 'every registration of a connection must be the same user');
  }
  session.noteAuthResult(false, !cached);
  const existing = session.chats.get(chat);
  if (existing !== undefined) {
    // Idempotent: same subscription and presence; a fresh token replaces the old one — unless a
    // refresh received after this register (which waited in the chat's queue) already did.
    if (tokenFrame > existing.tokenFrame) {
      existing.token = token;
      existing.tokenFrame = tokenFrame;
      session.watchCredentials(existing);
    }
    if (since === undefined) return reanswer(session, existing, await engine.online(chat));
    existing.hold();
    try {
      await catchUp(session, existing, await engine.online(chat), since);
    } finally {
      existing.goLive(null); // no-op when caught up; else live again, nothing held back
    }
    return;
  }
  if (session.closed) throw new CancelledError();
  const { online, cameOnline } = await hub.join(chat, user, session.id);
  if (session.closed) {
    // Closed while joining: take the presence back; nobody was told `online`, so no `offline` either.
    await hub.undoJoin(chat, user, session.id, cameOnline);
    throw new CancelledError();
  }
  // Attached holding: deliveries from here on wait until the replay and `registered` are sent.
  const reg = new Registration(session, chat, token);
  reg.tokenFrame = tokenFrame;
  reg.onlineAnnounced = !cameOnline;
  session.chats.add(reg);
  session.chats.doneRegistering(chat);
  session.registeredOnce();
  hub.attach(chat, reg);
  try {
    // A revoke that arrived after the main API's answer found nothing to end: ask again (the
    // cache was dropped) now that the registration is attached, where a later revoke finds it.
    if (api.forgottenSince(user, chat, asked) && (await session.verify(token, chat)) !== user) {
      throw new RequestError('forbidden', 'every registration of a connection must be the same user');
    }
    await catchUp(session, reg, online, since);
  } catch (err) {
    await session.removeRegistration(reg);
    throw err;
  }
  session.watchCredentials(reg);
  // catchUp returned with the registration current (it throws otherwise), in this same tick.
  if (cameOnline) {
    reg.onlineAnnounced = true;
    await hub.announceOnline(chat, user, session.id);
  }
}

/**
 * Throws the answer to a register whose registration the gateway ended while the register was
 * under way (revoked, token expired, refused on re-verify): `unregistered` has told the client
 * why; the register itself still gets its one answer, an error.
 */
function requireCurrent(session: Session, reg: Registration): void {
  if (session.chats.get(reg.chat) === reg) return;
  if (reg.endedFor === null) throw new CancelledError(); // the connection is closing
  const code = reg.endedFor === 'revoked' ? 'forbidden' : reg.endedFor === 'token_expired' ? 'unauthorized' : reg.endedFor;
  throw new RequestError(code, `the registration ended while it was being made (${reg.endedFor})`);
}

/**
 * A register without `since` for a chat the connection already has: it stays live — nothing is
 * held, nothing skipped — and `registered` names where its client stands: every broadcast up
 * to that position has reached it (or was its own, acked), every later one follows the answer.
 * (Holding and reading the engine's position instead would skip broadcasts the client never got.)
 */
async function reanswer(session: Session, reg: Registration, online: readonly IdKey[]): Promise<void> {
  requireCurrent(session, reg);
  const position = reg.position(session.ctx.hub.deliveredPosition(reg.chat)) ?? (await session.ctx.engine.position(reg.chat));
  requireCurrent(session, reg);
  session.send(out.registered(reg.chat, reg.user, online, position, undefined));
}

/**
 * Reads the chat's position — or, with `since`, everything after it that history still has —
 * then sends the replay, `registered`, and the deliveries held meanwhile minus those the replay
 * or the position already covers. A replay may use at most half of MAX_BUFFERED_BYTES, so
 * catching up can never make the connection a slow consumer; a larger one is `too_far_behind`.
 */
async function catchUp(session: Session, reg: Registration, online: readonly IdKey[], since: StreamPosition | undefined): Promise<void> {
  const { engine } = session.ctx;
  let position: StreamPosition;
  let recovery: Parameters<typeof out.registered>[4];
  if (since === undefined) {
    position = await engine.position(reg.chat);
  } else {
    const result = await engine.recover(reg.chat, since, Math.floor(session.maxBufferedBytes / 2));
    requireCurrent(session, reg);
    position = result.position;
    if (result.recovered) {
      for (const frame of result.frames) session.send(frame);
      recovery = { recovered: true };
    } else {
      recovery = { recovered: false, reason: result.reason };
    }
    session.ctx.metrics.recoveries.inc({ outcome: result.recovered ? 'recovered' : result.reason });
  }
  requireCurrent(session, reg);
  session.ctx.hub.notePosition(reg.chat, position);
  session.send(out.registered(reg.chat, reg.user, online, position, recovery));
  session.debug('registered', { chat: reg.chat, user: reg.user, seq: position.seq, recovered: recovery?.recovered });
  reg.goLive(position);
}
