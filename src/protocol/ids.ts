import { Type, type Static } from '@sinclair/typebox';

/**
 * Ids on the wire: a JSON integer ≥ 1 or a string of 1–64 `[A-Za-z0-9_.:-]`, not made only of
 * dots (`.` and `..` would become dot-segments in a main-API URL path).
 * Inside the gateway a chat or user is keyed by `String(id)`; on the way out a key that is a
 * canonical positive safe integer is written as a JSON number, anything else as a string, so
 * `123` and `"123"` name the same chat and every receiver sees one spelling.
 */
export const ID_PATTERN = '^(?!\\.+$)[A-Za-z0-9_.:-]{1,64}$';
export const MESSAGE_ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$';

export const IdSchema = Type.Union([
  Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
  Type.String({ pattern: ID_PATTERN }),
]);
export type WireId = Static<typeof IdSchema>;

export const MessageIdSchema = Type.String({ pattern: MESSAGE_ID_PATTERN });

/** Internal key of a chat or user. */
export type IdKey = string;

const ID_RE = new RegExp(ID_PATTERN);
const CANONICAL_INT_RE = /^[1-9][0-9]{0,15}$/;

export function idKey(id: WireId): IdKey {
  return String(id);
}

export function wireId(key: IdKey): WireId {
  if (CANONICAL_INT_RE.test(key)) {
    const n = Number(key);
    if (Number.isSafeInteger(n)) return n;
  }
  return key;
}

/** Accepts an id from an untrusted source (the main API's answer); null when unusable. */
export function parseId(value: unknown): IdKey | null {
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) && value >= 1 ? String(value) : null;
  }
  if (typeof value === 'string' && ID_RE.test(value)) return value;
  return null;
}
