import type { StreamPosition } from '../engine/stream.js';
import type { Engine, EngineEvents } from '../engine/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/index.js';
import type { IdKey } from '../protocol/ids.js';
import * as out from '../protocol/outbound.js';
import { outgoing } from './outgoing.js';
import { Registry, type Member } from './registry.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Subscription {
  refs: number;
  ready: Promise<void>;
}

/**
 * Joins the local registry to the engine: one engine subscription per chat with local members,
 * presence transitions turned into broadcasts, and every delivery written from the engine's
 * callback — the only way a broadcast reaches a client.
 */
export class Hub {
  readonly registry = new Registry<Member>();
  private readonly subscriptions = new Map<IdKey, Subscription>();

  constructor(
    private readonly engine: Engine,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /** PUBLISH_RETRY_MS: how long a saved operation's broadcast is retried while the engine fails. */
    private readonly publishRetryMs = 10_000,
  ) {}

  /** The callbacks the engine drives. */
  engineEvents(onReadyChange: (ready: boolean) => void, onCommand: EngineEvents['command']): EngineEvents {
    return {
      deliver: (chat, frame, exceptConn) => {
        // Framed once here; every local receiver gets the same WebSocket frame bytes.
        if (!this.registry.hasReceivers(chat, exceptConn)) return;
        const n = this.registry.deliver(chat, outgoing(frame), exceptConn);
        if (n > 0) this.metrics.deliveries.inc(n);
      },
      presenceExpired: (chat, users) => {
        for (const user of users) void this.publishQuietly(chat, out.presence(chat, user, 'offline'), null);
      },
      presenceRestored: (chat, users) => {
        for (const user of users) void this.publishQuietly(chat, out.presence(chat, user, 'online'), null);
      },
      readyChange: onReadyChange,
      command: onCommand,
    };
  }

  /**
   * Subscribes (if this is the chat's first local registration) and records presence.
   * Returns the chat's online users and whether `user` just came online. The caller attaches
   * the member with `attach` in the same tick it tells the client "registered".
   */
  async join(chat: IdKey, user: IdKey, connId: string): Promise<{ online: IdKey[]; cameOnline: boolean }> {
    await this.acquire(chat);
    let cameOnline: boolean | null = null;
    try {
      cameOnline = await this.engine.join(chat, user, connId);
      const online = await this.engine.online(chat);
      return { online, cameOnline };
    } catch (err) {
      // Every failure after the presence join undoes it: no ghost refreshed for the process's life.
      if (cameOnline === null) this.release(chat);
      else await this.undoJoin(chat, user, connId, cameOnline);
      throw err;
    }
  }

  /**
   * Undoes a `join` whose member was never attached. `offline` is published only if others
   * could have seen the user online: when the join itself announced nothing (`cameOnline`),
   * there is nothing to take back.
   */
  async undoJoin(chat: IdKey, user: IdKey, connId: string, cameOnline: boolean): Promise<void> {
    this.release(chat);
    await this.leavePresence(chat, user, connId, !cameOnline);
  }

  attach(chat: IdKey, member: Member): void {
    this.registry.add(chat, member);
    this.metrics.registrations.set(this.registry.registrations);
  }

  /** Undoes `join` + `attach`; publishes `offline` when this was the user's last connection. */
  async leave(chat: IdKey, user: IdKey, member: Member): Promise<void> {
    this.registry.remove(chat, member);
    this.metrics.registrations.set(this.registry.registrations);
    this.release(chat);
    await this.leavePresence(chat, user, member.id, true);
  }

  /** Removes one presence entry; publishes `offline` if it was the user's last and `announce`. */
  private async leavePresence(chat: IdKey, user: IdKey, connId: string, announce: boolean): Promise<void> {
    try {
      if ((await this.engine.leave(chat, user, connId)) && announce) {
        await this.publish(chat, out.presence(chat, user, 'offline'), null);
      }
    } catch (err) {
      // The presence entry expires by itself (Redis TTL) and the sweep announces it then.
      this.log.warn({ chat, err: (err as Error).message }, 'presence leave failed');
    }
  }

  publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void> {
    return this.timed(() => this.engine.publish(chat, frame, exceptConn));
  }

  /** Runs one engine publish, observing its latency and outcome. */
  private async timed<T>(publish: () => Promise<T>): Promise<T> {
    const started = performance.now();
    let outcome = 'ok';
    try {
      return await publish();
    } catch (err) {
      outcome = 'error';
      throw err;
    } finally {
      this.metrics.enginePublishLatency.observe({ outcome }, (performance.now() - started) / 1000);
    }
  }

  /**
   * Broadcasts an operation the main API has saved, as the chat stream's next entry. The save
   * cannot be undone, so a failing engine is retried with backoff (100 ms doubling to 2 s) for
   * `publishRetryMs`; then the broadcast is dropped, counted in publish_dropped_total and logged,
   * and null is returned. Known limit: the dropped broadcast takes no seq, so receivers see no hole;
   * it exists only in the main API's history.
   * A retry after a lost reply may broadcast twice, under two positions (clients drop a message
   * id they already have).
   */
  async append(chat: IdKey, frame: Buffer, exceptConn: string | null, key?: string): Promise<StreamPosition | null> {
    const giveUpAt = Date.now() + this.publishRetryMs;
    for (let wait = 100; ; wait = Math.min(2 * wait, 2000)) {
      try {
        return await this.timed(() => this.engine.append(chat, frame, exceptConn, key));
      } catch (err) {
        if (Date.now() + wait > giveUpAt) {
          this.metrics.publishDropped.inc();
          this.log.error({ chat, err: (err as Error).message }, 'saved operation never broadcast: engine kept failing');
          return null;
        }
        this.metrics.publishRetries.inc();
        await sleep(wait);
      }
    }
  }

  /** For broadcasts whose failure only deserves a log line (presence, typing after the fact). */
  async publishQuietly(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void> {
    try {
      await this.publish(chat, frame, exceptConn);
    } catch (err) {
      this.log.warn({ chat, err: (err as Error).message }, 'publish failed');
    }
  }

  private async acquire(chat: IdKey): Promise<void> {
    let sub = this.subscriptions.get(chat);
    if (sub === undefined) {
      const created: Subscription = { refs: 0, ready: this.engine.subscribe(chat) };
      created.ready.catch(() => {
        if (this.subscriptions.get(chat) === created) this.subscriptions.delete(chat);
      });
      this.subscriptions.set(chat, (sub = created));
    }
    sub.refs++;
    try {
      await sub.ready;
    } catch (err) {
      sub.refs--;
      throw err;
    }
  }

  private release(chat: IdKey): void {
    const sub = this.subscriptions.get(chat);
    if (sub === undefined || --sub.refs > 0) return;
    this.subscriptions.delete(chat);
    this.engine.unsubscribe(chat).catch((err: Error) => {
      this.log.warn({ chat, err: err.message }, 'unsubscribe failed');
    });
  }
}
