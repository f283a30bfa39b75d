import { randomBytes } from 'node:crypto';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { RedisConfig } from '../../config/index.js';
import { redactUrl } from '../../config/index.js';
import type { Logger } from '../../log.js';
import type { IdKey } from '../../protocol/ids.js';
import { EngineUnavailableError, type Engine, type EngineEvents } from '../types.js';
import type { CommandResult, ControlCommand } from '../control.js';
import { STREAM_TTL_MS, newEpoch, type AppendAttempt, type AppendResult, type HistoryLimits, type Recovery, type RecoveryFailure, type StreamPosition } from '../stream.js';
import { ANNOUNCED, LEAVE, SWEEP, WRITE_ENTRIES } from './scripts.js';
import { APPEND, CONTAINS, CONTAINS_MAX_BYTES, RECOVER } from './stream-scripts.js';
import { LogLimiter } from '../../util/log-limit.js';
import { CONTROL_CHANNEL, CommandPlane } from './commands.js';
import { CHANNEL_PREFIX, COMMAND_MARK, COMMAND_TIMEOUT_MS, KIND_PREFIX, channelOf, historyKey, leavingKey, presenceKey, streamKey, userPrefix, type Commands, type RedisLink } from './link.js';
import { RedisPresence } from './presence.js';

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
const NEWLINE = 0x0a;
const SPACE = 0x20;

/** `run_id:replid` from INFO's server and replication sections, as the stream scripts spell it. */
const identityOf = (info: string) => {
  const run = /run_id:([0-9a-f]+)/.exec(info)?.[1];
  const replid = /master_replid:([0-9a-f]+)/.exec(info)?.[1];
  return run === undefined || replid === undefined ? '' : `${run}:${replid}`;
};
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
  /** Publications awaiting our own delivery, oldest first (Map order), with when they were sent. */
  private readonly unechoed = new Map<string, { chat: IdKey; at: number; done: () => void }>();
  /** Settles what waited longer than COMMAND_TIMEOUT_MS; runs only while something waits (no timer per publication). */
  private echoSweep: NodeJS.Timeout | null = null;
  private readonly origin = randomBytes(9).toString('base64url');
  private publications = 0;
  /**
   * Which copy of the data the command connection is on — the Redis process's run_id and its
   * replication id (see epochHead in stream-scripts.ts) — read when the connection became ready
   * (before any stream script is sent) and again after every probe; '' while unknown, after an
   * error that says the node's role changed, and in a Cluster: the scripts then ask Redis itself.
   */
  private identity = '';
  private pending: Array<{ op: 'subscribe' | 'unsubscribe'; chat: IdKey; done: (err?: Error) => void }> = [];
  private flushScheduled = false;

  private readonly logLimit = new LogLimiter();
  /** What the command plane and presence see of this engine. */
  private readonly link: RedisLink;
  private readonly commands: CommandPlane;
  private readonly presence: RedisPresence;

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
  /** Echo probes sent (see `echo`), and the one waited for with what its arrival wakes. */
  private echoProbes = 0;
  private echoWaiting: { id: number; heard: () => void } | null = null;

  constructor(
    private readonly config: RedisConfig,
    private readonly presenceTtlMs: number,
    private readonly log: Logger,
    private readonly history: HistoryLimits = { size: 100, ttlMs: 300_000 },
  ) {
    this.link = {
      cmd: () => this.cmd,
      cluster: config.cluster,
      connected: () => this.ready,
      serving: () => this.isReady(),
      connectionsUp: () => this.connectionsUp(),
      closing: () => this.closing,
      events: () => this.events,
      whenReady: (command) => this.whenReady(command),
      publishOn: (channel, payload) => (config.cluster ? this.cmd.spublish(channel, payload) : this.cmd.publish(channel, payload)) as Promise<number>,
    };
    this.commands = new CommandPlane(this.link, this.origin, log, this.logLimit);
    this.presence = new RedisPresence(this.link, presenceTtlMs);
  }

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
      await this.commands.poll(false).catch((err: Error) => this.logLimit.log(this.log, 'warn', 'command log read', { err: err.message }, 'command log not read: commands this instance did not hear wait for the next read'));
      if (this.presence.owesLeaves && this.ready) {
        await this.presence.replayLeaves();
        this.presence.announceLeftOffline();
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
      const receivers = await this.link.publishOn(this.commands.replyChannel, text);
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
        this.commands.forgetChat(chat);
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
    this.commands.forgetChat(chat);
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
      return this.link.publishOn(channelOf(chat), Buffer.concat([header, frame]));
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

  command(chat: IdKey | null, command: ControlCommand): Promise<CommandResult> {
    return this.commands.send(chat, command);
  }

  async readMissedCommands(): Promise<void> {
    if (this.ready) await this.commands.pollAfresh(false);
  }

  private onReply(text: string): void {
    let v: { req?: unknown; connections?: unknown; probe?: unknown };
    try {
      v = JSON.parse(text) as typeof v;
    } catch {
      return;
    }
    if (v.probe === undefined) this.commands.onReply(v.req, v.connections);
    else if (v.probe === this.echoWaiting?.id) this.echoWaiting.heard();
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

  join(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    return this.presence.join(chat, user, conn);
  }

  leave(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    return this.presence.leave(chat, user, conn);
  }

  settlePresence(deadline: number): Promise<void> {
    return this.presence.settleLeaves(deadline);
  }

  offlineAnnounced(chat: IdKey, users: readonly IdKey[]): void {
    this.presence.offlineAnnounced(chat, users);
  }

  online(chat: IdKey): Promise<IdKey[]> {
    return this.presence.online(chat);
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.timer !== null) clearInterval(this.timer);
    if (this.probeTimer !== null) clearInterval(this.probeTimer);
    if (this.echoSweep !== null) clearInterval(this.echoSweep);
    this.echoSweep = null;
    if (this.ready) {
      await this.presence.leaveAll();
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
      if (name === CONTROL_CHANNEL) this.commands.onCommand(message.toString('utf8'));
      else if (name === this.commands.replyChannel) this.onReply(message.toString('utf8'));
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
      if (exceptConn === COMMAND_MARK) this.commands.onCommand(message.toString('utf8', nl + 1));
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
      await this.commands.pollAfresh(true).catch((err: Error) => this.log.warn({ err: err.message }, 'command log not read after the outage: commands published meanwhile wait for the next read'));
      await this.presence.refresh();
      await this.presence.replayLeaves();
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
      if (this.everReady) this.log.info({ chats: this.subscribed.size, presence: this.presence.size }, 'redis back: subscriptions and presence restored');
      this.everReady = true;
      this.setReady(true);
      this.presence.announceRestored(); // only now: the hub publishes `online`, which needs a ready engine
      // A moment later: the other instances lost Redis too, and hear it only once they have
      // subscribed again (presence is not replayed); their reconnects may lag ours by a retry step.
      setTimeout(() => !this.closing && this.presence.announceLeftOffline(), LEFT_OFFLINE_DELAY_MS).unref();
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
    const replies = this.commands.replyChannel;
    if (this.sub !== null) await this.sub.subscribe(CONTROL_CHANNEL, replies);
    else await Promise.all([this.cmd.subscribe(CONTROL_CHANNEL), this.cmd.ssubscribe(replies)]);
  }

  /** The one place that picks plain (one command, many channels) or sharded (one per channel) pub/sub. */
  private sendSubscription(op: 'subscribe' | 'unsubscribe', channels: string[]): Promise<unknown> {
    if (channels.length === 0) return Promise.resolve();
    if (this.sub !== null) return op === 'subscribe' ? this.sub.subscribe(...channels) : this.sub.unsubscribe(...channels);
    return Promise.all(channels.map((ch) => (op === 'subscribe' ? this.cmd.ssubscribe(ch) : this.cmd.sunsubscribe(ch))));
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
      if (op === 'subscribe') {
        const calls = new Map(group.map((p) => [p.chat, this.subscribed.get(p.chat)]));
        this.commands.noteSubscribing([...calls.keys()], (chat) => calls.get(chat) !== undefined && this.subscribed.get(chat) === calls.get(chat));
      }
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
      await this.presence.refresh().finally(() => this.presence.announceRestored());
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
}
