import { Type } from '@sinclair/typebox';
import { RequestError } from '../protocol/errors.js';
import { IdSchema, MessageIdSchema, idKey, wireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import { Ciphertext, Envelopes, MessageType, OptionalChatId } from './schemas.js';

/** edit_message: the main API decides who may edit; on success the new ciphertext is broadcast. */
export const editMessage = defineFeature({
  type: 'edit_message',
  rateLimited: true,
  schema: Type.Object({
    type: Type.Literal('edit_message'),
    chat_id: OptionalChatId,
    data: Type.Object({
      id: MessageIdSchema,
      ciphertext: Ciphertext,
      nonce: Type.Optional(Type.String()),
      envelopes: Type.Optional(Envelopes),
      message_type: Type.Optional(MessageType),
      sender_id: Type.Optional(IdSchema),
      chat_id: OptionalChatId,
    }),
  }),
  async handle(session, frame) {
    const chat = session.targetChat(frame);
    const reg = session.registration(chat);
    const { data } = frame;
    if (data.sender_id !== undefined && idKey(data.sender_id) !== reg.user) {
      throw new RequestError('forbidden', 'sender_id is not the registered user');
    }
    session.requireAccepting();
    const edit = {
      ciphertext: data.ciphertext,
      nonce: data.nonce,
      envelopes: data.envelopes ?? {},
      message_type: data.message_type,
      edited_at: new Date().toISOString(),
    };
    return session.enqueue(chat, async () => {
      session.requireStillRegistered(reg);
      session.requireEngine();
      const { hub, api } = session.ctx;
      await api.edit(reg.token, chat, data.id, edit);
      const broadcast = { id: data.id, ...edit, sender_id: wireId(reg.user) };
      await hub.publishQuietly(chat, out.broadcast('edit_message', chat, broadcast), session.id);
      session.send(out.ack('edit_message', data.id, chat, false));
      return 'ok' as const;
    });
  },
});
