import { Type } from '@sinclair/typebox';
import { wireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import { EncryptedContent, OptionalChatId, authorRegistration } from './schemas.js';

/** edit_message: the main API decides who may edit; on success the new ciphertext is broadcast. */
export const editMessage = defineFeature({
  type: 'edit_message',
  impliedChat: true,
  schema: Type.Object({
    type: Type.Literal('edit_message'),
    chat_id: OptionalChatId,
    data: Type.Object(EncryptedContent),
  }),
  async handle(session, frame) {
    const reg = authorRegistration(session, frame);
    const { chat } = reg;
    const { data } = frame;
    const edit = {
      ciphertext: data.ciphertext,
      nonce: data.nonce,
      envelopes: data.envelopes ?? {},
      message_type: data.message_type,
      edited_at: new Date().toISOString(),
    };
    return session.enqueueWrite(reg, async () => {
      const { hub, api } = session.ctx;
      await session.upstream((hold) => api.edit(reg.token, chat, data.id, edit, hold));
      const broadcast = { id: data.id, ...edit, sender_id: wireId(reg.user) };
      const position = await hub.append(chat, out.broadcast('edit_message', chat, broadcast), session.id, data.id);
      session.send(out.ack('edit_message', data.id, chat, false, position));
      return 'ok' as const;
    });
  },
});
