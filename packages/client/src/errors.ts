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
 * - `closed`: `client.close()` or `chat.leave()` ended the request before its answer; with a
 *   persistent outbox storage an unacked write is still stored and is sent by the next client.
 * - `disconnected`: the client gave up on the connection for good (see `closeCode`).
 */
export type ClientErrorCode = GatewayErrorCode | 'closed' | 'disconnected';

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
      /** The WebSocket close code that ended the connection, for `disconnected` and 4401. */
      closeCode?: number;
    } = {},
  ) {
    super(message);
  }

  get retryable(): boolean {
    return this.details.retryable === true;
  }
}
