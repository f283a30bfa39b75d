/**
 * Log lines a client or a failing dependency can cause at will (a refused upgrade, a main API
 * that is down, a Redis error on every command) are written at most once per `intervalMs` per
 * kind; the next line of that kind says how many were left out meanwhile. So a flood costs a
 * few lines a minute, and the first occurrence is always seen.
 */
import type { Logger } from '../log.js';

export class LogLimiter {
  private readonly kinds = new Map<string, { until: number; suppressed: number }>();

  constructor(
    private readonly intervalMs = 10_000,
    /** Kinds tracked at once, at most (a kind is chosen by code, never by a client). */
    private readonly maxKinds = 64,
  ) {}

  /** Writes the line unless its kind was written within the interval; it carries `suppressed`. */
  log(logger: Logger, level: 'info' | 'warn' | 'error', kind: string, fields: Record<string, unknown>, msg: string): void {
    const admitted = this.admit(kind);
    if (admitted !== null) logger[level]({ ...fields, suppressed: admitted.suppressed }, msg);
  }

  /** null: leave this one out; else log it, with `suppressed` (how many were left out since the last one). */
  admit(kind: string, now = Date.now()): { suppressed: number } | null {
    const seen = this.kinds.get(kind);
    if (seen !== undefined && now < seen.until) {
      seen.suppressed++;
      return null;
    }
    const suppressed = seen?.suppressed ?? 0;
    if (seen === undefined && this.kinds.size >= this.maxKinds) this.kinds.delete(this.kinds.keys().next().value!);
    this.kinds.set(kind, { until: now + this.intervalMs, suppressed: 0 });
    return { suppressed };
  }
}
