import type { IdKey } from '../protocol/ids.js';
import { MemoryStreams } from './memory-stream.js';
import type { AppendAttempt, AppendResult, HistoryLimits, Recovery, StreamPosition } from './stream.js';
import type { Engine, EngineEvents } from './types.js';
import type { CommandResult, ControlCommand } from './control.js';
import { addOne, deleteOne, type OneOrSet } from '../util/one-or-set.js';

/**
 * The embedded engine for one instance. It keeps the Redis engine's semantics — a publication
 * reaches the hub only through a subscription, in the order published — so nothing above the
 * engine behaves differently when REDIS_HOST is set.
 */
export class MemoryEngine implements Engine {
  readonly kind = 'memory' as const;
  private events: EngineEvents | null = null;
  private readonly subscribed = new Set<IdKey>();
  /** chat → user → connections */
  private readonly presence = new Map<IdKey, Map<IdKey, OneOrSet<string>>>();
  private readonly streams: MemoryStreams;
  private readonly sweeper: NodeJS.Timeout;

  constructor(history: HistoryLimits = { size: 100, ttlMs: 300_000 }) {
    this.streams = new MemoryStreams(history);
    this.sweeper = setInterval(() => this.streams.sweep(), Math.max(1000, history.ttlMs / 2));
    this.sweeper.unref();
  }

  async start(events: EngineEvents): Promise<void> {
    this.events = events;
    events.readyChange(true);
  }

  isReady(): boolean {
    return this.events !== null;
  }

  isConnected(): boolean {
    return this.isReady();
  }

  async subscribe(chat: IdKey): Promise<void> {
    this.subscribed.add(chat);
  }

  async unsubscribe(chat: IdKey): Promise<void> {
    this.subscribed.delete(chat);
  }

  async publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void> {
    // Delivered synchronously: publish order is delivery order, and publish resolves only after
    // this instance delivered it (the Engine contract), as the Redis engine waits for its echo.
    if (this.events !== null && this.subscribed.has(chat)) this.events.deliver(chat, frame, exceptConn);
  }

  async append(chat: IdKey, frame: Buffer, exceptConn: string | null, key?: string, attempt?: AppendAttempt): Promise<AppendResult> {
    if (this.events === null) throw new Error('memory engine closed');
    const { position, numbered, earlier } = this.streams.append(chat, frame, key, attempt);
    if (earlier) return { ...position, earlier: numbered }; // appended before: nothing is published now
    if (this.subscribed.has(chat)) this.events.deliver(chat, numbered, exceptConn);
    return position;
  }

  async command(chat: IdKey | null, command: ControlCommand): Promise<CommandResult> {
    if (this.events === null) throw new Error('memory engine closed');
    const connections = this.events.command(command);
    // As with Redis: a chat's command reaches the instances subscribed to it (this one, or none).
    return { instances: chat === null || this.subscribed.has(chat) ? 1 : 0, connections };
  }

  async contains(chat: IdKey, key: string): Promise<boolean> {
    return this.streams.contains(chat, key);
  }

  async position(chat: IdKey): Promise<StreamPosition> {
    return this.streams.position(chat);
  }

  async recover(chat: IdKey, since: StreamPosition, maxBytes: number): Promise<Recovery> {
    return this.streams.recover(chat, since, maxBytes);
  }

  async join(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    let users = this.presence.get(chat);
    if (users === undefined) this.presence.set(chat, (users = new Map()));
    return addOne(users, user, conn);
  }

  async leave(chat: IdKey, user: IdKey, conn: string): Promise<boolean> {
    const users = this.presence.get(chat);
    // The user's last connection left when removing it removed the user.
    if (users === undefined || !deleteOne(users, user, conn) || users.has(user)) return false;
    if (users.size === 0) this.presence.delete(chat);
    return true;
  }

  async online(chat: IdKey): Promise<IdKey[]> {
    return [...(this.presence.get(chat)?.keys() ?? [])];
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.subscribed.clear();
    this.presence.clear();
    this.events?.readyChange(false);
    this.events = null;
  }
}
