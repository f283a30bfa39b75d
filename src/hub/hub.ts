import { randomBytes } from 'node:crypto';
import type { AppendAttempt, AppendResult, StreamPosition } from '../engine/stream.js';
import type { Engine, EngineEvents } from '../engine/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/index.js';
import type { IdKey } from '../protocol/ids.js';
import { outgoing } from './outgoing.js';
import { Registry, type Member } from './registry.js';
import { PresenceView } from './presence-view.js';
import { PresenceAnnouncer } from './presence-announcer.js';
import { Resync } from './resync.js';
import { whenSettled } from '../util/settled.js';
import { LogLimiter } from '../util/log-limit.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Subscription {
  refs: number;
  ready: Promise<void>;
}

/** A saved operation whose broadcast the engine refused for PUBLISH_RETRY_MS. */
interface LateBroadcast {
  chat: IdKey;
  frame: Buffer;
  /** The connection that sent it: excepted by the attempts that timed out, told the position now. */
  sender: string | null;
  key: string | undefined;
  /** The operation's attempts: one that timed out may still have appended it. */
  attempt: AppendAttempt;
  at: number;
}

/** Broadcasts waiting for the engine at once, at most, and their bytes; more are dropped (and counted). */
const MAX_LATE = 10_000;
const MAX_LATE_BYTES = 64 * 1024 * 1024;
/** While some wait, how often the engine is tried again (also at once when it reports ready). */
const LATE_RETRY_MS = 1000;

export interface HubLimits {
  /** PUBLISH_RETRY_MS: how long a saved operation's broadcast is retried while the engine fails. */
  publishRetryMs: number;
  /** HISTORY_TTL_MS: a late broadcast older than this is dropped instead of published. */
  lateMaxAgeMs: number;
  /** MAX_BUFFERED_BYTES: half of it bounds one chat's catch-up after an engine outage. */
  maxBufferedBytes: number;
  /** PRESENCE_BATCH_MS: presence changes of a chat within this long after an announcement go out together. */
  presenceBatchMs: number;
}

const DEFAULT_LIMITS: HubLimits = { publishRetryMs: 10_000, lateMaxAgeMs: 300_000, maxBufferedBytes: 4 * 1024 * 1024, presenceBatchMs: 200 };

/**
 * Joins the local registry to the engine: one engine subscription per chat with local members,
 * presence transitions turned into broadcasts, and every delivery written from the engine's
 * callback — the only way a broadcast reaches a client.
 */
export class Hub {
  readonly registry = new Registry<Member>();
  private readonly subscriptions = new Map<IdKey, Subscription>();
  private readonly late: LateBroadcast[] = [];
  /**
   * Lines an engine outage causes once per connection or operation (every leave, every saved
   * broadcast of a draining instance): one per kind every 10 s; `publish_dropped_total` counts
   * what matters.
   */
  private readonly logLimit = new LogLimiter();
  private lateBytes = 0;
  /** How many late broadcasts each chat has waiting: its new writes wait for them (see `append`). */
  private readonly lateChats = new Map<IdKey, number>();
  /** Wakes writes waiting for their chat's late broadcasts: called whenever one leaves the queue. */
  private readonly lateListeners = new Set<() => void>();
  /** Shutting down: nothing more waits (see abandonLateNow). */
  private lateAbandoned = false;
  private lateTimer: NodeJS.Timeout | null = null;
  private flushingLate = false;
  /** Names each appended operation (see `append`): this hub's random prefix and a counter. */
  private readonly tokenPrefix = `~${randomBytes(6).toString('base64url')}`;
  private appends = 0;
  private readonly resync: Resync;
  private readonly presence: PresenceAnnouncer;
  /** What local members were told of presence, to repair after an outage (engines that can lose deliveries only). */
  private readonly presenceView: PresenceView | null;

  constructor(
    private readonly engine: Engine,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly limits: HubLimits = DEFAULT_LIMITS,
  ) {
    this.resync = new Resync(
      engine,
      (chat, frame, position, exceptConn) => this.deliverNow(chat, frame, position, exceptConn),
      (chat) => {
        for (const member of [...(this.registry.members(chat) ?? [])]) member.reconnect();
      },
      (chat) => void this.repairPresence(chat),
      metrics,
      log,
      Math.floor(limits.maxBufferedBytes / 2),
    );
    this.presenceView = engine.kind === 'redis' ? new PresenceView() : null;
    this.presence = new PresenceAnnouncer(limits.presenceBatchMs, {
      publish: (chat, frame, exceptConn) => this.publishQuietly(chat, frame, exceptConn),
      online: (chat) => engine.online(chat),
      announcedOffline: (chat, users) => engine.offlineAnnounced?.(chat, users),
    });
  }

  /** Framed once here; every local receiver gets the same WebSocket frame bytes. */
  private deliverNow(chat: IdKey, frame: Buffer, position: StreamPosition | null, exceptConn: string | null): void {
    if (position === null) this.presenceView?.observe(chat, frame);
    if (!this.registry.hasReceivers(chat, exceptConn)) return;
    const n = this.registry.deliver(chat, outgoing(frame, position), exceptConn);
    if (n > 0) this.metrics.deliveries.inc(n);
  }

  /** One local connection's registration of `chat` gets `frame` (numbered at `position`). */
  private deliverTo(chat: IdKey, connId: string, frame: Buffer, position: StreamPosition): void {
    for (const member of this.registry.members(chat) ?? []) {
      if (member.id === connId) member.send(outgoing(frame, { seq: position.seq, epoch: position.epoch }));
    }
  }

  /** The chat's last broadcast delivered on this instance, if any since its first local member. */
  deliveredPosition(chat: IdKey): StreamPosition | undefined {
    return this.resync.delivered(chat);
  }

  /** The chat's position when a registration went live: where a catch-up after an outage starts. */
  notePosition(chat: IdKey, position: StreamPosition): void {
    this.resync.note(chat, position);
  }

  /** The callbacks the engine drives. */
  engineEvents(onReadyChange: (ready: boolean) => void, onCommand: EngineEvents['command']): EngineEvents {
    return {
      deliver: (chat, frame, exceptConn) => {
        // A publication still on its way when the chat's last local member left (the engine's
        // unsubscribe not yet done): nobody to deliver it to, and passing it on would leave the
        // chat a position that a later member's first broadcast would take for a gap.
        if (this.subscriptions.has(chat)) this.resync.receive(chat, frame, exceptConn);
      },
      presenceExpired: (chat, users) => {
        for (const user of users) void this.presence.announce(chat, user, 'offline', null);
      },
      presenceRestored: (chat, users) => {
        for (const user of users) void this.presence.announce(chat, user, 'online', null);
      },
      readyChange: (ready) => {
        onReadyChange(ready);
        if (!ready) return this.resync.engineLost(this.subscriptions.keys());
        // Catch up on what other instances published meanwhile first, then publish our own late
        // ones; presence announced meanwhile is in no history: members are told the difference.
        void this.resync.engineBack().then(() => {
          void this.repairPresence();
          return this.publishLate();
        });
      },
      streamAt: (chat, position) => this.resync.check(chat, position),
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
      this.presenceView?.seed(chat, online);
      return { online, cameOnline };
    } catch (err) {
      // Every failure after the presence join undoes it: no ghost refreshed for the process's life.
      if (cameOnline === null) this.release(chat);
      else await this.undoJoin(chat, user, connId, cameOnline);
      throw err;
    }
  }

  /** Undoes a `join` whose member was never attached (its `online` was never announced). */
  async undoJoin(chat: IdKey, user: IdKey, connId: string, cameOnline: boolean): Promise<void> {
    this.release(chat);
    await this.leavePresence(chat, user, connId, !cameOnline);
  }

  /** Tells the chat that `user` came online (`exceptConn`, the connection that did, is not told). */
  announceOnline(chat: IdKey, user: IdKey, exceptConn: string): Promise<void> {
    return this.presence.announce(chat, user, 'online', exceptConn);
  }

  /** At shutdown, before the engine closes: presence changes still gathered go out now. */
  flushPresence(): Promise<void> {
    return this.presence.flushAll();
  }

  attach(chat: IdKey, member: Member): void {
    this.registry.add(chat, member);
    this.metrics.registrations.set(this.registry.registrations);
  }

  /**
   * Undoes `join` + `attach`; publishes `offline` when this was the user's last connection.
   * `announced`: whether the chat has heard the user is online — false when this member's join
   * brought the user online and it ended before announcing it (see `leavePresence`).
   */
  async leave(chat: IdKey, user: IdKey, member: Member, announced: boolean): Promise<void> {
    this.registry.remove(chat, member);
    this.metrics.registrations.set(this.registry.registrations);
    this.release(chat);
    await this.leavePresence(chat, user, member.id, announced);
  }

  /**
   * Removes one presence entry. `announced` false: this entry brought the user online and
   * `online` was never published — every connection of the user that joined later found it
   * there and announced nothing either. So its last entry leaving says nothing (nobody was told
   * `online`), and leaving others behind publishes the `online` they never got.
   */
  private async leavePresence(chat: IdKey, user: IdKey, connId: string, announced: boolean): Promise<void> {
    try {
      const last = await this.engine.leave(chat, user, connId);
      if (last && announced) await this.presence.announce(chat, user, 'offline', null);
      else if (!last && !announced) await this.presence.announce(chat, user, 'online', null);
    } catch (err) {
      // The presence entry expires by itself (Redis TTL) and the sweep announces it then.
      this.logLimit.log(this.log, 'warn', 'leave', { chat, err: (err as Error).message }, 'presence leave failed');
    }
  }

  publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void> {
    return this.timed(() => this.engine.publish(chat, frame, exceptConn));
  }

  /** Runs one engine publish, observing its latency and outcome. */
  private timed<T>(publish: () => Promise<T>): Promise<T> {
    const started = performance.now();
    return whenSettled(publish, (ok) => this.metrics.enginePublishLatency.observe({ outcome: ok ? 'ok' : 'error' }, (performance.now() - started) / 1000));
  }

  /**
   * Broadcasts an operation the main API has saved, as the chat stream's next entry. The save
   * cannot be undone, so a failing engine is retried with backoff (100 ms doubling to 2 s) for
   * `publishRetryMs`; then null is returned (the ack goes out without a position) and the
   * broadcast waits, in order, to be published late once the engine works again (see
   * `publishLate`), so receivers still get it — under the position it gets then, the sending
   * connection included (it learns the position from the broadcast, as its ack had none).
   * Every attempt carries the operation's token, and each one after the first asks the engine
   * to look for it first: an attempt whose reply was lost (Redis stalled past the command
   * timeout and ran it later) is not appended and broadcast again — while its entry is in
   * history (with HISTORY_SIZE=0 a retry may still broadcast twice; clients drop a message id
   * they already have).
   */
  append(chat: IdKey, frame: Buffer, exceptConn: string | null, key?: string): Promise<StreamPosition | null> {
    const firstAt = Date.now();
    const token = this.tokenPrefix + (++this.appends).toString(36);
    if (this.lateChats.has(chat)) return this.appendAfterLate(chat, frame, exceptConn, key, token, firstAt);
    return this.appendNow(chat, frame, exceptConn, key, token, firstAt);
  }

  private appendNow(chat: IdKey, frame: Buffer, exceptConn: string | null, key: string | undefined, token: string, firstAt: number): Promise<StreamPosition | null> {
    // The usual case is one try; only a failure enters the retry loop.
    return this.timed(() => this.engine.append(chat, frame, exceptConn, key, { token, retry: false, firstAt })).catch((err: unknown) =>
      this.appendRetrying(chat, frame, exceptConn, key, { token, retry: true, firstAt }, err),
    );
  }

  /**
   * Saved while broadcasts of its chat still wait to be published late: appended once they are
   * out (the engine may answer again just before the late queue's next turn; appended at once,
   * an edit would reach the chat before its message). Waits at most what its own retries would
   * (`publishRetryMs`), then joins the queue behind them, acked without a position. Only its
   * chat waits: other chats' writes, and this one once its chat is clear, go straight to the
   * engine, never through the one late queue.
   */
  private async appendAfterLate(chat: IdKey, frame: Buffer, exceptConn: string | null, key: string | undefined, token: string, firstAt: number): Promise<StreamPosition | null> {
    void this.publishLate(); // the engine may serve again: its next turn now, not in a second
    const giveUpAt = firstAt + this.limits.publishRetryMs;
    while (this.lateChats.has(chat)) {
      const left = giveUpAt - Date.now();
      if (left <= 0 || this.lateAbandoned) {
        this.deferLate({ chat, frame, sender: exceptConn, key, attempt: { token, retry: false, firstAt }, at: Date.now() }, 'earlier broadcasts of the chat still wait to be published');
        return null;
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.lateListeners.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.lateListeners.add(wake);
      });
    }
    return this.appendNow(chat, frame, exceptConn, key, token, firstAt);
  }

  private async appendRetrying(chat: IdKey, frame: Buffer, exceptConn: string | null, key: string | undefined, retry: AppendAttempt, firstError: unknown): Promise<StreamPosition | null> {
    let err = firstError;
    const giveUpAt = retry.firstAt + this.limits.publishRetryMs;
    for (let wait = 100; ; wait = Math.min(2 * wait, 2000)) {
      if (Date.now() + wait > giveUpAt) {
        // Published late, it goes to the sending connection too: its ack had no position, and
        // a client that counts positions would otherwise keep a hole where its own write is.
        this.deferLate({ chat, frame, sender: exceptConn, key, attempt: retry, at: Date.now() }, (err as Error).message);
        return null;
      }
      this.metrics.publishRetries.inc();
      await sleep(wait);
      try {
        return await this.timed(() => this.engine.append(chat, frame, exceptConn, key, retry));
      } catch (next) {
        err = next;
      }
    }
  }

  private deferLate(entry: LateBroadcast, why: string): void {
    if (this.lateAbandoned) {
      this.dropLate(entry, 'instance shutting down');
      return;
    }
    if (this.late.length >= MAX_LATE || this.lateBytes + entry.frame.length > MAX_LATE_BYTES) {
      this.dropLate(entry, 'too many broadcasts waiting for the engine');
      return;
    }
    this.logLimit.log(this.log, 'warn', 'late', { chat: entry.chat, err: why, waiting: this.late.length + 1 }, 'saved operation not broadcast yet: engine failing; it will be published late');
    this.late.push(entry);
    this.lateBytes += entry.frame.length;
    this.lateChats.set(entry.chat, (this.lateChats.get(entry.chat) ?? 0) + 1);
    this.scheduleLate();
  }

  private shiftLate(): void {
    this.unlistLate(this.late.shift()!);
  }

  /** An entry has left the queue (published or dropped): its chat's writes may go on. */
  private unlistLate(entry: LateBroadcast): void {
    this.lateBytes -= entry.frame.length;
    const left = (this.lateChats.get(entry.chat) ?? 1) - 1;
    if (left > 0) this.lateChats.set(entry.chat, left);
    else this.lateChats.delete(entry.chat);
    for (const wake of [...this.lateListeners]) wake();
  }

  private dropLate(entry: LateBroadcast, why: string): void {
    this.metrics.publishDropped.inc();
    // "Not confirmed": an attempt that timed out on a stalled Redis may still run when it wakes.
    this.logLimit.log(this.log, 'error', 'dropped', { chat: entry.chat, why }, 'saved operation not broadcast (or not confirmed)');
  }

  private scheduleLate(): void {
    if (this.lateTimer !== null || this.late.length === 0 || this.lateAbandoned) return;
    this.lateTimer = setTimeout(() => {
      this.lateTimer = null;
      void this.publishLate();
    }, LATE_RETRY_MS);
    this.lateTimer.unref();
  }

  /**
   * Publishes the broadcasts that waited for the engine, oldest first, until one fails (then
   * tried again in LATE_RETRY_MS). One older than `lateMaxAgeMs` is dropped and counted instead.
   */
  async publishLate(): Promise<void> {
    if (this.flushingLate) return;
    this.flushingLate = true;
    try {
      while (this.late.length > 0) {
        const entry = this.late[0]!;
        if (Date.now() - entry.at > this.limits.lateMaxAgeMs) {
          this.shiftLate();
          this.dropLate(entry, 'waited longer than HISTORY_TTL_MS for the engine');
          continue;
        }
        let result: AppendResult;
        try {
          result = await this.timed(() => this.engine.append(entry.chat, entry.frame, null, entry.key, entry.attempt));
        } catch {
          // A try that timed out may still run: every later one looks for it first.
          if (!entry.attempt.retry) entry.attempt = { ...entry.attempt, retry: true };
          if (this.lateAbandoned) this.dropLateFrom(0); // its last try failed: dropped and counted now
          break;
        }
        // Still first: a shutdown meanwhile (abandonLateNow) keeps the one in flight for this outcome.
        this.shiftLate();
        // Late either way: published now, or by an attempt that timed out (a stalled Redis ran it
        // when it woke), so it is never left out of both late and dropped.
        this.metrics.publishLate.inc();
        // An attempt that timed out had appended it after all, without its sender: tell the
        // sender now (its ack had no position), and no one else (they got it then).
        if (result.earlier !== undefined && entry.sender !== null) this.deliverTo(entry.chat, entry.sender, result.earlier, result);
        if (this.lateAbandoned) break;
      }
    } finally {
      this.flushingLate = false;
      this.scheduleLate();
    }
  }

  /** At shutdown, after a last try: what still waits is dropped and counted. */
  async abandonLate(): Promise<void> {
    if (this.late.length > 0) await this.publishLate();
    this.abandonLateNow();
  }

  /** At shutdown, without a last try (the engine did not answer in time): what waits is dropped and counted. */
  abandonLateNow(): void {
    this.lateAbandoned = true;
    if (this.lateTimer !== null) clearTimeout(this.lateTimer);
    this.lateTimer = null;
    // One being published right now is left to its outcome (published, or dropped when it fails).
    this.dropLateFrom(this.flushingLate ? 1 : 0);
  }

  private dropLateFrom(index: number): void {
    for (const entry of this.late.splice(index)) {
      this.unlistLate(entry);
      this.dropLate(entry, 'instance shutting down');
    }
  }

  /** After an outage (or a gap in `only`'s publications): local members are told who came and went meanwhile. */
  private async repairPresence(only?: IdKey): Promise<void> {
    if (this.presenceView === null) return;
    try {
      const chats = await this.presenceView.repair(
        (chat) => this.engine.online(chat),
        (chat, frame) => this.deliverNow(chat, frame, null, null),
        only === undefined ? undefined : [only],
      );
      if (chats > 0) this.log.info({ chats }, 'presence that changed while redis was away told to local members');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'presence repair failed');
    }
  }

  /**
   * For broadcasts whose failure only deserves a log line (presence, typing after the fact):
   * publishes; a failure is logged (limited), and answered false.
   */
  async publishQuietly(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<boolean> {
    try {
      await this.publish(chat, frame, exceptConn);
      return true;
    } catch (err) {
      this.logLimit.log(this.log, 'warn', 'publish', { chat, err: (err as Error).message }, 'publish failed');
      return false;
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
    this.resync.forget(chat);
    this.presenceView?.forget(chat);
    this.engine.unsubscribe(chat).catch((err: Error) => {
      this.log.warn({ chat, err: err.message }, 'unsubscribe failed');
    });
  }
}
