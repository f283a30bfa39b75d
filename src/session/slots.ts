import { CancelledError } from '../protocol/errors.js';

/**
 * A connection's share of the main-API pool: at most `size` calls run at once, the rest wait
 * in order. When the connection closes, `cancel` drops every waiter before it costs a call.
 */
export class Slots {
  private free: number;
  private waiters: Array<{ resolve: () => void; reject: (err: Error) => void }> | null = null;

  constructor(size: number) {
    this.free = size;
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve, reject) => (this.waiters ??= []).push({ resolve, reject }));
    try {
      return await work();
    } finally {
      const next = this.waiters?.shift();
      if (next !== undefined) next.resolve();
      else this.free++;
    }
  }

  cancel(): void {
    const waiters = this.waiters ?? [];
    this.waiters = null;
    for (const waiter of waiters) waiter.reject(new CancelledError());
  }
}
