import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { RedisConfig } from '../../config/index.js';
import { redactUrl } from '../../config/index.js';
import type { Logger } from '../../log.js';
import type { IdKey } from '../../protocol/ids.js';
import { EngineUnavailableError, type Engine, type EngineEvents } from '../types.js';
import { parseControlCommand, type CommandResult, type ControlCommand } from '../control.js';
import { STREAM_TTL_MS, newEpoch, type AppendAttempt, type AppendResult, type HistoryLimits, type Recovery, type RecoveryFailure, type StreamPosition } from '../stream.js';
import { ANNOUNCED, LEAVE, SWEEP, WRITE_ENTRIES } from './scripts.js';
import { APPEND, CONTAINS, CONTAINS_MAX_BYTES, RECOVER } from './stream-scripts.js';
import { LogLimiter } from '../../util/log-limit.js';

const CHANNEL_PREFIX = 'ms:chat:{';
/** Commands for every instance (classic pub/sub: in a Cluster it reaches every node's subscribers). */
const CONTROL_CHANNEL = 'ms:control';
/**
 * Every command is also logged here (a stream; one key, so one Cluster slot: commands are rare)
 * before it is published: every instance reads the log on from where it last read, with each
 * probe and after an outage, and acts on what it did not hear (see `pollCommands`) — its
 * subscription was down, or lost without a sign. Bounded by COMMAND_LOG_MAX entries and
 * COMMAND_LOG_TTL_MS after the last command.
 */
const COMMAND_LOG = 'ms:commands';
const COMMAND_LOG_MAX = 10_000;
const COMMAND_LOG_TTL_MS = 24 * 3600_000;
/** Log entries read per call. */
const COMMAND_LOG_PAGE = 500;
/**
 * A command heard live is remembered (by its token) until the log is read past it, so it is not
 * acted on twice; one whose log entry never comes (the XADD failed) is forgotten after this long,
 * once a read of the log that began at least COMMAND_LOGGED_WITHIN_MS after it has succeeded.
 */
const COMMAND_SEEN_MS = 60_000;
/** A command's XADD goes out with its PUBLISH (in a Cluster to another node): logged within this of being heard. */
const COMMAND_LOGGED_WITHIN_MS = 5000;
/**
 * In a chat channel's payload header, a second field starting with `!` names a kind of
 * publication other than a frame for clients; `!` alone is a command. Connection ids never
 * start with it. An instance ignores a kind it does not know — so a later version can add kinds
 * without an older instance, mid rolling deploy, handing them to clients as frames.
 */
const KIND_PREFIX = '!';
const COMMAND_MARK = KIND_PREFIX;
const COMMAND_TIMEOUT_MS = 2000;
/**
 * How often the command connection is probed with a write: a Redis that is stalled, a replica
 * (READONLY), out of memory (OOM) or a Cluster that is down answers every command with an error
 * or not at all while every socket stays up, and only a probe tells readiness.
 */
const PROBE_INTERVAL_MS = 2000;
/** A recovery after an outage that failed with the connections up is tried again this soon. */
const RESTORE_RETRY_MS = 1000;
/** After a recovery, how long the offlines of replayed leaves wait (see restoreAfterOutage). */
const LEFT_OFFLINE_DELAY_MS = 2000;
/** While a probe fails, the next one comes this soon. */
const PROBE_RETRY_MS = 200;
/**
 * Probes failed in a row, without an answer, after which the connection at fault is replaced: a
 * link that went silent without closing (a half-open TCP connection behind a NAT or a failed
 * node) is otherwise kept for the kernel's ~15 minutes of retransmissions, the instance not ready
 * (command link) or deaf to other instances while ready (subscriber).
 */
const PROBE_FAILURES_TO_RECONNECT = 3;
/**
 * Commands only the probe sends: never queued behind an auto-pipelined batch that waits out its
 * timeout (ioredis sends one batch at a time), so a probe times out on its own 2 s.
 */
const PROBE_COMMANDS = ['set', 'info', 'xrevrange', 'xrange'];
/** Presence entries refreshed per script call, at most. */
const REFRESH_BATCH = 500;
const NEWLINE = 0x0a;
const SPACE = 0x20;

type PresenceCommands = {
  msLeave(chatKey: string, userKey: string, leavingKey: string, now: number, conn: string, user: string, held: number, announceBy: number, keyTtl: number): Promise<number>;
  msSweep(chatKey: string, streamKey: string, leavingKey: string, now: number, userPrefix: string): Promise<[number, string, ...string[]]>;
  msAnnounced(leavingKey: string, ...userDeadlinePairs: Array<string | number>): Promise<number>;
  msWriteEntries(chatKey: string, now: number, expiresAt: number, keyTtl: number, userPrefix: string, ...userConnPairs: string[]): Promise<number[]>;
  msAppend(streamKey: string, historyKey: string, ...args: Array<string | number | Buffer>): Promise<[number, string, number, string?]>;
  msRecoverBuffer(streamKey: string, historyKey: string, ...args: Array<string | number>): Promise<[number, Buffer, Buffer, ...Buffer[]]>;
  msContains(historyKey: string, key: string, historySize: number, maxBytes: number): Promise<number>;
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
/** Users of the chat who went offline and whose `offline` is not confirmed sent yet (see LEAVE). */
const leavingKey = (chat: IdKey) => `ms:presence:{${chat}}:leaving`;
const streamKey = (chat: IdKey) => `ms:stream:{${chat}}`;
const historyKey = (chat: IdKey) => `ms:history:{${chat}}`;
/** `run_id:replid` from INFO's server and replication sections, as the stream scripts spell it. */
const identityOf = (info: string) => {
  const run = /run_id:([0-9a-f]+)/.exec(info)?.[1];
  const replid = /master_replid:([0-9a-f]+)/.exec(info)?.[1];
  return run === undefined || replid === undefined ? '' : `${run}:${replid}`;
};
/** Stream id `a` comes after `b` (`<ms>-<n>`, compared as numbers). */
function streamIdAfter(a: string, b: string): boolean {
  const [am = 0, an = 0] = a.split('-').map(Number);
  const [bm = 0, bn = 0] = b.split('-').map(Number);
  return am !== bm ? am > bm : an > bn;
}

/** A Cluster's seed nodes, from REDIS_URL's comma-separated URLs. */
function clusterSeeds(urls: readonly string[]): Array<{ host: string; port: number }> {
  return urls.map((u) => new URL(u)).map((u) => ({ host: u.hostname, port: Number(u.port || 6379) }));
}

/** Options for every node of a Cluster: the first URL's credentials and TLS apply to all. */
function clusterNodeOptions(urls: readonly string[]): RedisOptions {
  const first = new URL(urls[0]!);
  return {
    username: first.username ? decodeURIComponent(first.username) : undefined,
    password: first.password ? decodeURIComponent(first.password) : undefined,
    tls: first.protocol === 'rediss:' ? {} : undefined,
    protocol: 2,
    commandTimeout: COMMAND_TIMEOUT_MS,
  };
}

/** A command as published and logged: its envelope (reply channel, request number), the command, its token. */
function decodeCommand(text: string): { envelope: { reply?: unknown; req?: unknown }; command: ControlCommand; token: string | null } | null {
  let envelope: { reply?: unknown; req?: unknown; token?: unknown };
  try {
    envelope = JSON.parse(text) as typeof envelope;
  } catch {
    return null;
  }
  const command = parseControlCommand(envelope);
  if (command === null) return null;
  return { envelope, command, token: typeof envelope.token === 'string' ? envelope.token : null };
}

/** Replies that say the node is not (or not yet) the writable copy it was. */
const ROLE_CHANGED = /^(READONLY|MASTERDOWN|LOADING)\b/;
const unavailable = (err: unknown) =>
  err instanceof EngineUnavailableError ? err : new EngineUnavailableError(`redis: ${(err as Error).message}`);

/**
 * The Redis engine: many instances behave as one. One command connection and one subscriber
 * connection per instance (in a Cluster: ioredis's one sharded subscriber per master); a chat
 * channel is subscribed while the instance has a local member. Every broadcast, including to
 * the publishing instance's own clients, arrives through the subscription, so Redis's single
 * per-channel order is the order everywhere.
 *
 * Standalone Redis uses PUBLISH/SUBSCRIBE; REDIS_CLUSTER=true uses SPUBLISH/SSUBSCRIBE (Redis ≥ 7)
 * with the chat as hash tag, so a chat's channel and presence keys live on one shard.
 *
 * A payload is `<publication id>[ <exceptConn>]\n<frame>`. The id (this instance's random prefix
 * plus a counter) lets `publish` wait until its own subscription has delivered the frame.
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
  /**
   * Chats this instance wants subscribed (the truth used to resubscribe after an outage), each
   * with the number of the subscribe call that wanted it, so a failed call can tell whether a
   * later subscribe/unsubscribe call has decided about the chat since.
   */
  private readonly subscribed = new Map<IdKey, number>();
  private subscribeCalls = 0;
  /** Our publications not yet delivered back to us, by id. */
  /** Publications awaiting our own delivery, oldest first (Map order), with when they were sent. */
  private readonly unechoed = new Map<string, { chat: IdKey; at: number; done: () => void }>();
  /** Settles what waited longer than COMMAND_TIMEOUT_MS; runs only while something waits (no timer per publication). */
  private echoSweep: NodeJS.Timeout | null = null;
  private readonly origin = randomBytes(9).toString('base64url');
  private publications = 0;
  /** This instance's command requests waiting for the replies of the instances they reached. */
  private readonly requests = new Map<number, { replies: number; connections: number; wake: () => void }>();
  private requestCount = 0;
  private readonly replyChannel = `ms:reply:{${this.origin}}`;
  /** This instance's presence entries, refreshed every PRESENCE_TTL_MS / 3. */
  private readonly entries = new Map<string, PresenceEntry>();
  /**
   * Which copy of the data the command connection is on — the Redis process's run_id and its
   * replication id (see epochHead in stream-scripts.ts) — read when the connection became ready
   * (before any stream script is sent) and again after every probe; '' while unknown, after an
   * error that says the node's role changed, and in a Cluster: the scripts then ask Redis itself.
   */
  private identity = '';
  /**
   * Entries whose leave (or join) failed — Redis unreachable or stalled — keyed like `entries`,
   * with the leave's `held` (0 for a failed join: the entry is removed only if Redis has it): see
   * `replayLeaves`.
   */
  private readonly failedLeaves = new Map<string, PresenceEntry & { held: 0 | 1 }>();
  private leavesReplay: Promise<void> | null = null;
  /** Per chat, users replayed leaves took offline, announced once the engine is ready again. */
  private readonly leftOffline = new Map<IdKey, IdKey[]>();
  /**
   * Users whose last connection left through this instance, by `chat|user`, with the deadline
   * their record in the chat's leaving set got (see LEAVE), until their `offline` went out.
   */
  private readonly leaving = new Map<string, number>();
  /** Entries a refresh re-created (see refreshPresence) whose `online` is not announced yet. */
  private restored: PresenceEntry[] = [];
  private pending: Array<{ op: 'subscribe' | 'unsubscribe'; chat: IdKey; done: (err?: Error) => void }> = [];
  private flushScheduled = false;

  constructor(
    private readonly config: RedisConfig,
    private readonly presenceTtlMs: number,
    private readonly log: Logger,
    private readonly history: HistoryLimits = { size: 100, ttlMs: 300_000 },
  ) {}

  /**
   * Presence keys outlive their entries, so a sweeper still finds expired entries of a dead
   * instance; a key nobody refreshes for twice the TTL (no live member anywhere) just vanishes.
   */
  private get keyTtlMs(): number {
    return 2 * this.presenceTtlMs;
  }

  /** The last probes answered (see PROBE_INTERVAL_MS); readiness needs it as well as the connections. */
  private responsive = true;
  /** Probes failed in a row; two make the instance not ready (one slow moment does not). */
  private probeFailures = 0;
  /** A recovery after an outage is running (one at a time). */
  private restoring = false;
  /**
   * Counts connection losses. A recovery that saw one while it ran restored connections that are
   * gone: the new one's `ready` came while it ran (and was ignored), so it runs again.
   */
  private losses = 0;
  private probing = false;
  private probeTimer: NodeJS.Timeout | null = null;
  /**
   * The id of the last command log entry this instance read (at first, where the log stood when
   * it first connected: nothing before is its business). null until then.
   */
  private commandCursor: string | null = null;
  /** A read of the log under way (one at a time), and when the last successful one began. */
  private commandPoll: Promise<void> | null = null;
  private commandPollStartedAt = 0;
  /**
   * Per subscribed chat, where the command log stood once this instance had subscribed to it: a
   * revoke logged before was published before (its XADD precedes its PUBLISH), when this instance
   * could not hear it and had nothing to revoke — registrations since were verified after it.
   */
  private readonly chatLogFloors = new Map<IdKey, string>();
  /** Echo probes sent (see `echo`), and the one waited for with what its arrival wakes. */
  private echoProbes = 0;
  private echoWaiting: { id: number; heard: () => void } | null = null;
  /** Tokens of commands acted on and not yet met in the log, with when: see COMMAND_SEEN_MS. */
  private readonly commandsSeen = new Map<string, { at: number; acted: number | null }>();
  private readonly logLimit = new LogLimiter();

  async start(events: EngineEvents): Promise<void> {
    this.events = events;
    // RESP2, as the engine was built and tested on: ioredis 6 speaks RESP3 by default, and with it
    // the 2,000-chat subscription test stalled under load (registrations waited out their 30 s);
    // RESP3 brings the engine nothing it uses.
    const options: RedisOptions = {
      protocol: 2,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: COMMAND_TIMEOUT_MS,
      autoResubscribe: false,
      retryStrategy: (times) => Math.min(100 * times, 2000),
    };
    if (this.config.cluster) {
      this.cmd = new Cluster(
        clusterSeeds(this.config.urls),
        {
          shardedSubscribers: true,
          enableOfflineQueue: false,
          enableAutoPipelining: true,
          // ioredis exempts SUBSCRIBE but not SSUBSCRIBE from auto-pipelining. Pipelined with another
          // command of the shard in one tick, it would go to that command's connection (or the
          // command to the sharded subscriber): a command connection stuck in subscriber mode.
          autoPipeliningIgnoredCommands: ['ssubscribe', 'sunsubscribe', ...PROBE_COMMANDS],
          clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
          redisOptions: { ...clusterNodeOptions(this.config.urls), maxRetriesPerRequest: 1, autoResendUnfulfilledCommands: false },
        },
      ) as Commands;
      this.cmd.on('smessageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message));
      this.cmd.on('messageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message));
    } else {
      const url = this.config.urls[0]!;
      // A command sent but unanswered when the command connection drops is not sent again on the
      // next one by ioredis (it fails by its timeout): it may have run, and only the caller knows
      // whether a second run is harmless (an append's retry looks for its token first; a resent
      // first attempt would not, and would broadcast the operation twice). The subscriber's
      // (UN)SUBSCRIBEs are idempotent and still resent.
      this.cmd = new Redis(url, { ...options, autoResendUnfulfilledCommands: false, enableAutoPipelining: true, autoPipeliningIgnoredCommands: PROBE_COMMANDS, connectionName: 'message-service' }) as Commands;
      this.sub = new Redis(url, { ...options, connectionName: 'message-service-sub' });
      this.sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message));
      this.watch(this.sub, 'subscriber');
    }
    this.watch(this.cmd, 'command');
    this.cmd.defineCommand('msLeave', { numberOfKeys: 3, lua: LEAVE });
    this.cmd.defineCommand('msSweep', { numberOfKeys: 3, lua: SWEEP });
    this.cmd.defineCommand('msAnnounced', { numberOfKeys: 1, lua: ANNOUNCED });
    this.cmd.defineCommand('msWriteEntries', { numberOfKeys: 1, lua: WRITE_ENTRIES });
    this.cmd.defineCommand('msAppend', { numberOfKeys: 2, lua: APPEND });
    this.cmd.defineCommand('msRecover', { numberOfKeys: 2, lua: RECOVER });
    this.cmd.defineCommand('msContains', { numberOfKeys: 1, lua: CONTAINS });
    this.log.info({ redis: this.config.urls.map(redactUrl), cluster: this.config.cluster }, 'redis engine connecting');
    const period = Math.max(100, Math.floor(this.presenceTtlMs / 3));
    this.timer = setInterval(() => void this.maintainPresence(), period);
    this.timer.unref();
    this.probeTimer = setInterval(() => void this.probe(), PROBE_INTERVAL_MS);
    this.probeTimer.unref();
  }

  /** Connected, subscribed, and answering writes (the last probes). */
  isReady(): boolean {
    return this.ready && this.responsive;
  }

  isConnected(): boolean {
    return this.ready;
  }

  /**
   * Writes a short-lived key of this instance. A failure (no answer within COMMAND_TIMEOUT_MS, or
   * an error) makes the instance not ready — /readyz 503, so a load balancer sends new clients
   * elsewhere — and is logged once; the next probe that succeeds makes it ready again.
   */
  private async probe(): Promise<void> {
    if (!this.ready || this.probing || this.closing) return;
    this.probing = true;
    let deaf = false;
    try {
      await this.writeProbeKey();
      await this.readIdentity();
      deaf = !(await this.echo());
      if (deaf) throw new Error('the subscriber did not deliver a probe published to it');
      if (!this.responsive) this.log.info('redis answers again: ready');
      this.responsive = true;
      this.probeFailures = 0;
      // Best effort, outside the verdict: in a Cluster the log's shard may be down while the
      // others serve, and one shard must not turn every instance away.
      await this.pollCommands(false).catch((err: Error) => this.logLimit.log(this.log, 'warn', 'command log read', { err: err.message }, 'command log not read: commands this instance did not hear wait for the next read'));
      if (this.failedLeaves.size > 0 && this.ready) {
        await this.replayLeaves();
        this.announceLeftOffline();
      }
    } catch (err) {
      if (ROLE_CHANGED.test((err as Error).message)) this.identity = '';
      if (++this.probeFailures >= 2 && this.responsive) {
        this.log.error({ err: (err as Error).message }, deaf ? 'redis subscriber delivers nothing: not ready until it does' : 'redis does not answer writes: not ready until it does');
        this.responsive = false;
      }
      // An error Redis answered with (OOM, READONLY…) comes over a working link: nothing to replace.
      const silent = deaf || (err as Error).name !== 'ReplyError';
      if (silent && this.probeFailures >= PROBE_FAILURES_TO_RECONNECT) {
        this.probeFailures = 0;
        // Only if a new connection gets an answer: then the links are at fault, not Redis. A Redis
        // that is stalled or overloaded answers nobody, and replacing every instance's links at once
        // would add a full restore to its load when it wakes.
        // And only if the link is still silent after that: a Redis that paused writes for a while
        // may have just resumed (the new connection answered because the pause ended).
        if ((await this.freshConnectionAnswers()) && !(await this.linkAnswersNow(deaf))) {
          // A silent command link most likely means the path to Redis is gone: the subscriber's
          // too (whose own probe needs a working command link to publish).
          const replaced = deaf && this.sub !== null ? [this.sub] : [this.cmd, ...(this.sub === null ? [] : [this.sub])];
          this.log.warn({ connections: deaf ? 'subscriber' : 'all' }, 'redis connection silent while a new one is answered: replaced');
          for (const conn of replaced) conn.disconnect(true);
        }
      }
    } finally {
      this.probing = false;
    }
    // A failure is probed again soon: confirmed (or not) quickly, and ready within a moment of Redis serving again.
    if (this.probeFailures > 0 && !this.closing) setTimeout(() => void this.probe(), PROBE_RETRY_MS).unref();
  }

  /** The probe's write: a short-lived key of this instance. */
  private writeProbeKey(): Promise<unknown> {
    return this.cmd.set(`ms:probe:{${this.origin}}`, Date.now(), 'PX', 3 * PROBE_INTERVAL_MS);
  }

  /** The link a probe found silent answers now (the subscriber: an echo comes back). */
  private async linkAnswersNow(subscriber: boolean): Promise<boolean> {
    try {
      if (subscriber) return await this.echo();
      await this.writeProbeKey();
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Publishes a probe to this instance's reply channel and waits for its own subscriber to deliver
   * it: false when the publish was answered but nothing came within COMMAND_TIMEOUT_MS (the
   * subscriber's link is gone without closing, or Redis no longer counts it subscribed). A publish
   * that is not answered throws (the command link's fault, not the subscriber's).
   */
  private async echo(): Promise<boolean> {
    const id = ++this.echoProbes;
    let arrived = false;
    let wake: () => void = () => undefined;
    this.echoWaiting = {
      id,
      heard: () => {
        arrived = true;
        wake();
      },
    };
    const text = JSON.stringify({ probe: id });
    try {
      const receivers = await (this.config.cluster ? this.cmd.spublish(this.replyChannel, text) : this.cmd.publish(this.replyChannel, text));
      // Redis counts no subscriber of ours: the subscriber's link is gone (from Redis's side).
      if (!arrived && !this.config.cluster && receivers === 0) return false;
      // Timed from the publish's answer: a slow command link is not the subscriber's fault.
      if (!arrived) await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, COMMAND_TIMEOUT_MS);
        wake = () => (clearTimeout(timer), resolve());
      });
      return arrived;
    } finally {
      this.echoWaiting = null;
    }
  }

  /**
   * Whether a new, short-lived connection to Redis gets a write answered within the command
   * timeout: tells links that went silent (replace them) from a Redis that answers nobody. A write,
   * like the probe: a Redis that pauses writes (CLIENT PAUSE WRITE, a FAILOVER under way) still
   * answers PING, and every instance would replace its healthy links at once.
   */
  private async freshConnectionAnswers(): Promise<boolean> {
    const once = { connectTimeout: COMMAND_TIMEOUT_MS, enableReadyCheck: false, maxRetriesPerRequest: 0, connectionName: 'message-service-check' };
    // A Cluster client: the check's key may live on any shard, and any seed may be the one up.
    const probe = this.config.cluster
      ? new Cluster(clusterSeeds(this.config.urls), { lazyConnect: true, clusterRetryStrategy: () => null, redisOptions: { ...clusterNodeOptions(this.config.urls), ...once } })
      : new Redis(this.config.urls[0]!, { lazyConnect: true, protocol: 2, commandTimeout: COMMAND_TIMEOUT_MS, retryStrategy: () => null, ...once });
    probe.on('error', () => undefined);
    try {
      await probe.connect();
      return (await probe.set(`ms:check:{${this.origin}}`, '1', 'PX', COMMAND_TIMEOUT_MS)) === 'OK';
    } catch {
      return false;
    } finally {
      probe.disconnect();
    }
  }

  /**
   * Reads which copy of the data the command connection is on (see `identity`). Between two
   * reads a node may stop being the master and come back as another copy (a fail-back after a
   * full resynchronisation); a write in between is refused READONLY, which clears the belief at
   * once — and the probes are writes, every PROBE_INTERVAL_MS.
   */
  private async readIdentity(): Promise<void> {
    if (this.config.cluster) return;
    try {
      this.identity = identityOf(await this.cmd.info());
    } catch (err) {
      // An ACL that denies INFO: the scripts then do without it too (see epochHead).
      this.identity = '';
      if (!/NOPERM/.test((err as Error).message)) throw err;
      const admitted = this.logLimit.admit('info denied');
      if (admitted !== null) this.log.warn({ err: (err as Error).message }, 'redis denies INFO: a restart or failover that brings back an older copy of a chat stream cannot be told from the original');
    }
  }

  async subscribe(chat: IdKey): Promise<void> {
    if (!this.ready) throw new EngineUnavailableError('redis unavailable');
    const call = ++this.subscribeCalls;
    this.subscribed.set(chat, call);
    try {
      await this.enqueue('subscribe', chat);
    } catch (err) {
      if (this.subscribed.get(chat) === call) {
        this.subscribed.delete(chat);
        // A timed-out SUBSCRIBE still runs once a slow Redis catches up, and would then stay
        // forever. This UNSUBSCRIBE goes on the same connection, so it runs after it, and before
        // any later subscribe of the chat (those are enqueued after it).
        this.enqueue('unsubscribe', chat).catch(() => undefined);
      }
      throw unavailable(err);
    }
  }

  async unsubscribe(chat: IdKey): Promise<void> {
    this.subscribed.delete(chat);
    this.chatLogFloors.delete(chat);
    try {
      // Sent even while not ready: the subscriber connection may be up while the command one is
      // not, and a channel left subscribed there would stay. If it is down, the subscription went
      // with it, and recovery resubscribes only the chats still wanted.
      await this.enqueue('unsubscribe', chat);
    } catch (err) {
      // Not ready: see above. Ready: a timed-out UNSUBSCRIBE still runs, in order, later.
      if (this.ready) throw unavailable(err);
    } finally {
      // Publications after the UNSUBSCRIBE will not come back: don't wait for them.
      for (const [id, u] of this.unechoed) if (!this.subscribed.has(u.chat)) this.settle(id);
    }
  }

  /** Resolves once this instance delivered the publication itself (see Engine), at most after COMMAND_TIMEOUT_MS. */
  async publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void> {
    await this.echoed(chat, exceptConn, (header) => {
      const payload = Buffer.concat([header, frame]);
      return this.config.cluster ? this.cmd.spublish(channelOf(chat), payload) : this.cmd.publish(channelOf(chat), payload);
    });
  }

  /** One script numbers, stores and publishes (stream-scripts.ts); resolves after our own delivery, like `publish`. */
  async append(chat: IdKey, frame: Buffer, exceptConn: string | null, key = '', attempt?: AppendAttempt): Promise<AppendResult> {
    const { size, ttlMs } = this.history;
    const [seq, epoch, already, stored] = await this.echoed(
      chat,
      exceptConn,
      (header) =>
        this.cmd.msAppend(streamKey(chat), historyKey(chat), newEpoch(), frame, header, channelOf(chat), this.config.cluster ? 'SPUBLISH' : 'PUBLISH', Date.now(), size, ttlMs, STREAM_TTL_MS, key, attempt?.token ?? '', attempt?.retry === true ? '1' : '', attempt?.firstAt ?? 0, this.identity),
      // An earlier attempt appended it: nothing was published now, so no echo comes.
      ([, , found]) => found !== 1,
    );
    return already === 1 && stored !== undefined ? { seq, epoch, earlier: Buffer.from(stored, 'utf8') } : { seq, epoch };
  }

  async contains(chat: IdKey, key: string): Promise<boolean> {
    return (await this.whenReady(() => this.cmd.msContains(historyKey(chat), key, this.history.size, CONTAINS_MAX_BYTES))) === 1;
  }

  /**
   * A chat's command goes on the chat's channel (so it keeps the chat's one order; marked by
   * COMMAND_MARK in the header), others on CONTROL_CHANNEL. Each instance that acts on it
   * replies on our reply channel with what it did, and PUBLISH tells how many instances got it,
   * so we know when every answer is in. A Cluster's classic PUBLISH counts only one node's
   * subscribers: there, a command for every instance cannot be counted (nulls).
   */
  async command(chat: IdKey | null, command: ControlCommand): Promise<CommandResult> {
    const countable = chat !== null || !this.config.cluster;
    const req = ++this.requestCount;
    const token = `${this.origin}c${req}`;
    const body = JSON.stringify(countable ? { ...command, token, reply: this.replyChannel, req } : { ...command, token });
    const request = { replies: 0, connections: 0, wake: () => undefined };
    if (countable) this.requests.set(req, request);
    try {
      // Logged too, in the same tick as the publish (one batch, sent in order, so the command
      // keeps its place among the chat's publications): an instance that misses the publication
      // (its subscription down) acts on it from the log once it is back. A command answered 503
      // may still be acted on so: resending one is harmless.
      // Best effort: the publish is the command (a Redis out of memory refuses the XADD, not the
      // PUBLISH; a Cluster shard holding the log may be down while the chat's is not).
      if (this.ready) {
        this.cmd.xadd(COMMAND_LOG, 'MAXLEN', '~', COMMAND_LOG_MAX, '*', 'c', body).catch((err: Error) => {
          this.logLimit.log(this.log, 'warn', 'command log', { err: err.message }, 'command not logged: an instance that cannot hear it now will not act on it later');
        });
        void this.cmd.pexpire(COMMAND_LOG, COMMAND_LOG_TTL_MS).catch(() => undefined);
      }
      const published = this.whenReady(() => {
        if (chat === null) return this.cmd.publish(CONTROL_CHANNEL, body) as Promise<number>;
        const payload = Buffer.from(`${this.origin}c${req} ${COMMAND_MARK}\n${body}`);
        return (this.config.cluster ? this.cmd.spublish(channelOf(chat), payload) : this.cmd.publish(channelOf(chat), payload)) as Promise<number>;
      });
      const receivers = await published;
      if (!countable) return { instances: null, connections: null };
      if (request.replies < receivers) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, COMMAND_TIMEOUT_MS);
          request.wake = () => {
            if (request.replies >= receivers) (clearTimeout(timer), resolve());
          };
        });
      }
      if (request.replies < receivers) {
        this.log.warn({ op: command.op, instances: receivers, replies: request.replies }, 'command: not every instance answered in time');
        return { instances: receivers, connections: null };
      }
      return { instances: receivers, connections: request.connections };
    } finally {
      this.requests.delete(req);
    }
  }

  /** Acts on a command from any instance (this one included) and replies with what it did. */
  private onCommand(text: string): void {
    const heard = this.actOnce(text);
    if (heard === null) return;
    const { reply, req } = heard.envelope;
    const acted = heard.acted ?? 0;
    if (typeof reply !== 'string' || !reply.startsWith('ms:reply:{') || typeof req !== 'number') return;
    const answer = JSON.stringify({ req, connections: acted });
    (this.config.cluster ? this.cmd.spublish(reply, answer) : this.cmd.publish(reply, answer)).catch((err: Error) =>
      this.log.warn({ err: err.message }, 'command reply failed'),
    );
  }

  /**
   * Decodes a command heard live and acts on it unless the log brought it first. null: not a
   * command this version knows; `acted`: the connections acted on, or null if acted on before.
   */
  private actOnce(text: string): { envelope: { reply?: unknown; req?: unknown }; acted: number | null } | null {
    const decoded = decodeCommand(text);
    if (decoded === null || this.events === null) return null;
    const { envelope, command, token } = decoded;
    if (token !== null) {
      const seen = this.commandsSeen.get(token);
      // Acted on from the log first: this publication still gets the answer, with what was done.
      if (seen !== undefined) return { envelope, acted: seen.acted };
      this.noteCommand(token, null);
    }
    return { envelope, acted: this.events.command(command) };
  }

  /** A command was acted on (`acted`: connections, when from the log) before it was met the other way. */
  private noteCommand(token: string, acted: number | null): void {
    const now = performance.now(); // monotonic: a clock set back must not keep every token
    this.commandsSeen.set(token, { at: now, acted });
    // Normally the log is read past it within a probe; an entry that never came (its XADD failed)
    // is let go only once a read that surely would have met it has succeeded.
    const before = Math.min(now - COMMAND_SEEN_MS, this.commandPollStartedAt - COMMAND_LOGGED_WITHIN_MS);
    for (const [seen, { at }] of this.commandsSeen) {
      if (at >= before) break;
      this.commandsSeen.delete(seen);
    }
  }

  /**
   * Reads the command log on from `commandCursor` and acts on what this instance did not hear:
   * with every probe (so a subscription lost without a sign — a Cluster's sharded subscriber
   * remade behind the client's back — costs a command at most a probe interval), and after an
   * outage. A command heard live is met here once and forgotten. A revoke acts only where this
   * instance was subscribed to the chat before it was logged (see `chatLogFloors`). The first
   * read only learns where the log stands. `trimCheck`: say so if entries not read were trimmed.
   */
  private pollCommands(trimCheck: boolean): Promise<void> {
    this.commandPoll ??= this.readCommandLog(trimCheck).finally(() => (this.commandPoll = null));
    return this.commandPoll;
  }

  private async readCommandLog(trimCheck: boolean): Promise<void> {
    const startedAt = performance.now();
    if (this.commandCursor === null) {
      this.commandCursor = await this.commandLogHead();
      this.commandPollStartedAt = startedAt;
      return;
    }
    if (trimCheck) {
      const oldest = (await this.cmd.xrange(COMMAND_LOG, '-', '+', 'COUNT', 1))[0];
      if (oldest !== undefined && streamIdAfter(oldest[0], this.commandCursor) && (await this.cmd.xlen(COMMAND_LOG)) >= COMMAND_LOG_MAX) {
        this.log.error({ from: this.commandCursor, oldest: oldest[0] }, 'server-API commands logged while redis was away were trimmed before this instance read them: some may not be applied here');
      }
    }
    let acted = 0;
    for (;;) {
      const page: Array<[id: string, fields: string[]]> = await this.cmd.xrange(COMMAND_LOG, `(${this.commandCursor}`, '+', 'COUNT', COMMAND_LOG_PAGE);
      for (const [id, fields] of page) {
        this.commandCursor = id;
        if (this.actOnLogged(id, fields[1] ?? '')) acted++;
      }
      if (page.length < COMMAND_LOG_PAGE) break;
    }
    this.commandPollStartedAt = startedAt;
    if (acted > 0) this.log.warn({ commands: acted }, 'acted on server-API commands this instance did not hear when they were published');
  }

  async readMissedCommands(): Promise<void> {
    if (this.ready) await this.pollAfresh(false);
  }

  /** A read that begins now: one under way may have been answered before what is wanted was logged. */
  private async pollAfresh(trimCheck: boolean): Promise<void> {
    await this.commandPoll?.catch(() => undefined);
    await this.pollCommands(trimCheck);
  }

  /** A command read from the log: true if acted on (it had not been heard live). */
  private actOnLogged(id: string, text: string): boolean {
    const decoded = decodeCommand(text);
    if (decoded === null || this.events === null) return false;
    const { command, token } = decoded;
    if (token !== null && this.commandsSeen.delete(token)) return false; // heard live
    if (command.op === 'revoke') {
      const floor = this.chatLogFloors.get(command.chat);
      if (floor === undefined || !streamIdAfter(id, floor)) return false;
    }
    // Its publication may still be on its way (a Cluster logs on another node): not acted on twice.
    const acted = this.events.command(command);
    if (token !== null) this.noteCommand(token, acted);
    return true;
  }

  /** The command log's newest id ('0-0' when empty). */
  private async commandLogHead(): Promise<string> {
    return (await this.cmd.xrevrange(COMMAND_LOG, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
  }

  /**
   * Chats about to be subscribed (with their subscribe call): where the log stands is their floor
   * (see `chatLogFloors`) — read in the same tick as the SUBSCRIBE; if it cannot be read, where
   * this instance last read it (earlier: a revoke logged just before may then be acted on). Kept
   * through an outage's resubscribe; a chat unsubscribed and subscribed again meanwhile takes its
   * own call's.
   */
  private noteChatLogFloors(calls: ReadonlyArray<readonly [IdKey, number | undefined]>): void {
    void this.commandLogHead()
      .catch(() => this.commandCursor ?? '0-0')
      .then((head) => {
        for (const [chat, call] of calls) if (call !== undefined && this.subscribed.get(chat) === call && !this.chatLogFloors.has(chat)) this.chatLogFloors.set(chat, head);
      });
  }

  private onReply(text: string): void {
    let v: { req?: unknown; connections?: unknown; probe?: unknown };
    try {
      v = JSON.parse(text) as typeof v;
    } catch {
      return;
    }
    if (v.probe !== undefined) {
      if (v.probe === this.echoWaiting?.id) this.echoWaiting.heard();
      return;
    }
    const request = typeof v.req === 'number' ? this.requests.get(v.req) : undefined;
    if (request === undefined || typeof v.connections !== 'number') return;
    request.replies++;
    request.connections += v.connections;
    request.wake();
  }

  async position(chat: IdKey): Promise<StreamPosition> {
    return (await this.readStream(chat, -1, '', 0)).position;
  }

  async recover(chat: IdKey, since: StreamPosition, maxBytes: number): Promise<Recovery> {
    return this.readStream(chat, since.seq, since.epoch, maxBytes);
  }

  private async readStream(chat: IdKey, sinceSeq: number, sinceEpoch: string, maxBytes: number): Promise<Recovery> {
    const reply = await this.whenReady(() =>
      this.cmd.msRecoverBuffer(streamKey(chat), historyKey(chat), newEpoch(), sinceSeq, sinceEpoch, Date.now() - this.history.ttlMs, maxBytes, this.history.size, STREAM_TTL_MS, this.identity),
    );
    const [seq, epoch, outcome, ...frames] = reply;
    const position = { seq, epoch: epoch.toString('latin1') };
    const result = outcome.toString('latin1');
    if (result === 'ok' || result === 'position') return { recovered: true, position, frames };
    return { recovered: false, position, reason: result as RecoveryFailure };
  }

  /**
   * Runs `send` with the payload header `<publication id>[ <exceptConn>]\n` and resolves once
   * this instance delivered the publication itself (when subscribed; see Engine), at most after
   * COMMAND_TIMEOUT_MS.
   */
  private async echoed<T>(chat: IdKey, exceptConn: string | null, send: (header: Buffer) => Promise<T>, published: (result: T) => boolean = () => true): Promise<T> {
    const id = this.origin + (++this.publications).toString(36);
    const header = Buffer.from(exceptConn === null ? `${id}\n` : `${id} ${exceptConn}\n`, 'latin1');
    const echo = this.ready && this.subscribed.has(chat) ? this.awaitEcho(id, chat) : undefined;
    let result: T;
    try {
      result = await this.whenReady(() => send(header));
    } catch (err) {
      this.settle(id);
      throw err;
    }
    if (!published(result)) this.settle(id);
    await echo;
    return result;
  }

  async join(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    const entry = { chat, user, conn };
    const key = entryKey(entry);
    const pending = this.failedLeaves.get(key);
    this.failedLeaves.delete(key); // joined again: an earlier leave must not take it away (sent before it)
    let cameOnline: number[];
    try {
      // An earlier join of this connection timed out (a client retrying its register): its write
      // may have run since, and this one would then find the user online and announce nothing.
      // Undone first, on the same connection, so `cameOnline` tells the truth.
      if (pending?.held === 0) await this.whenReady(() => this.removeEntry(pending));
      cameOnline = await this.whenReady(() => this.writeEntries(chat, [entry], Date.now()));
    } catch (err) {
      // A write that timed out on a stalled Redis still runs when it wakes, for a member the hub
      // never attached: a leave undoes it then (a no-op if it never ran; see `failedLeaves`).
      this.failedLeaves.set(key, { ...entry, held: 0 });
      throw err;
    }
    this.entries.set(key, entry);
    return cameOnline.length === 1;
  }

  async leave(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    const entry = { chat, user, conn };
    const key = entryKey(entry);
    const held = this.entries.delete(key) ? 1 : 0;
    try {
      return (await this.whenReady(() => this.removeEntry({ ...entry, held }))) === 1;
    } catch (err) {
      // Its entry may outlast the outage in Redis (it then expires, and the sweep announces the
      // user offline), be lost with Redis's data, or be removed by this very leave once a stalled
      // Redis wakes (then nothing would ever announce it): run again once Redis serves.
      if (held === 1) this.failedLeaves.set(key, { ...entry, held });
      throw err;
    }
  }

  /**
   * Runs the leaves that failed during an outage or a stall: after a reconnect, and after a probe
   * answers (a stall drops no connection). Those that took a user's last connection (Redis lost
   * the entry, still had it, or the timed-out leave had removed it meanwhile) are kept in
   * `leftOffline` as each one runs — so a round in which another leave fails loses none of them —
   * and announced once ready. One round at a time: a leave run twice would find its entry gone.
   */
  private replayLeaves(): Promise<void> {
    this.leavesReplay ??= Promise.all(
      [...this.failedLeaves].map(async ([key, failed]) => {
        const { chat, user, held } = failed;
        const last = await this.removeEntry(failed);
        if (this.failedLeaves.get(key) === failed) this.failedLeaves.delete(key);
        // An undone join (held 0) was never announced online: its last entry leaving says nothing.
        if (last !== 1 || held === 0) return;
        const users = this.leftOffline.get(chat);
        if (users === undefined) this.leftOffline.set(chat, [user]);
        else users.push(user);
      }),
    ).then(
      () => { this.leavesReplay = null; },
      (err: unknown) => { this.leavesReplay = null; throw err; },
    );
    return this.leavesReplay;
  }

  async settlePresence(deadline: number): Promise<void> {
    while (this.failedLeaves.size > 0 && !this.closing && Date.now() < deadline) {
      if (this.connectionsUp()) {
        try {
          await this.replayLeaves();
          // Announced through a publish, which needs the engine ready (a recovery may still run).
          while (!this.isReady() && Date.now() < deadline) await sleep(50);
          this.announceLeftOffline();
          return;
        } catch {
          // Still not serving (a stall past the command timeout): try again while time is left.
        }
      } else {
        await sleep(100); // reconnecting: restoreAfterOutage may run them first
      }
    }
  }

  /** The LEAVE script for one entry: 1 if it took the user's last live connection (see scripts.ts for `held`). */
  private async removeEntry({ chat, user, conn, held }: PresenceEntry & { held: 0 | 1 }): Promise<number> {
    const now = Date.now();
    // Its offline is confirmed sent (see offlineAnnounced) well within a TTL; past it a sweep announces it.
    const deadline = now + this.presenceTtlMs;
    const last = await this.cmd.msLeave(presenceKey(chat), userPrefix(chat) + user, leavingKey(chat), now, conn, user, held, deadline, this.keyTtlMs);
    if (last === 1) {
      this.leaving.delete(`${chat}|${user}`);
      this.leaving.set(`${chat}|${user}`, deadline);
      // Those whose offline never went out are the sweep's now: forgotten here.
      for (const [key, at] of this.leaving) {
        if (at > now) break;
        this.leaving.delete(key);
      }
    }
    return last;
  }

  /**
   * The `offline` of these users went out: a sweep need not announce it (see LEAVE). Only the
   * records of this instance's own leaves, and only while they are the ones it wrote (the user may
   * have come and gone again through another instance meanwhile, whose record must stay). Best effort.
   */
  offlineAnnounced(chat: IdKey, users: readonly IdKey[]): void {
    const pairs: Array<string | number> = [];
    for (const user of users) {
      const deadline = this.leaving.get(`${chat}|${user}`);
      if (deadline === undefined) continue;
      this.leaving.delete(`${chat}|${user}`);
      pairs.push(user, deadline);
    }
    if (!this.ready || pairs.length === 0) return;
    this.cmd.msAnnounced(leavingKey(chat), ...pairs).catch(() => undefined);
  }

  /** Publishes the `offline`s replayed leaves found (see `replayLeaves`). */
  private announceLeftOffline(): void {
    for (const [chat, users] of this.leftOffline) this.events?.presenceExpired(chat, users);
    this.leftOffline.clear();
  }

  async online(chat: IdKey): Promise<IdKey[]> {
    return this.whenReady(() => this.cmd.zrangebyscore(presenceKey(chat), Date.now(), '+inf'));
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.timer !== null) clearInterval(this.timer);
    if (this.probeTimer !== null) clearInterval(this.probeTimer);
    if (this.echoSweep !== null) clearInterval(this.echoSweep);
    this.echoSweep = null;
    if (this.ready) {
      // Entries whose leave did not run (or failed): remove them so nobody waits for the TTL.
      await Promise.allSettled([...this.entries.values()].map((e) => this.leave(e.chat, e.user, e.conn)));
      const chats = [...this.subscribed.keys()];
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
    if (!name.startsWith(CHANNEL_PREFIX)) {
      if (name === CONTROL_CHANNEL) this.onCommand(message.toString('utf8'));
      else if (name === this.replyChannel) this.onReply(message.toString('utf8'));
      return;
    }
    const chat = name.slice(CHANNEL_PREFIX.length, -1);
    const nl = message.indexOf(NEWLINE);
    if (nl < 0) return;
    // The header's first two spaces (a short line: no views, no scan into the frame). Fields
    // after the second are a later version's: ignored.
    let sp = -1;
    let end = nl;
    for (let i = 0; i < nl; i++) {
      if (message[i] !== SPACE) continue;
      if (sp >= 0) {
        end = i;
        break;
      }
      sp = i;
    }
    const exceptConn = sp < 0 ? null : message.toString('latin1', sp + 1, end);
    if (exceptConn?.startsWith(KIND_PREFIX)) {
      if (exceptConn === COMMAND_MARK) this.onCommand(message.toString('utf8', nl + 1));
      return;
    }
    this.events.deliver(chat, message.subarray(nl + 1), exceptConn);
    if (this.unechoed.size > 0) this.settle(message.toString('latin1', 0, sp < 0 ? nl : sp));
  }

  /** Waits for our own delivery of publication `id`; COMMAND_TIMEOUT_MS bounds it if that never comes. */
  private awaitEcho(id: string, chat: IdKey): Promise<void> {
    return new Promise((resolve) => {
      this.unechoed.set(id, { chat, at: Date.now(), done: resolve });
      this.echoSweep ??= setInterval(() => this.sweepEchoes(), COMMAND_TIMEOUT_MS / 4).unref();
    });
  }

  private sweepEchoes(): void {
    const cutoff = Date.now() - COMMAND_TIMEOUT_MS;
    for (const [id, u] of this.unechoed) {
      if (u.at > cutoff) break;
      this.settle(id);
    }
    if (this.unechoed.size === 0 && this.echoSweep !== null) {
      clearInterval(this.echoSweep);
      this.echoSweep = null;
    }
  }

  private settle(id: string): void {
    const u = this.unechoed.get(id);
    if (u === undefined) return;
    this.unechoed.delete(id);
    u.done();
  }

  /** Tracks connection state; after an outage, resubscribe and restore presence before ready. */
  private watch(conn: Redis | Cluster, role: string): void {
    // Before the first connection too: a wrong host or password must show at the default level.
    conn.on('error', (err: Error) => {
      this.logLimit.log(this.log, 'warn', `connection ${role}`, { role, err: err.message }, 'redis connection error');
    });
    conn.on('ready', () => void this.restoreAfterOutage());
    for (const event of ['close', 'end', 'reconnecting']) {
      conn.on(event, () => {
        if (conn === this.cmd) this.identity = ''; // the next connection may be to another copy
        this.losses++;
        if (this.ready) this.log.warn({ role, event }, 'redis connection lost');
        this.setReady(false);
      });
    }
  }

  private connectionsUp(): boolean {
    return this.cmd.status === 'ready' && (this.sub === null || this.sub.status === 'ready');
  }

  private async restoreAfterOutage(): Promise<void> {
    if (this.closing || this.restoring || this.ready || !this.connectionsUp()) return;
    this.restoring = true;
    const losses = this.losses;
    try {
      await this.readIdentity();
      await this.subscribeControl();
      await this.sendSubscription('subscribe', [...this.subscribed.keys()].map(channelOf));
      // Best effort (the log's shard may be down in a Cluster): the next probe reads on from here.
      await this.pollAfresh(true).catch((err: Error) => this.log.warn({ err: err.message }, 'command log not read after the outage: commands published meanwhile wait for the next read'));
      await this.refreshPresence();
      await this.replayLeaves();
    } catch (err) {
      // Connected but not serving (out of memory, a replica, still loading): tried again while
      // the connections stay up — a reconnect would try again too, but none may ever come.
      this.log.warn({ err: (err as Error).message }, 'redis recovery failed; retrying');
      setTimeout(() => void this.restoreAfterOutage(), RESTORE_RETRY_MS).unref();
      return;
    } finally {
      this.restoring = false;
    }
    // A subscriber lost and back meanwhile has none of the subscriptions just made.
    if (this.losses !== losses) return void this.restoreAfterOutage();
    if (this.connectionsUp()) {
      if (this.everReady) this.log.info({ chats: this.subscribed.size, presence: this.entries.size }, 'redis back: subscriptions and presence restored');
      this.everReady = true;
      this.setReady(true);
      this.announceRestored(); // only now: the hub publishes `online`, which needs a ready engine
      // A moment later: the other instances lost Redis too, and hear it only once they have
      // subscribed again (presence is not replayed); their reconnects may lag ours by a retry step.
      setTimeout(() => !this.closing && this.announceLeftOffline(), LEFT_OFFLINE_DELAY_MS).unref();
    }
  }

  private setReady(ready: boolean): void {
    if (this.ready === ready) return;
    this.ready = ready;
    // Back after an outage that found Redis not serving: probed at once, not at the next interval.
    if (ready && !this.responsive) void this.probe();
    // A lost connection may have taken our publications or subscriptions with it: stop waiting.
    if (!ready) for (const id of [...this.unechoed.keys()]) this.settle(id);
    this.events?.readyChange(ready);
  }

  /**
   * Fails fast while Redis is unreachable; every Redis error surfaces as EngineUnavailableError.
   * Errors Redis answers with (READONLY on a replica, OOM, MOVED without REDIS_CLUSTER,
   * CLUSTERDOWN, …) are logged — by their first word, at most once per 10 s each — since a
   * client only sees `upstream_unavailable`.
   */
  private async whenReady<T>(command: () => Promise<T>): Promise<T> {
    if (!this.ready) throw new EngineUnavailableError('redis unavailable');
    try {
      return await command();
    } catch (err) {
      this.logCommandError(err);
      throw unavailable(err);
    }
  }

  private logCommandError(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    if (ROLE_CHANGED.test(message)) this.identity = ''; // until a probe reads it again
    const replied = err instanceof Error && err.name === 'ReplyError';
    const kind = replied ? (message.split(' ', 1)[0] ?? 'error') : /timed out/i.test(message) ? 'timeout' : 'other';
    const admitted = this.logLimit.admit(`command ${kind}`);
    if (admitted === null) return;
    const fields = { err: message.slice(0, 200), suppressed: admitted.suppressed };
    if (replied) this.log.error(fields, 'redis refused a command');
    else this.log.warn(fields, 'redis command failed');
  }

  /** The channels every instance listens on for as long as it runs: commands, and replies to its own. */
  private async subscribeControl(): Promise<void> {
    if (this.sub !== null) await this.sub.subscribe(CONTROL_CHANNEL, this.replyChannel);
    else await Promise.all([this.cmd.subscribe(CONTROL_CHANNEL), this.cmd.ssubscribe(this.replyChannel)]);
  }

  /** The one place that picks plain (one command, many channels) or sharded (one per channel) pub/sub. */
  private sendSubscription(op: 'subscribe' | 'unsubscribe', channels: string[]): Promise<unknown> {
    if (channels.length === 0) return Promise.resolve();
    if (this.sub !== null) return op === 'subscribe' ? this.sub.subscribe(...channels) : this.sub.unsubscribe(...channels);
    return Promise.all(channels.map((ch) => (op === 'subscribe' ? this.cmd.ssubscribe(ch) : this.cmd.sunsubscribe(ch))));
  }

  /** Adds or refreshes presence entries of one chat; the indexes of those whose user came online. */
  private writeEntries(chat: IdKey, entries: readonly PresenceEntry[], now: number): Promise<number[]> {
    const pairs = entries.flatMap((e) => [e.user, e.conn]);
    return this.cmd.msWriteEntries(presenceKey(chat), now, now + this.presenceTtlMs, this.keyTtlMs, userPrefix(chat), ...pairs);
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
      if (op === 'subscribe') this.noteChatLogFloors(group.map((p) => [p.chat, this.subscribed.get(p.chat)] as const));
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
      await this.refreshPresence().finally(() => this.announceRestored());
      const now = Date.now();
      await Promise.all(
        [...this.subscribed.keys()].map(async (chat) => {
          const [seq, epoch, ...gone] = await this.cmd.msSweep(presenceKey(chat), streamKey(chat), leavingKey(chat), now, userPrefix(chat));
          if (gone.length > 0) this.events?.presenceExpired(chat, gone);
          if (epoch !== '') this.events?.streamAt(chat, { seq, epoch });
        }),
      );
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'presence maintenance failed');
    }
  }

  /**
   * Re-writes this instance's entries. Those it had to re-create after their user went offline
   * for everyone (swept after a stall, or lost by Redis) while still connected are kept for
   * `announceRestored`, also when another write of the round fails: their entries exist again,
   * so no later refresh would report them.
   */
  private async refreshPresence(): Promise<void> {
    const now = Date.now();
    const byChat = new Map<IdKey, PresenceEntry[]>();
    for (const e of this.entries.values()) {
      const list = byChat.get(e.chat);
      if (list === undefined) byChat.set(e.chat, [e]);
      else list.push(e);
    }
    const calls: Array<Promise<void>> = [];
    for (const [chat, list] of byChat) {
      // One script call per chat (bounded, so a huge chat cannot hold Redis for long).
      for (let at = 0; at < list.length; at += REFRESH_BATCH) {
        const batch = list.slice(at, at + REFRESH_BATCH);
        calls.push(
          this.writeEntries(chat, batch, now).then((restored) => {
            for (const i of restored) this.restored.push(batch[i]!);
          }),
        );
      }
    }
    await Promise.all(calls);
  }

  private announceRestored(): void {
    if (!this.ready || this.restored.length === 0) return;
    const byChat = new Map<IdKey, IdKey[]>();
    for (const e of this.restored.splice(0)) {
      // Left meanwhile: its leave ran after the refresh in Redis and announces offline itself.
      if (this.entries.get(entryKey(e)) !== e) continue;
      const users = byChat.get(e.chat);
      if (users === undefined) byChat.set(e.chat, [e.user]);
      else users.push(e.user);
    }
    for (const [chat, users] of byChat) this.events?.presenceRestored(chat, users);
  }
}
