import { Type } from '@sinclair/typebox';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';

/** ping: application-level liveness check, answered at once and never rate limited. */
export const ping = defineFeature({
  type: 'ping',
  rateLimited: false,
  impliedChat: false,
  schema: Type.Object({ type: Type.Literal('ping') }),
  handle(session) {
    session.send(out.PONG);
    return 'ok' as const;
  },
});
