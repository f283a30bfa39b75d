import { Type, type TLiteral, type TObject, type TProperties, type TSchema, type TUnion } from '@sinclair/typebox';
import { ERROR_CODES } from './errors.js';
import { IdSchema, MessageIdSchema } from './ids.js';

/**
 * TypeBox schemas of every gateway → client frame, as it is on the wire. The builders in
 * outbound.ts stay plain TypeScript (they run on the hot path); these schemas describe what they
 * produce, feed docs/asyncapi.yaml (scripts/gen-asyncapi.ts) and are checked against the
 * builders' real output in tests/unit/asyncapi.test.ts, so the two cannot drift apart.
 *
 * A new outbound frame is one entry in OUTBOUND_SCHEMAS (built with `frame`), plus a sample of
 * its builder in that test.
 */

/** A broadcast's position in its chat's stream (see engine/stream.ts). */
export const SeqSchema = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
export const EpochSchema = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' });

/** Schemas worth a name of their own in the generated document (matched by structure). */
export const NAMED_SCHEMAS: Readonly<Record<string, TSchema>> = {
  Id: IdSchema,
  MessageId: MessageIdSchema,
  Seq: SeqSchema,
  Epoch: EpochSchema,
};

export const RECOVERY_FAILURES = ['epoch_changed', 'too_far_behind', 'no_history'] as const;
export const UNREGISTER_REASONS = ['unauthorized', 'forbidden', 'revoked', 'token_expired'] as const;
export const ACK_OPS = ['message', 'edit_message', 'delete_message'] as const;
export const PRESENCE_STATUSES = ['online', 'offline'] as const;
const ERROR_CODE_LIST = Object.keys(ERROR_CODES) as Array<keyof typeof ERROR_CODES>;

/** One of a fixed list of strings. */
export function oneOf<T extends string>(values: readonly T[], options: { description?: string } = {}): TUnion<Array<TLiteral<T>>> {
  return Type.Union(values.map((v) => Type.Literal(v)), options);
}

/** A frame: `type` fixed to its name, no fields beyond the ones listed. */
export function frame<const T extends string, P extends TProperties>(type: T, properties: P, description: string) {
  return Type.Object({ type: Type.Literal(type), ...properties }, { additionalProperties: false, description });
}

const Envelopes = Type.Object({}, { additionalProperties: true, description: 'Per-recipient key envelopes, opaque to the gateway' });

/** `seq`/`epoch` are written in front of the frame by the engine (numberFrame, or the Redis script). */
const Position = { seq: SeqSchema, epoch: EpochSchema };

const Registered = frame(
  'registered',
  {
    chat_id: IdSchema,
    user_id: IdSchema,
    online: Type.Array(IdSchema, { description: 'Distinct users connected to the chat on every instance, this one included' }),
    ...Position,
    recovered: Type.Optional(Type.Boolean({ description: 'Only when the register had `since`: whether the broadcasts after it were replayed' })),
    reason: Type.Optional(oneOf(RECOVERY_FAILURES, { description: 'With `recovered: false`: why nothing was replayed' })),
  },
  'Answer to register, sent once the subscription is live (after any replayed broadcasts)',
);

const Ack = frame(
  'ack',
  {
    op: oneOf(ACK_OPS),
    id: MessageIdSchema,
    chat_id: IdSchema,
    duplicate: Type.Boolean({
      description:
        "true when an earlier send did it already. message: the main API answered 409, an earlier send of this id was saved; usually nothing is broadcast again and the ack has no seq/epoch, but when the 409 says the saved message is this sender's, in this chat, not deleted, and the chat's history has no broadcast of the id (the first send's broadcast was lost), this resend is broadcast in its place and the ack carries that broadcast's seq/epoch. delete_message: the main API answered that the message is already deleted, by this sender; the delete is broadcast (the ack carries its seq/epoch) unless the chat's history already holds one for the id. edit_message: always false (an edit is not deduplicated)",
    }),
    seq: Type.Optional(SeqSchema),
    epoch: Type.Optional(EpochSchema),
  },
  "Answer to message, edit_message or delete_message once the main API saved it. seq/epoch: the position of the broadcast it made, present whenever one was made, a duplicate's stand-in broadcast included; absent when nothing was broadcast (most duplicates), and when the save succeeded but the engine failed for PUBLISH_RETRY_MS (then duplicate is false, and the broadcast is published late and reaches this connection too)",
);

/** The encrypted content both a new message and an edit carry. */
const Encrypted = {
  id: MessageIdSchema,
  ciphertext: Type.String({ minLength: 1 }),
  nonce: Type.Optional(Type.String()),
  envelopes: Envelopes,
};

const MessageBroadcast = frame(
  'message',
  {
    ...Position,
    chat_id: IdSchema,
    data: Type.Object(
      {
        ...Encrypted,
        message_type: Type.String({ minLength: 1, maxLength: 32 }),
        created_at: Type.String({ description: 'RFC 3339' }),
        chat_id: IdSchema,
        sender_id: IdSchema,
      },
      {
        additionalProperties: true,
        description:
          "The body of the send that was broadcast: the sender's data (other fields pass through), defaults filled in (created_at: when the gateway received it), chat_id and the verified sender_id set. Normally what the main API saved; after a 409 whose resend stands in for a lost broadcast, the resend's body, not the first send's",
      },
    ),
  },
  'A new message in a chat the connection is registered to',
);

const EditBroadcast = frame(
  'edit_message',
  {
    ...Position,
    chat_id: IdSchema,
    data: Type.Object(
      {
        ...Encrypted,
        message_type: Type.Optional(Type.String({ minLength: 1, maxLength: 32 })),
        edited_at: Type.String({ description: 'RFC 3339' }),
        sender_id: IdSchema,
      },
      { additionalProperties: false },
    ),
  },
  'A message was edited',
);

const DeleteBroadcast = frame(
  'delete_message',
  {
    ...Position,
    chat_id: IdSchema,
    data: Type.Object({ id: MessageIdSchema, deleted_by: IdSchema }, { additionalProperties: false }),
  },
  'A message was deleted',
);

const Presence = frame(
  'presence',
  { chat_id: IdSchema, user_id: IdSchema, status: oneOf(PRESENCE_STATUSES) },
  "A user's first connection to the chat arrived (online) or its last one left (offline)",
);

const PresenceBatch = frame(
  'presence_batch',
  {
    chat_id: IdSchema,
    online: Type.Array(IdSchema, { description: 'Users whose presence changed within the window and who are online as the frame is sent; not the whole online list (may be empty)' }),
    offline: Type.Array(IdSchema, { description: 'Users whose presence changed within the window and who are offline as the frame is sent (may be empty)' }),
  },
  "Several users' presence changed within one announcement window (PRESENCE_BATCH_MS). Only those users are listed, each under the status as it is when the frame is sent (a user who came and left within the window is offline); it may repeat a status the receiver has or name its own user: apply it as facts, it is not the chat's online list",
);

const Typing = frame('typing', { chat_id: IdSchema, user_id: IdSchema }, 'A member is typing (never saved, not echoed to its sender)');

const Unregistered = frame(
  'unregistered',
  {
    chat_id: IdSchema,
    reason: Type.Optional(oneOf(UNREGISTER_REASONS, { description: "Absent when answering the client's unregister; else why the gateway ended the registration" })),
  },
  'The registration to a chat ended',
);

const Refreshed = frame(
  'refreshed',
  { chat_ids: Type.Array(IdSchema, { description: 'The chats whose registrations now use the new token' }) },
  'Answer to refresh: every verify passed and the new token is in force',
);

const Event = frame(
  'event',
  {
    ...Position,
    chat_id: IdSchema,
    data: Type.Object({}, { additionalProperties: true, description: 'Whatever the backend published (any JSON object)' }),
  },
  'A system event the backend published through the server API; numbered and replayed like messages',
);

const Pong = frame('pong', {}, 'Answer to ping');

const ErrorFrame = frame(
  'error',
  {
    code: oneOf(ERROR_CODE_LIST),
    message: Type.String({ description: 'For humans; branch on code' }),
    op: Type.Optional(Type.String({ maxLength: 64, description: "The request's type" })),
    id: Type.Optional(MessageIdSchema),
    chat_id: Type.Optional(IdSchema),
    retryable: Type.Boolean({ description: 'Safe to resend (with the same message id)' }),
    retry_after_ms: Type.Optional(
      Type.Integer({
        minimum: 0,
        description:
          "Only on the token bucket's `rate_limited`: the gateway reads nothing from this connection for this long, and dropped unanswered the frames it had read with the refused one — resend the refused request and every later one still unanswered after it. Absent on every other `rate_limited` (nothing was dropped)",
      }),
    ),
  },
  'A request was refused; exactly one per refused request',
);

/** Every gateway → client frame, by its `type`. */
export const OUTBOUND_SCHEMAS = {
  registered: Registered,
  ack: Ack,
  message: MessageBroadcast,
  edit_message: EditBroadcast,
  delete_message: DeleteBroadcast,
  presence: Presence,
  presence_batch: PresenceBatch,
  typing: Typing,
  unregistered: Unregistered,
  refreshed: Refreshed,
  event: Event,
  pong: Pong,
  error: ErrorFrame,
} as const satisfies Record<string, TObject>;

export type OutboundType = keyof typeof OUTBOUND_SCHEMAS;
