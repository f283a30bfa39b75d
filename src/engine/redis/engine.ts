import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { RedisConfig } from '../../config/index.js';
import { redactUrl } from '../../config/index.js';
import type { Logger } from '../../log.js';
import type { IdKey } from '../../protocol/ids.js';
import { EngineUnavailableError, type Engine, type EngineEvents } from '../types.js';
import { JOIN, LEAVE, SWEEP } from './scripts.js';

const CHANNEL_PREFIX = 'ms:chat:{';
const COMMAND_TIMEOUT_MS = 2000;
const NEWLINE = 0x0a;

type PresenceCommands = {
  msJoin(chatKey: string, userKey: string, now: number, conn: string, expiresAt: number, user: string, keyTtl: number): Promise<number>;
  msLeave(chatKey: string, userKey: string, now: number, conn: string, user: string): Promise<number>;
  msSweep(chatKey: string, now: number, userPrefix: string): Promise<string[]>;
};
type Commands = (Redis | Cluster) & PresenceCommands;

interface PresenceEntry {
  chat: IdKey;
  user: IdKey;
  conn: string;
}
const entryKey = (e: PresenceEntry) => `${e.chat}|${e.user}|${e.conn}`;
const channelOf = (chat: IdKey) => `${CHANNEL_PREFIX}${chat}}`;
const presenceKey = (chat: IdKey) => `ms:presence:{${chat}}`;
const userPrefix = (chat: IdKey) => `ms:presence:{${chat}}:u:`;

/**
 * The Redis engine: many instances behave as one. One command connection and one subscriber
 * connection per instance (in a Cluster: ioredis's one sharded subscriber per master); a chat
 * channel is subscribed while the instance has a local member. Every broadcast, including to
 * the publishing instance's own clients, arrives through the subscription, so Redis's single
 * per-channel order is the order everywhere.
 *
 * Standalone Redis uses PUBLISH/SUBSCRIBE; REDIS_CLUSTER=true uses SPUBLISH/SSUBSCRIBE (Redis ≥ 7)
 * with the chat as hash tag, so a chat's channel and presence keys live on one shard.
 */
export class RedisEngine implements Engine {
  readonly kind = 'redis' as const;
  private events: EngineEvents | null = null;
  private cmd!: Commands;
  /** Standalone subscriber; in a Cluster, `cmd` routes SSUBSCRIBE to its sharded subscribers. */
  private sub: Redis | null = null;
  private ready = false;
  private everReady = false;
  private closing = false;
  private timer: NodeJS.Timeout | null = null;
  /** Chats this instance wants subscribed (the truth used to resubscribe after an outage). */
  private readonly subscribed = new Set<IdKey>();
  /** This instance's presence entries, refreshed every PRESENCE_TTL_MS / 3. */
  private readonly entries = new Map<string, PresenceEntry>();
  private pending: Array<{ op: 'subscribe' | 'unsubscribe'; chat: IdKey; done: (err?: Error) => void }> = [];
  private flushScheduled = false;

  constructor(
    private readonly config: RedisConfig,
    private readonly presenceTtlMs: number,
    private readonly log: Logger,
  ) {}

  /**
   * Presence keys outlive their entries, so a sweeper still finds expired entries of a dead
   * instance; a key nobody refreshes for twice the TTL (no live member anywhere) just vanishes.
   */
  private get keyTtlMs(): number {
    return 2 * this.presenceTtlMs;
  }

  async start(events: EngineEvents): Promise<void> {
    this.events = events;
    const options: RedisOptions = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: COMMAND_TIMEOUT_MS,
      autoResubscribe: false,
      retryStrategy: (times) => Math.min(100 * times, 2000),
    };
    if (this.config.cluster) {
      const seeds = this.config.urls.map((u) => new URL(u));
      const first = seeds[0]!;
      this.cmd = new Cluster(
        seeds.map((u) => ({ host: u.hostname, port: Number(u.port || 6379) })),
        {
          shardedSubscribers: true,
          enableOfflineQueue: false,
          enableAutoPipelining: true,
          clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
          redisOptions: {
            username: first.username ? decodeURIComponent(first.username) : undefined,
            password: first.password ? decodeURIComponent(first.password) : undefined,
            tls: first.protocol === 'rediss:' ? {} : undefined,
            commandTimeout: COMMAND_TIMEOUT_MS,
            maxRetriesPerRequest: 1,
          },
        },
      ) as Commands;
      this.cmd.on('smessageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message));
    } else {
      const url = this.config.urls[0]!;
      this.cmd = new Redis(url, { ...options, enableAutoPipelining: true, connectionName: 'message-service' }) as Commands;
      this.sub = new Redis(url, { ...options, connectionName: 'message-service-sub' });
      this.sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message));
      this.watch(this.sub, 'subscriber');
    }
    this.watch(this.cmd, 'command');
    this.cmd.defineCommand('msJoin', { numberOfKeys: 2, lua: JOIN });
    this.cmd.defineCommand('msLeave', { numberOfKeys: 2, lua: LEAVE });
    this.cmd.defineCommand('msSweep', { numberOfKeys: 1, lua: SWEEP });
    this.log.info({ redis: this.config.urls.map(redactUrl), cluster: this.config.cluster }, 'redis engine connecting');
    const period = Math.max(100, Math.floor(this.presenceTtlMs / 3));
    this.timer = setInterval(() => void this.maintainPresence(), period);
    this.timer.unref();
  }

  isReady(): boolean {
    return this.ready;
  }

  async subscribe(chat: IdKey): Promise<void> {
    this.subscribed.add(chat);
    try {
      await this.whenReady(() => this.enqueue('subscribe', chat));
    } catch (err) {
      this.subscribed.delete(chat);
      throw err;
    }
  }

  async unsubscribe(chat: IdKey): Promise<void> {
    this.subscribed.delete(chat);
    if (!this.ready) return; // after an outage it is simply not resubscribed
    await this.whenReady(() => this.enqueue('unsubscribe', chat));
  }

  async publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void> {
    const payload = Buffer.concat([Buffer.from(`${exceptConn ?? ''}\n`, 'latin1'), frame]);
    await this.whenReady(() => (this.config.cluster ? this.cmd.spublish(channelOf(chat), payload) : this.cmd.publish(channelOf(chat), payload)));
  }

  async join(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    const entry = { chat, user, conn };
    const first = await this.whenReady(() => this.writeEntry(entry, Date.now()));
    this.entries.set(entryKey(entry), entry);
    return first === 1;
  }

  async leave(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    this.entries.delete(entryKey({ chat, user, conn }));
    return (await this.whenReady(() => this.cmd.msLeave(presenceKey(chat), userPrefix(chat) + user, Date.now(), conn, user))) === 1;
  }

  async online(chat: IdKey): Promise<IdKey[]> {
    return this.whenReady(() => this.cmd.zrangebyscore(presenceKey(chat), Date.now(), '+inf'));
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.timer !== null) clearInterval(this.timer);
    if (this.ready) {
      // Entries whose leave did not run (or failed): remove them so nobody waits for the TTL.
      await Promise.allSettled([...this.entries.values()].map((e) => this.leave(e.chat, e.user, e.conn)));
      const chats = [...this.subscribed];
      this.subscribed.clear();
      await this.sendSubscription('unsubscribe', chats.map(channelOf)).catch(() => undefined);
    }
    this.setReady(false);
    await Promise.allSettled([this.cmd.quit(), this.sub?.quit()]);
    this.cmd.disconnect();
    this.sub?.disconnect();
  }

  private onMessage(channel: Buffer, message: Buffer): void {
    if (this.events === null) return;
    const name = channel.toString('latin1');
    if (!name.startsWith(CHANNEL_PREFIX)) return;
    const chat = name.slice(CHANNEL_PREFIX.length, -1);
    const nl = message.indexOf(NEWLINE);
    if (nl < 0) return;
    const exceptConn = nl === 0 ? null : message.toString('latin1', 0, nl);
    this.events.deliver(chat, message.subarray(nl + 1), exceptConn);
  }

  /** Tracks connection state; after an outage, resubscribe and restore presence before ready. */
  private watch(conn: Redis | Cluster, role: string): void {
    conn.on('error', (err: Error) => this.log.debug({ role, err: err.message }, 'redis error'));
    conn.on('ready', () => void this.recover());
    for (const event of ['close', 'end', 'reconnecting']) {
      conn.on(event, () => {
        if (this.ready) this.log.warn({ role, event }, 'redis connection lost');
        this.setReady(false);
      });
    }
  }

  private connectionsUp(): boolean {
    return this.cmd.status === 'ready' && (this.sub === null || this.sub.status === 'ready');
  }

  private async recover(): Promise<void> {
    if (this.closing || !this.connectionsUp()) return;
    try {
      await this.sendSubscription('subscribe', [...this.subscribed].map(channelOf));
      await this.refreshPresence();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'redis recovery failed; retrying on next reconnect');
      return;
    }
    if (this.connectionsUp()) {
      if (this.everReady) this.log.info({ chats: this.subscribed.size, presence: this.entries.size }, 'redis back: subscriptions and presence restored');
      this.everReady = true;
      this.setReady(true);
    }
  }

  private setReady(ready: boolean): void {
    if (this.ready === ready) return;
    this.ready = ready;
    this.events?.readyChange(ready);
  }

  /** Fails fast while Redis is unreachable; every Redis error surfaces as EngineUnavailableError. */
  private async whenReady<T>(command: () => Promise<T>): Promise<T> {
    if (!this.ready) throw new EngineUnavailableError('redis unavailable');
    try {
      return await command();
    } catch (err) {
      throw err instanceof EngineUnavailableError ? err : new EngineUnavailableError(`redis: ${(err as Error).message}`);
    }
  }

  /** The one place that picks plain (one command, many channels) or sharded (one per channel) pub/sub. */
  private sendSubscription(op: 'subscribe' | 'unsubscribe', channels: string[]): Promise<unknown> {
    if (channels.length === 0) return Promise.resolve();
    if (this.sub !== null) return op === 'subscribe' ? this.sub.subscribe(...channels) : this.sub.unsubscribe(...channels);
    return Promise.all(channels.map((ch) => (op === 'subscribe' ? this.cmd.ssubscribe(ch) : this.cmd.sunsubscribe(ch))));
  }

  /** Adds or refreshes one presence entry; 1 when its user just came online. */
  private writeEntry(e: PresenceEntry, now: number): Promise<number> {
    return this.cmd.msJoin(presenceKey(e.chat), userPrefix(e.chat) + e.user, now, e.conn, now + this.presenceTtlMs, e.user, this.keyTtlMs);
  }

  /** Batches subscribe/unsubscribe issued in one tick into as few commands as possible, in order. */
  private enqueue(op: 'subscribe' | 'unsubscribe', chat: IdKey): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ op, chat, done: (err) => (err ? reject(err) : resolve()) });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    this.pending = [];
    let i = 0;
    while (i < batch.length) {
      const op = batch[i]!.op;
      let j = i;
      while (j < batch.length && batch[j]!.op === op) j++;
      const group = batch.slice(i, j);
      this.sendSubscription(op, group.map((p) => channelOf(p.chat))).then(
        () => group.forEach((p) => p.done()),
        (err: Error) => group.forEach((p) => p.done(err)),
      );
      i = j;
    }
  }

  /** Every PRESENCE_TTL_MS / 3: refresh this instance's entries, then sweep expired ones. */
  private async maintainPresence(): Promise<void> {
    if (!this.ready) return;
    try {
      await this.refreshPresence();
      const now = Date.now();
      await Promise.all(
        [...this.subscribed].map(async (chat) => {
          const gone = await this.cmd.msSweep(presenceKey(chat), now, userPrefix(chat));
          if (gone.length > 0) this.events?.presenceExpired(chat, gone);
        }),
      );
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'presence maintenance failed');
    }
  }

  private async refreshPresence(): Promise<void> {
    const now = Date.now();
    await Promise.all([...this.entries.values()].map((e) => this.writeEntry(e, now)));
  }
}
