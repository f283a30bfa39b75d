import type { IdKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';

export type PresenceStatus = 'online' | 'offline';

interface Pending {
  status: PresenceStatus;
  /** The connection that caused it (it does not get its own `online`); kept for a lone change. */
  exceptConn: string | null;
}

/** One chat's current window: what changed since the last announcement, and when it ends. */
interface Window {
  pending: Map<IdKey, Pending> | null;
  timer: NodeJS.Timeout;
}

export interface PresencePorts {
  /** Publishes one presence frame to the chat; false if it failed (never rejects: failures are the caller's log line). */
  publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<boolean>;
  /** The chat's online users as the engine has them now. */
  online(chat: IdKey): Promise<IdKey[]>;
  /** An `offline` of these users went out (the engine may stop keeping them for a sweep to announce). */
  announcedOffline(chat: IdKey, users: readonly IdKey[]): void;
}

/**
 * Announces presence changes, at most one announcement per chat per window on this instance.
 * The first change in a quiet chat goes out at once as a `presence` frame; changes in the
 * `windowMs` after it are gathered and go out together when the window ends — one `presence`
 * frame if a single user changed, else one `presence_batch` — and open the next window.
 *
 * Why: every announcement reaches every member, so n members joining a chat one by one cost
 * n²/2 deliveries (2 million for a chat of 2,000). Gathered, they cost n per window.
 *
 * A gathered announcement says each user's status as the engine has it when it goes out, not
 * the change that was recorded. And every announcement that tells `offline` is checked right
 * after it went out: if the engine has the user online again (a connection on another instance
 * joined meanwhile, and its `online` may have gone out first), `online` follows. The check is
 * read after the publish, on the same engine connection, so either it sees that join or the
 * join's own `online` goes out after this `offline`: a stalled instance's late `offline` can
 * never be the last word about a user who is online.
 */
export class PresenceAnnouncer {
  private readonly windows = new Map<IdKey, Window>();

  constructor(
    private readonly windowMs: number,
    private readonly ports: PresencePorts,
  ) {}

  announce(chat: IdKey, user: IdKey, status: PresenceStatus, exceptConn: string | null): Promise<void> {
    const window = this.windowMs === 0 ? undefined : this.windows.get(chat);
    if (window === undefined) {
      if (this.windowMs > 0) this.open(chat);
      return this.publish(chat, out.presence(chat, user, status), exceptConn, status === 'offline' ? [user] : []);
    }
    (window.pending ??= new Map()).set(user, { status, exceptConn });
    return Promise.resolve();
  }

  /** At shutdown: announces everything gathered now and closes every window. */
  async flushAll(): Promise<void> {
    const due = [...this.windows];
    this.windows.clear();
    await Promise.all(
      due.map(([chat, window]) => {
        clearTimeout(window.timer);
        return window.pending === null ? undefined : this.send(chat, window.pending);
      }),
    );
  }

  private open(chat: IdKey): Window {
    const window: Window = { pending: null, timer: this.arm(chat) };
    this.windows.set(chat, window);
    return window;
  }

  private arm(chat: IdKey): NodeJS.Timeout {
    const timer = setTimeout(() => this.close(chat), this.windowMs);
    timer.unref();
    return timer;
  }

  /** A window ends: nothing gathered closes it; else what was gathered goes out and opens the next. */
  private close(chat: IdKey): void {
    const window = this.windows.get(chat);
    if (window === undefined) return;
    const pending = window.pending;
    if (pending === null) {
      this.windows.delete(chat);
      return;
    }
    window.pending = null;
    window.timer = this.arm(chat);
    void this.send(chat, pending);
  }

  private async send(chat: IdKey, pending: Map<IdKey, Pending>): Promise<void> {
    let online: Set<IdKey> | null = null;
    try {
      online = new Set(await this.ports.online(chat));
    } catch {
      // The engine cannot say now: announce the changes as they were recorded.
    }
    const statusOf = (user: IdKey, recorded: PresenceStatus): PresenceStatus => (online === null ? recorded : online.has(user) ? 'online' : 'offline');
    if (pending.size === 1) {
      const [user, { status, exceptConn }] = pending.entries().next().value!;
      const now = statusOf(user, status);
      // The connection that caused the change does not get it, unless the status it caused changed since.
      await this.publish(chat, out.presence(chat, user, now), now === status ? exceptConn : null, now === 'offline' ? [user] : []);
      return;
    }
    const came: IdKey[] = [];
    const left: IdKey[] = [];
    for (const [user, { status }] of pending) (statusOf(user, status) === 'online' ? came : left).push(user);
    await this.publish(chat, out.presenceBatch(chat, came, left), null, left);
  }

  /** Publishes `frame`; then, if it told `offline` about users the engine has online again, says so (see above). */
  private async publish(chat: IdKey, frame: Buffer, exceptConn: string | null, offline: readonly IdKey[]): Promise<void> {
    const sent = await this.ports.publish(chat, frame, exceptConn);
    if (offline.length === 0) return;
    if (sent) this.ports.announcedOffline(chat, offline);
    let online: Set<IdKey>;
    try {
      online = new Set(await this.ports.online(chat));
    } catch {
      return; // the engine cannot say now; its presence refresh re-announces what it re-creates
    }
    const back = offline.filter((user) => online.has(user));
    if (back.length === 0) return;
    await this.ports.publish(chat, back.length === 1 ? out.presence(chat, back[0]!, 'online') : out.presenceBatch(chat, back, []), null);
  }
}
