import { Type } from '@sinclair/typebox';
import { IdSchema } from '../protocol/ids.js';

/** Schema pieces shared by several frame types. */
export const OptionalChatId = Type.Optional(IdSchema);
export const Envelopes = Type.Object({}, { additionalProperties: true });
export const MessageType = Type.String({ minLength: 1, maxLength: 32 });
export const Ciphertext = Type.String({ minLength: 1 });
