import type { Static, TSchema } from '@sinclair/typebox';
import type { Session } from '../session/session.js';

/** What a handled request ended as, for the ops metric (`cancelled`: its connection closed first). */
export type Outcome = 'ok' | 'duplicate' | 'dropped' | 'cancelled';

/**
 * One client → gateway frame type: its schema (validated once at the edge) and its handler.
 * Every frame, of every type, is charged to the connection's token bucket before it is handled.
 * A new frame type is one file exporting a Feature plus one line in features/index.ts.
 */
export interface Feature<S extends TSchema = TSchema> {
  readonly type: string;
  readonly schema: S;
  /** The request may omit `chat_id` and then acts in the connection's only chat. */
  readonly impliedChat: boolean;
  handle(session: Session, frame: Static<S>): Outcome | Promise<Outcome>;
}

export function defineFeature<S extends TSchema>(feature: Feature<S>): Feature<S> {
  return feature;
}
