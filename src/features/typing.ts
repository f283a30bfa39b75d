import { Type } from '@sinclair/typebox';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';
import { OptionalChatId } from './schemas.js';

const TYPING_INTERVAL_MS = 1000;

/** typing: never saved; at most one per connection per chat per second is forwarded. */
export const typing = defineFeature({
  type: 'typing',
  impliedChat: true,
  schema: Type.Object({
    type: Type.Literal('typing'),
    chat_id: OptionalChatId,
    data: Type.Optional(Type.Object({ chat_id: OptionalChatId })),
  }),
  async handle(session, frame) {
    const chat = session.targetChat(frame);
    const reg = session.registration(chat);
    // Refused while draining even when the throttle would drop it: the client learns to reconnect.
    session.requireAccepting();
    // A monotonic clock: a wall clock stepped back would silence typing until it caught up.
    const now = performance.now();
    if (reg.lastTypingAt !== 0 && now - reg.lastTypingAt < TYPING_INTERVAL_MS) return 'dropped' as const;
    reg.lastTypingAt = now;
    await session.ctx.hub.publish(chat, out.typing(chat, reg.user), session.id);
    return 'ok' as const;
  },
});
