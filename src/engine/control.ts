import type { IdKey } from '../protocol/ids.js';

/**
 * Commands of the server API that every instance acts on (Engine.command). They travel between
 * instances as JSON, so they hold only plain data.
 */
export type ControlCommand =
  /** End every registration of `user` in `chat` ("revoked") and forget its cached verifies. */
  | { readonly op: 'revoke'; readonly chat: IdKey; readonly user: IdKey }
  /** Close every connection of `user` and forget all its cached verifies. */
  | { readonly op: 'disconnect'; readonly user: IdKey; readonly reason: string }
  /** Forget the cached verifies of `user` (in `chat`, or in every chat when null). */
  | { readonly op: 'forget'; readonly user: IdKey; readonly chat: IdKey | null };

/** What a command did across instances; null where the engine cannot tell. */
export interface CommandResult {
  /** Instances the command reached. */
  readonly instances: number | null;
  /** Connections (revoke: registrations) acted on, summed over the instances. */
  readonly connections: number | null;
}

/** Decodes a command received from another instance (parsed JSON); null for anything malformed. */
export function parseControlCommand(v: unknown): ControlCommand | null {
  if (typeof v !== 'object' || v === null) return null;
  const c = v as Record<string, unknown>;
  const isKey = (x: unknown): x is string => typeof x === 'string' && x.length > 0 && x.length <= 64;
  switch (c.op) {
    case 'revoke':
      return isKey(c.chat) && isKey(c.user) ? { op: 'revoke', chat: c.chat, user: c.user } : null;
    case 'disconnect':
      return isKey(c.user) && typeof c.reason === 'string' ? { op: 'disconnect', user: c.user, reason: c.reason.slice(0, 120) } : null;
    case 'forget':
      return isKey(c.user) && (c.chat === null || isKey(c.chat)) ? { op: 'forget', user: c.user, chat: c.chat } : null;
    default:
      return null;
  }
}
