import { Type } from '@sinclair/typebox';
import { MessageIdSchema, wireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import { OptionalChatId } from './schemas.js';

/** delete_message: the main API decides who may delete; on success `deleted_by` is broadcast. */
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
      const { hub, api } = session.ctx;
      await session.upstream(() => api.remove(reg.token, chat, id));
      const position = await hub.append(chat, out.broadcast('delete_message', chat, { id, deleted_by: wireId(reg.user) }), session.id, id);
      session.send(out.ack('delete_message', id, chat, false, position));
      return 'ok' as const;
    });
  },
});
