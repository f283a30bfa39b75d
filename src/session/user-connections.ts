import type { IdKey } from '../protocol/ids.js';

/**
 * Connections bound to each user on this instance (MAX_CONNECTIONS_PER_USER): every limit of a
 * connection — its token bucket, its main-API calls in flight, its chats — multiplies with the
 * number of connections, so one user's are capped too. A connection is bound at its first
 * successful register and unbound when it closes.
 */
export class UserConnections {
  private readonly counts = new Map<IdKey, number>();

  /** `max` 0: no limit. */
  constructor(readonly max: number) {}

  /** Binds one more connection to `user`; false (nothing changes) when it already has `max`. */
  bind(user: IdKey): boolean {
    const held = this.counts.get(user) ?? 0;
    if (this.max > 0 && held >= this.max) return false;
    this.counts.set(user, held + 1);
    return true;
  }

  unbind(user: IdKey): void {
    const held = this.counts.get(user) ?? 0;
    if (held <= 1) this.counts.delete(user);
    else this.counts.set(user, held - 1);
  }
}
