/**
 * The one catalogue of error codes and close codes. Clients branch on `code` and
 * `retryable`; both are stable API.
 */
export const ERROR_CODES = {
  bad_request: { retryable: false },
  unsupported_type: { retryable: false },
  unauthorized: { retryable: false },
  forbidden: { retryable: false },
  not_registered: { retryable: false },
  not_found: { retryable: false },
  too_large: { retryable: false },
  rate_limited: { retryable: true },
  upstream_unavailable: { retryable: true },
  internal: { retryable: false },
} as const satisfies Record<string, { retryable: boolean }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export const CLOSE = {
  /** Server shutting down: reconnect (to another instance). */
  goingAway: 1001,
  /** Policy: flooding while rate limited. (Origin refusals are HTTP 403 before the upgrade.) */
  policy: 1008,
  /** A frame larger than MAX_MESSAGE_BYTES. */
  tooLarge: 1009,
  /**
   * The instance missed broadcasts of a chat while its engine (Redis) was away, and the chat's
   * history no longer has them: reconnect and register with `since` to learn what is missing.
   */
  resync: 1012,
  /** Slow consumer: unsent backlog passed MAX_BUFFERED_BYTES. */
  tryAgainLater: 1013,
  /** Five registers in a row refused by the main API (unauthorized or forbidden): get a new token first. */
  authFailures: 4401,
  /**
   * The backend disconnected the user (server API: logout everywhere, ban). Do not reconnect with
   * the same token: get a new one first (the SDK asks its token provider, and stops if it has none).
   */
  disconnected: 4403,
  /** No chat registered for REGISTER_TIMEOUT_MS: never registered, or unregistered from everything. */
  registerTimeout: 4408,
} as const;

/** Consecutive `unauthorized`/`forbidden` register answers after which a connection is closed 4401. */
export const MAX_AUTH_FAILURES_IN_A_ROW = 5;

/**
 * The connection that asked for this work has gone: queued work is dropped before it reaches the
 * main API or the engine, and nothing is answered (there is nobody to answer).
 */
export class CancelledError extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'CancelledError';
  }
}

/** The main API refused the credentials of a registration (401) or its membership (403). */
export function isAuthRefusal(err: unknown): err is RequestError & { code: 'unauthorized' | 'forbidden' } {
  return err instanceof RequestError && (err.code === 'unauthorized' || err.code === 'forbidden');
}

/** A request that is refused with one `error` frame; the connection stays open. */
export class RequestError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The token bucket's `rate_limited` only: how long the connection is not read (`retry_after_ms` on the wire). */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'RequestError';
  }
}
