import { Type } from '@sinclair/typebox';
import { isRfc3339 } from '../protocol/codec.js';
import { RequestError } from '../protocol/errors.js';
import { wireId } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import { EncryptedContent, OptionalChatId, authorRegistration } from './schemas.js';

/**
 * message: save through the main API, then broadcast the saved data to the chat and ack the
 * sender. A 409 means an earlier send was saved: ack `duplicate:true`, and broadcast nothing —
 * unless the chat's history holds no broadcast of that id at all. Then the earlier send was saved
 * but never broadcast (its instance died between the two), and this resend is broadcast in its
 * place, so what was saved still reaches the chat. With HISTORY_SIZE=0 there is nothing to check
 * against and a 409 is never broadcast.
 */
export const message = defineFeature({
  type: 'message',
  impliedChat: true,
  schema: Type.Object({
    type: Type.Literal('message'),
    chat_id: OptionalChatId,
    data: Type.Object({ ...EncryptedContent, created_at: Type.Optional(Type.String({ maxLength: 64 })) }),
  }),
  async handle(session, frame) {
    const reg = authorRegistration(session, frame);
    const { chat } = reg;
    const { data } = frame;
    if (data.created_at !== undefined && !isRfc3339(data.created_at)) {
      throw new RequestError('bad_request', 'data.created_at: must be an RFC 3339 timestamp');
    }
    // Unknown fields pass through untouched; the gateway sets chat and sender and fills defaults.
    const saved = {
      ...data,
      chat_id: wireId(chat),
      sender_id: wireId(reg.user),
      envelopes: data.envelopes ?? {},
      message_type: data.message_type ?? 'text',
      created_at: data.created_at ?? new Date().toISOString(),
    };
    // Serialized once: the main API is sent these bytes, and the broadcast carries them as its data.
    const json = JSON.stringify(saved);
    return session.enqueueWrite(reg, async () => {
      const { hub, api, engine, config } = session.ctx;
      const { duplicate } = await session.upstream(() => api.save(reg.token, chat, json));
      const broadcast = !duplicate || (config.historySize > 0 && !(await engine.contains(chat, data.id).catch(() => false)));
      const position = broadcast ? await hub.append(chat, out.broadcast('message', chat, json), session.id, data.id) : null;
      session.send(out.ack('message', data.id, chat, duplicate, position));
      return duplicate ? ('duplicate' as const) : ('ok' as const);
    });
  },
});
