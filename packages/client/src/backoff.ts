/** Reconnect and resend delays. */
export interface BackoffOptions {
  /** Upper bound of the first delay (ms). */
  minDelayMs: number;
  /** Upper bound of any delay (ms). */
  maxDelayMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { minDelayMs: 250, maxDelayMs: 30_000 };

/**
 * Exponential backoff with full jitter: a uniform delay in [0, min(max, min·2^attempt)].
 * Full jitter spreads the clients a gateway restart disconnected at once, so they do not all
 * come back in the same instant.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number = Math.random): number {
  const ceiling = Math.min(opts.maxDelayMs, opts.minDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}
