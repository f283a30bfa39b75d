/** The error every rejected promise and failure event carries. */

/** Codes the gateway sends in `error` frames (docs/protocol.md#errors). */
export type GatewayErrorCode =
  | 'bad_request'
  | 'unsupported_type'
  | 'unauthorized'
  | 'forbidden'
  | 'not_registered'
  | 'not_found'
  | 'too_large'
  | 'rate_limited'
  | 'upstream_unavailable'
  | 'internal';

/**
 * Codes of the SDK itself:
 * - `closed`: `client.close()` ended the request before its answer, or it was made on a chat
 *   already left (`chat.leave()`: writes made before it are still answered, unless the chat
 *   could not register for now, which fails them `closed` too); with a
 *   persistent outbox storage an unacked write is still stored and is sent by the next client.
 * - `disconnected`: the client gave up on the connection for good (see `closeCode`: 1008
 *   flooding, 4403 the backend disconnected the user).
 * - `revoked`: the backend took the user out of the chat (`unregistered` reason `revoked`); the
 *   chat is dropped and its pending writes fail with this code.
 * - `token_expired`: the static token's `exp` passed (`unregistered` reason `token_expired`); the
 *   chat is dropped. (With a token provider the SDK gets a new token and registers again.)
 */
export type ClientErrorCode = GatewayErrorCode | 'closed' | 'disconnected' | 'revoked' | 'token_expired';

export class ClientError extends Error {
  override readonly name = 'ClientError';

  constructor(
    readonly code: ClientErrorCode,
    message: string,
    readonly details: {
      /** The gateway marked it safe to resend (the SDK already did, until it gave up). */
      retryable?: boolean;
      op?: string;
      id?: string;
      chatId?: string | number;
      /** The WebSocket close code that ended the connection, for `disconnected` (1008, 4403) and 4401. */
      closeCode?: number;
      /**
       * A write given up on (`closed` by a `leave()` that stopped trying) that was sent before —
       * its ack lost with a connection, or restored from the storage — and may have been saved.
       */
      maybeApplied?: boolean;
    } = {},
  ) {
    super(message);
  }

  get retryable(): boolean {
    return this.details.retryable === true;
  }
}

/** The message of anything thrown, for an error the SDK reports. */
export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message;
  return typeof err === 'string' ? err : JSON.stringify(err) ?? String(err);
}
