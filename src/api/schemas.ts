import { Type, type Static } from '@sinclair/typebox';
import { ID_PATTERN, IdSchema, MESSAGE_ID_PATTERN } from '../protocol/ids.js';

/**
 * Requests and answers of the server API (`/api/v1`). They validate every request and are the
 * source of the OpenAPI document (`docs/openapi.json`).
 */

/** A chat or user id in a path: the wire id's string form. */
const PathId = Type.String({ pattern: ID_PATTERN, description: 'A chat or user id: digits (a positive integer) or 1–64 of A–Z a–z 0–9 _ . : - (not only dots)' });

export const ChatParams = Type.Object({ chat_id: PathId });
export const UserParams = Type.Object({ user_id: PathId });

export const RevokeBody = Type.Object({ user_id: IdSchema }, { additionalProperties: false });
export const DisconnectBody = Type.Object(
  { reason: Type.Optional(Type.String({ maxLength: 120, pattern: '^[\\x20-\\x7E]*$', description: 'Sent as the WebSocket close reason (printable ASCII)' })) },
  { additionalProperties: false },
);
export const PublishBody = Type.Object(
  {
    id: Type.Optional(
      Type.String({
        pattern: MESSAGE_ID_PATTERN,
        description:
          "Makes a resend safe: a publish whose id the chat's recent history already holds (an earlier attempt published it, even one answered 503) publishes nothing and is answered with that event's position and `duplicate: true`. 1–64 of A–Z a–z 0–9 _ -, one per event within a chat; never sent to clients. Recent: the chat's last HISTORY_SIZE broadcasts appended up to about a minute before the resend. Without an id, a publish answered 503 after a timeout may have been published, and a resend may publish it again",
      }),
    ),
    event: Type.Object({}, { additionalProperties: true, description: 'Any JSON object; clients receive it as the `data` of an `event` frame' }),
  },
  { additionalProperties: false },
);

const Reach = {
  instances: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'Instances the command reached; null where the engine cannot tell (a Redis Cluster, for commands to every instance)' }),
};

export const RevokeAnswer = Type.Object({
  chat_id: IdSchema,
  user_id: IdSchema,
  ...Reach,
  registrations: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'Registrations ended, over every instance; null if some instance did not answer in time' }),
});
export const DisconnectAnswer = Type.Object({
  user_id: IdSchema,
  ...Reach,
  connections: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'Connections closed, over every instance; null where the engine cannot tell' }),
});
export const PublishAnswer = Type.Object({
  chat_id: IdSchema,
  seq: Type.Integer({ minimum: 1, description: "The event's position in the chat stream" }),
  epoch: Type.String(),
  duplicate: Type.Boolean({ description: 'true: an earlier publish with this `id` had published the event, at this position; nothing was published now' }),
});
export const PresenceAnswer = Type.Object({
  chat_id: IdSchema,
  online: Type.Array(IdSchema, { description: 'Distinct users with a live registration, over every instance' }),
});
/** Shared by every route's error answers (`$id`: one component in the OpenAPI document). */
export const ErrorAnswer = Type.Object(
  {
    error: Type.Union([
      Type.Literal('bad_request'),
      Type.Literal('unauthorized'),
      Type.Literal('not_found'),
      Type.Literal('too_large'),
      Type.Literal('unsupported_media_type'),
      Type.Literal('unavailable'),
      Type.Literal('internal'),
    ]),
    message: Type.String(),
  },
  { $id: 'ErrorAnswer' },
);

export type RevokeAnswer = Static<typeof RevokeAnswer>;
