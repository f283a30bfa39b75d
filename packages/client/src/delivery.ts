import type { Core } from './core.js';
import type { Delivery, Stream } from './stream.js';
import { clearTimer, type Timer } from './timers.js';

/** Hands the app what the chats' streams give out: at once, and held edits when their time is up. */
export class Deliverer {
  private holdTimer: Timer | null = null;

  constructor(
    private readonly core: Core,
    /** Every chat's stream (read live: a listener may open or leave chats meanwhile). */
    private readonly streams: () => Iterable<Stream>,
  ) {}

  deliver(deliveries: Delivery[]): void {
    const { emit } = this.core;
    for (const d of deliveries) {
      switch (d.type) {
        case 'message':
          emit('message', d.event);
          break;
        case 'edit':
          emit('edit', d.event);
          break;
        case 'delete':
          emit('delete', d.event);
          break;
        case 'event':
          emit('event', d.event);
          break;
        case 'gap':
          emit('gap', d.event);
          break;
      }
    }
    this.armHoldTimer();
  }

  /** No chat holds an edit any more (the client ended, or has no chats). */
  stop(): void {
    clearTimer(this.holdTimer);
    this.holdTimer = null;
  }

  /** Hands over held edits when their time is up. */
  private armHoldTimer(): void {
    if (this.core.ended()) return;
    let next = Infinity;
    for (const stream of this.streams()) next = Math.min(next, stream.nextExpiry() ?? Infinity);
    clearTimer(this.holdTimer);
    this.holdTimer = null;
    if (next === Infinity) return;
    this.holdTimer = setTimeout(
      () => {
        this.holdTimer = null;
        const now = Date.now();
        for (const stream of this.streams()) this.deliver(stream.expire(now));
        this.armHoldTimer();
      },
      Math.max(0, next - Date.now()),
    );
  }
}
