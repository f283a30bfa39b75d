import { Type } from '@sinclair/typebox';
import * as out from '../protocol/outbound.js';
import { defineFeature } from './feature.js';

/** ping: application-level liveness check, answered at once (it costs a token like any frame). */
export const ping = defineFeature({
  type: 'ping',
  impliedChat: false,
  schema: Type.Object({ type: Type.Literal('ping') }),
  handle(session) {
    session.send(out.PONG);
    return 'ok' as const;
  },
});
