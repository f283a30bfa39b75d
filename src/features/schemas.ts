import { Type } from '@sinclair/typebox';
import { RequestError } from '../protocol/errors.js';
import { IdSchema, MessageIdSchema, idKey, type WireId } from '../protocol/ids.js';
import type { Registration } from '../session/registration.js';
import type { ChatTargeted, Session } from '../session/session.js';

/** Schema pieces shared by several frame types. */
export const OptionalChatId = Type.Optional(IdSchema);

/** Printable ASCII without spaces: a token travels in an Authorization header. */
export const TokenSchema = Type.String({ minLength: 1, maxLength: 8192, pattern: '^[\\x21-\\x7E]+$' });

/** The encrypted payload and its addressing, common to `message` and `edit_message` data. */
export const EncryptedContent = {
  id: MessageIdSchema,
  ciphertext: Type.String({ minLength: 1 }),
  nonce: Type.Optional(Type.String()),
  envelopes: Type.Optional(Type.Object({}, { additionalProperties: true })),
  message_type: Type.Optional(Type.String({ minLength: 1, maxLength: 32 })),
  sender_id: Type.Optional(IdSchema),
  chat_id: OptionalChatId,
};

/**
 * The target chat's registration for a request that writes content: registered, and any
 * `sender_id` it claims is the verified user (else `forbidden`, nothing saved or sent).
 */
export function authorRegistration(session: Session, frame: ChatTargeted & { data: { sender_id?: WireId | undefined } }): Registration {
  const reg = session.registration(session.targetChat(frame));
  const claimed = frame.data.sender_id;
  if (claimed !== undefined && idKey(claimed) !== reg.user) {
    throw new RequestError('forbidden', 'sender_id is not the registered user');
  }
  return reg;
}
