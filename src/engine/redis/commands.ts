/**
 * The Redis engine's command plane: server-API commands (revoke, disconnect, forget) reach
 * every instance, which acts on each once and answers with what it did.
 */
import type { Logger } from '../../log.js';
import type { IdKey } from '../../protocol/ids.js';
import type { LogLimiter } from '../../util/log-limit.js';
import { parseControlCommand, type CommandResult, type ControlCommand } from '../control.js';
import { COMMAND_MARK, COMMAND_TIMEOUT_MS, channelOf, type RedisLink } from './link.js';

/** Commands for every instance (classic pub/sub: in a Cluster it reaches every node's subscribers). */
export const CONTROL_CHANNEL = 'ms:control';
/** Each instance's own channel for the answers to its commands (and its echo probes). */
const REPLY_PREFIX = 'ms:reply:{';
export const replyChannelOf = (origin: string) => `${REPLY_PREFIX}${origin}}`;
/**
 * Every command is also logged here (a stream; one key, so one Cluster slot: commands are rare)
 * before it is published: every instance reads the log on from where it last read, with each
 * probe and after an outage, and acts on what it did not hear (see `poll`) — its subscription
 * was down, or lost without a sign. Bounded by COMMAND_LOG_MAX entries and COMMAND_LOG_TTL_MS
 * after the last command.
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

/** Stream id `a` comes after `b` (`<ms>-<n>`, compared as numbers). */
function streamIdAfter(a: string, b: string): boolean {
  const [am = 0, an = 0] = a.split('-').map(Number);
  const [bm = 0, bn = 0] = b.split('-').map(Number);
  return am !== bm ? am > bm : an > bn;
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

export class CommandPlane {
  /** This instance's command requests waiting for the replies of the instances they reached. */
  private readonly requests = new Map<number, { replies: number; connections: number; wake: () => void }>();
  private requestCount = 0;
  /**
   * The id of the last command log entry this instance read (at first, where the log stood when
   * it first connected: nothing before is its business). null until then.
   */
  private cursor: string | null = null;
  /** A read of the log under way (one at a time), and when the last successful one began. */
  private reading: Promise<void> | null = null;
  private readStartedAt = 0;
  /**
   * Per subscribed chat, where the command log stood once this instance had subscribed to it: a
   * revoke logged before was published before (its XADD precedes its PUBLISH), when this instance
   * could not hear it and had nothing to revoke — registrations since were verified after it.
   */
  private readonly chatLogFloors = new Map<IdKey, string>();
  /** Tokens of commands acted on and not yet met in the log, with when: see COMMAND_SEEN_MS. */
  private readonly seen = new Map<string, { at: number; acted: number | null }>();

  /** Where other instances answer this one's commands. */
  readonly replyChannel: string;

  constructor(
    private readonly link: RedisLink,
    /** This instance's random id: prefixes its command tokens. */
    private readonly origin: string,
    private readonly log: Logger,
    private readonly logLimit: LogLimiter,
  ) {
    this.replyChannel = replyChannelOf(origin);
  }

  /**
   * A chat's command goes on the chat's channel (so it keeps the chat's one order; marked by
   * COMMAND_MARK in the header), others on CONTROL_CHANNEL. Each instance that acts on it
   * replies on our reply channel with what it did, and PUBLISH tells how many instances got it,
   * so we know when every answer is in. A Cluster's classic PUBLISH counts only one node's
   * subscribers: there, a command for every instance cannot be counted (nulls).
   */
  async send(chat: IdKey | null, command: ControlCommand): Promise<CommandResult> {
    const countable = chat !== null || !this.link.cluster;
    const req = ++this.requestCount;
    const token = `${this.origin}c${req}`;
    const body = JSON.stringify(countable ? { ...command, token, reply: this.replyChannel, req } : { ...command, token });
    const request = { replies: 0, connections: 0, wake: () => undefined };
    if (countable) this.requests.set(req, request);
    const cmd = this.link.cmd();
    try {
      // Logged too, in the same tick as the publish (one batch, sent in order, so the command
      // keeps its place among the chat's publications): an instance that misses the publication
      // (its subscription down) acts on it from the log once it is back. A command answered 503
      // may still be acted on so: resending one is harmless.
      // Best effort: the publish is the command (a Redis out of memory refuses the XADD, not the
      // PUBLISH; a Cluster shard holding the log may be down while the chat's is not).
      if (this.link.connected()) {
        cmd.xadd(COMMAND_LOG, 'MAXLEN', '~', COMMAND_LOG_MAX, '*', 'c', body).catch((err: Error) => {
          this.logLimit.log(this.log, 'warn', 'command log', { err: err.message }, 'command not logged: an instance that cannot hear it now will not act on it later');
        });
        void cmd.pexpire(COMMAND_LOG, COMMAND_LOG_TTL_MS).catch(() => undefined);
      }
      const receivers = await this.link.whenReady(() => {
        if (chat === null) return cmd.publish(CONTROL_CHANNEL, body) as Promise<number>;
        return this.link.publishOn(channelOf(chat), Buffer.from(`${token} ${COMMAND_MARK}\n${body}`));
      });
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

  /** Acts on a command heard live from any instance (this one included) and replies with what it did. */
  onCommand(text: string): void {
    const heard = this.actOnce(text);
    if (heard === null) return;
    const { reply, req } = heard.envelope;
    const acted = heard.acted ?? 0;
    if (typeof reply !== 'string' || !reply.startsWith(REPLY_PREFIX) || typeof req !== 'number') return;
    this.link.publishOn(reply, JSON.stringify({ req, connections: acted })).catch((err: Error) => this.log.warn({ err: err.message }, 'command reply failed'));
  }

  /** Another instance's answer to one of this instance's commands. */
  onReply(req: unknown, connections: unknown): void {
    const request = typeof req === 'number' ? this.requests.get(req) : undefined;
    if (request === undefined || typeof connections !== 'number') return;
    request.replies++;
    request.connections += connections;
    request.wake();
  }

  /**
   * Decodes a command heard live and acts on it unless the log brought it first. null: not a
   * command this version knows; `acted`: the connections acted on, or null if acted on before.
   */
  private actOnce(text: string): { envelope: { reply?: unknown; req?: unknown }; acted: number | null } | null {
    const decoded = decodeCommand(text);
    const events = this.link.events();
    if (decoded === null || events === null) return null;
    const { envelope, command, token } = decoded;
    if (token !== null) {
      const seen = this.seen.get(token);
      // Acted on from the log first: this publication still gets the answer, with what was done.
      if (seen !== undefined) return { envelope, acted: seen.acted };
      this.note(token, null);
    }
    return { envelope, acted: events.command(command) };
  }

  /** A command was acted on (`acted`: connections, when from the log) before it was met the other way. */
  private note(token: string, acted: number | null): void {
    const now = performance.now(); // monotonic: a clock set back must not keep every token
    this.seen.set(token, { at: now, acted });
    // Normally the log is read past it within a probe; an entry that never came (its XADD failed)
    // is let go only once a read that surely would have met it has succeeded.
    const before = Math.min(now - COMMAND_SEEN_MS, this.readStartedAt - COMMAND_LOGGED_WITHIN_MS);
    for (const [seen, { at }] of this.seen) {
      if (at >= before) break;
      this.seen.delete(seen);
    }
  }

  /**
   * Reads the command log on from `cursor` and acts on what this instance did not hear: with
   * every probe (so a subscription lost without a sign — a Cluster's sharded subscriber remade
   * behind the client's back — costs a command at most a probe interval), and after an outage. A
   * command heard live is met here once and forgotten. A revoke acts only where this instance was
   * subscribed to the chat before it was logged (see `chatLogFloors`). The first read only learns
   * where the log stands. `trimCheck`: say so if entries not read were trimmed.
   */
  poll(trimCheck: boolean): Promise<void> {
    this.reading ??= this.readLog(trimCheck).finally(() => (this.reading = null));
    return this.reading;
  }

  /** A read that begins now: one under way may have been answered before what is wanted was logged. */
  async pollAfresh(trimCheck: boolean): Promise<void> {
    await this.reading?.catch(() => undefined);
    await this.poll(trimCheck);
  }

  private async readLog(trimCheck: boolean): Promise<void> {
    const startedAt = performance.now();
    const cmd = this.link.cmd();
    if (this.cursor === null) {
      this.cursor = await this.head();
      this.readStartedAt = startedAt;
      return;
    }
    if (trimCheck) {
      const oldest = (await cmd.xrange(COMMAND_LOG, '-', '+', 'COUNT', 1))[0];
      if (oldest !== undefined && streamIdAfter(oldest[0], this.cursor) && (await cmd.xlen(COMMAND_LOG)) >= COMMAND_LOG_MAX) {
        this.log.error({ from: this.cursor, oldest: oldest[0] }, 'server-API commands logged while redis was away were trimmed before this instance read them: some may not be applied here');
      }
    }
    let acted = 0;
    for (;;) {
      const page: Array<[id: string, fields: string[]]> = await cmd.xrange(COMMAND_LOG, `(${this.cursor}`, '+', 'COUNT', COMMAND_LOG_PAGE);
      for (const [id, fields] of page) {
        this.cursor = id;
        if (this.actOnLogged(id, fields[1] ?? '')) acted++;
      }
      if (page.length < COMMAND_LOG_PAGE) break;
    }
    this.readStartedAt = startedAt;
    if (acted > 0) this.log.warn({ commands: acted }, 'acted on server-API commands this instance did not hear when they were published');
  }

  /** A command read from the log: true if acted on (it had not been heard live). */
  private actOnLogged(id: string, text: string): boolean {
    const decoded = decodeCommand(text);
    const events = this.link.events();
    if (decoded === null || events === null) return false;
    const { command, token } = decoded;
    if (token !== null && this.seen.delete(token)) return false; // heard live
    if (command.op === 'revoke') {
      const floor = this.chatLogFloors.get(command.chat);
      if (floor === undefined || !streamIdAfter(id, floor)) return false;
    }
    // Its publication may still be on its way (a Cluster logs on another node): not acted on twice.
    const acted = events.command(command);
    if (token !== null) this.note(token, acted);
    return true;
  }

  /** The command log's newest id ('0-0' when empty). */
  private async head(): Promise<string> {
    return (await this.link.cmd().xrevrange(COMMAND_LOG, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
  }

  /**
   * Chats about to be subscribed: where the log stands is their floor (see `chatLogFloors`) — read
   * in the same tick as the SUBSCRIBE; if it cannot be read, where this instance last read it
   * (earlier: a revoke logged just before may then be acted on). Kept through an outage's
   * resubscribe; a chat unsubscribed and subscribed again meanwhile takes its own call's
   * (`stillWanted` says whether a chat's subscribe call is still the one that counts).
   */
  noteSubscribing(chats: readonly IdKey[], stillWanted: (chat: IdKey) => boolean): void {
    void this.head()
      .catch(() => this.cursor ?? '0-0')
      .then((head) => {
        for (const chat of chats) if (stillWanted(chat) && !this.chatLogFloors.has(chat)) this.chatLogFloors.set(chat, head);
      });
  }

  /** The chat was unsubscribed, or its subscribe failed: a later subscription takes a floor of its own. */
  forgetChat(chat: IdKey): void {
    this.chatLogFloors.delete(chat);
  }
}
