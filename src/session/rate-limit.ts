/**
 * The per-connection rate limit: a token bucket of `burst` tokens refilled at `ratePerSec`,
 * kept the GCRA way (generic cell rate algorithm) so a connection's bucket is one number, the
 * time at which it is full again (`full` in the past: a full bucket). The policy is shared by
 * every connection; an object per connection would cost ~80 bytes of heap, idle or not.
 *
 * A take succeeds while at least one token is left, i.e. while the bucket is full again no
 * later than (burst - 1) token intervals from now; it pushes that time one interval further.
 */
export class RateLimit {
  /** A bucket that has never been used: full. */
  static readonly FULL = 0;
  private readonly intervalMs: number;
  private readonly toleranceMs: number;

  constructor(
    ratePerSec: number,
    burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.intervalMs = 1000 / ratePerSec;
    this.toleranceMs = (burst - 1) * this.intervalMs;
  }

  /** Takes a token from the bucket `full`: returns the bucket's new state, or null when it is empty. */
  take(full: number): number | null {
    const now = this.now();
    const from = Math.max(full, now);
    if (from - now > this.toleranceMs) return null;
    return from + this.intervalMs;
  }
}
