import { Type } from '@sinclair/typebox';
import { RequestError } from '../protocol/errors.js';
import { IdSchema, idKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';

/** unregister: leave one chat; `offline` goes out if this was the user's last connection. */
export const unregister = defineFeature({
  type: 'unregister',
  impliedChat: false,
  schema: Type.Object({ type: Type.Literal('unregister'), chat_id: IdSchema }),
  async handle(session, frame) {
    const chat = idKey(frame.chat_id);
    if (!session.chats.has(chat) && !session.chats.isRegistering(chat)) {
      throw new RequestError('not_registered', 'not registered to this chat');
    }
    // Queued behind the chat's earlier operations, so a register in flight finishes first.
    await session.enqueue(chat, async () => {
      await session.removeRegistration(session.registration(chat));
      session.send(out.unregistered(chat));
      session.debug('unregistered', { chat });
    });
    return 'ok' as const;
  },
});
