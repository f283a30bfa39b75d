import { Type } from '@sinclair/typebox';
import { MessageIdSchema, wireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import { appearsInHistory } from './resend.js';
import { OptionalChatId } from './schemas.js';

/**
 * A delete's history key: not a message id (those have no ':'), so `contains` tells a message's
 * broadcast from its delete's.
 */
const deleteKey = (id: string) => `d:${id}`;

/**
 * delete_message: the main API decides who may delete; on success `deleted_by` is broadcast.
 * A resend of a delete the main API already carried out (its answer timed out, or the instance
 * died before broadcasting) gets the main API's "deleted, by you" 404: acked as a duplicate, and
 * broadcast unless the chat's history shows it was (asked for a moment: see resend.ts) — a
 * delete the others never hear of would leave the message on their screens.
 */
export const deleteMessage = defineFeature({
  type: 'delete_message',
  impliedChat: true,
  schema: Type.Object({
    type: Type.Literal('delete_message'),
    chat_id: OptionalChatId,
    data: Type.Object({ id: MessageIdSchema, chat_id: OptionalChatId }),
  }),
  async handle(session, frame) {
    const chat = session.targetChat(frame);
    const reg = session.registration(chat);
    const { id } = frame.data;
    return session.enqueueWrite(reg, async () => {
      const { hub, api, engine, config } = session.ctx;
      const { alreadyDeleted } = await session.upstream((hold) => api.remove(reg.token, chat, reg.user, id, hold));
      // Without a history there is nothing to look in: broadcast (a repeated delete changes nothing).
      const broadcast = !alreadyDeleted || config.historySize === 0 || !(await appearsInHistory(engine, chat, deleteKey(id)));
      const position = broadcast ? await hub.append(chat, out.broadcast('delete_message', chat, { id, deleted_by: wireId(reg.user) }), session.id, deleteKey(id)) : null;
      session.send(out.ack('delete_message', id, chat, alreadyDeleted, position));
      return alreadyDeleted ? ('duplicate' as const) : ('ok' as const);
    });
  },
});
