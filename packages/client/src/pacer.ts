import { clearTimer, type Timer } from './timers.js';

/**
 * Over its bucket the gateway answers one frame `rate_limited` and does not read the connection
 * for 1 s, dropping unanswered what it had already read: the client sends nothing for this long.
 */
export const RATE_LIMIT_PAUSE_MS = 1100;
/** After a `rate_limited`, the pacing is halved; each quiet period of this length doubles it back. */
const PACE_RECOVERY_MS = 10_000;

export interface Rate {
  perSec: number;
  burst: number;
}

/**
 * The client's own token bucket for the frames of a connection, kept below the gateway's so it
 * is not refused: what cannot go now waits in order and goes as tokens come back.
 */
export class Pacer<T> {
  private tokens = 0;
  private refilledAt = 0;
  /** The pacing in force: `full`, halved after each `rate_limited`, restored while quiet. */
  private pace: Rate;
  private paceChangedAt = 0;
  /** Nothing is sent before this (the gateway is not reading: see RATE_LIMIT_PAUSE_MS). */
  private pausedUntil = 0;
  private readonly queue: T[] = [];
  private timer: Timer | null = null;

  constructor(
    private readonly full: Rate,
    private readonly send: (item: T) => void,
  ) {
    this.pace = full;
  }

  /** A new connection, opened at `now`: it has a full bucket at the gateway. */
  restart(now: number): void {
    this.pausedUntil = 0;
    this.refill();
    this.tokens = this.pace.burst;
    this.refilledAt = now;
  }

  /**
   * Sends `item` if the bucket allows; else queues it (in order), or drops it if `droppable`.
   * False when it was neither sent nor queued.
   */
  offer(item: T, droppable: boolean): boolean {
    this.refill();
    if (this.queue.length === 0 && this.tokens >= 1 && Date.now() >= this.pausedUntil) {
      this.tokens--;
      this.send(item);
      return true;
    }
    if (droppable) return false;
    this.queue.push(item);
    this.schedule();
    return true;
  }

  /** The gateway answered `rate_limited` from its bucket: nothing goes for a while, then slower. */
  pause(): void {
    const now = Date.now();
    this.pausedUntil = now + RATE_LIMIT_PAUSE_MS;
    this.tokens = 0;
    this.refilledAt = now;
    this.pace = { perSec: Math.max(1, this.pace.perSec / 2), burst: Math.max(1, Math.floor(this.pace.burst / 2)) };
    this.paceChangedAt = now;
  }

  /** Sends what is queued as soon as the bucket allows. */
  flush(): void {
    if (this.queue.length > 0) this.schedule();
  }

  /** The connection is gone: what is still queued, never to be sent on it. */
  stop(): T[] {
    clearTimer(this.timer);
    this.timer = null;
    return this.queue.splice(0);
  }

  /** The first queued item that `test` accepts. */
  find(test: (item: T) => boolean): T | undefined {
    return this.queue.find(test);
  }

  private refill(): void {
    const now = Date.now();
    this.relax(now);
    const { perSec, burst } = this.pace;
    this.tokens = Math.min(burst, this.tokens + ((now - this.refilledAt) * perSec) / 1000);
    this.refilledAt = now;
  }

  /** Doubles a reduced pacing back (up to `full`) for every quiet PACE_RECOVERY_MS. */
  private relax(now: number): void {
    const full = this.full;
    if (this.pace === full || now - this.paceChangedAt < PACE_RECOVERY_MS) return;
    const perSec = Math.min(full.perSec, this.pace.perSec * 2);
    const burst = Math.min(full.burst, this.pace.burst * 2);
    this.pace = perSec === full.perSec && burst === full.burst ? full : { perSec, burst };
    this.paceChangedAt = now;
  }

  private schedule(): void {
    if (this.timer !== null) return;
    const paused = this.pausedUntil - Date.now();
    const wait = Math.max(1, paused, Math.ceil(((1 - this.tokens) * 1000) / this.pace.perSec));
    this.timer = setTimeout(() => {
      this.timer = null;
      if (Date.now() < this.pausedUntil) return this.schedule();
      this.refill();
      while (this.queue.length > 0 && this.tokens >= 1) {
        this.tokens--;
        this.send(this.queue.shift()!);
      }
      if (this.queue.length > 0) this.schedule();
    }, wait);
  }
}
