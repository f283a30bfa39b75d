import type { IdKey } from '../protocol/ids.js';
import type { ChatStream, StreamPosition } from './stream.js';
import type { CommandResult, ControlCommand } from './control.js';

/**
 * The scale-out seam. A gateway instance talks to other instances only through an Engine;
 * the memory and Redis engines are peers and the hub cannot tell them apart.
 *
 * Contract (both engines; tests/engine runs one suite against each):
 * - Delivery: a publication on a chat reaches `EngineEvents.deliver` on every instance that
 *   has an active subscription to that chat, including the publishing instance, and only
 *   through the subscription: there is no local short-cut, so all instances see one order.
 * - `publish` resolves only once the publishing instance has itself delivered the publication
 *   (when it is subscribed to the chat), or after a bounded wait when the subscription is lost.
 *   So work that is done — an acked message — is also delivered to this instance's receivers,
 *   and a graceful drain that waits for its in-flight work loses nothing.
 * - Order: publications on one chat are delivered to every instance in one and the same
 *   order (the order the engine accepted them in).
 * - Subscribe resolves only once publications made after it will be delivered, so the hub
 *   may tell a client "registered" right after it. Subscribe/unsubscribe of one chat take
 *   effect in call order.
 * - The frame bytes are delivered unchanged; `exceptConn` travels with them so the hub can
 *   skip the sending connection without re-encoding anything.
 * - Presence is kept per (chat, user, connection). `join` returns true when this was the
 *   user's first live connection to the chat anywhere, `leave` when it was the last (also when
 *   the store lost the entry meanwhile; a second `leave` of one connection is false). The
 *   check-and-update is atomic, so exactly one instance sees each transition.
 * - Commands (the server API's revoke, disconnect, forget) reach `EngineEvents.command` on the
 *   instances concerned, this one included: with a chat, every instance subscribed to it, in the
 *   chat's one order with its publications (so nothing published after the command reaches what
 *   it removed); without, every instance. `command` resolves once they acted, where the engine
 *   can tell (else after the publish), with what they did.
 * - Operations fail fast (reject) while the engine is not ready; they never queue unbounded.
 */
export interface Broker {
  subscribe(chat: IdKey): Promise<void>;
  unsubscribe(chat: IdKey): Promise<void>;
  publish(chat: IdKey, frame: Buffer, exceptConn: string | null): Promise<void>;
}

export interface Commands {
  command(chat: IdKey | null, command: ControlCommand): Promise<CommandResult>;
}

export interface PresenceManager {
  join(chat: IdKey, user: IdKey, conn: string): Promise<boolean>;
  leave(chat: IdKey, user: IdKey, conn: string): Promise<boolean>;
  /** Distinct users with a live connection to the chat, on any instance. */
  online(chat: IdKey): Promise<IdKey[]>;
  /**
   * The `offline` of users whose `leave` answered true went out. An engine that keeps them until
   * then (Redis: so an instance that dies holding an offline does not leave a ghost online) lets
   * them go; optional.
   */
  offlineAnnounced?(chat: IdKey, users: readonly IdKey[]): void;
}

export interface EngineEvents {
  deliver(chat: IdKey, frame: Buffer, exceptConn: string | null): void;
  /**
   * Users whose last presence entry in a chat expired without a `leave` (their instance
   * died). Raised on exactly one instance per transition; the hub publishes `offline`.
   */
  presenceExpired(chat: IdKey, users: IdKey[]): void;
  /**
   * Users whose presence entry this instance had to re-create (it expired during a stall, or
   * Redis lost it) while their connection stayed live: others may have been told `offline`,
   * so the hub publishes `online` again. Raised on exactly one instance per transition.
   */
  presenceRestored(chat: IdKey, users: IdKey[]): void;
  readyChange(ready: boolean): void;
  /**
   * Where the chat's stream stands, read now and then apart from the subscription (an engine
   * that can lose publications without losing its connection reports it; the hub catches up
   * when it has delivered less).
   */
  streamAt(chat: IdKey, position: StreamPosition): void;
  /** Acts on a command of the server API on this instance; returns the connections acted on. */
  command(command: ControlCommand): number;
}

/**
 * Stream contract (src/engine/stream.ts): `append` numbers a broadcast and stores it with the
 * publish, atomically, so seq order is the delivery order on every instance; the numbered bytes
 * delivered live are the bytes `recover` replays; a lost sequence (flushed, expired) restarts
 * in a new epoch, never silently at a gap.
 */
export interface Engine extends Broker, PresenceManager, ChatStream, Commands {
  readonly kind: 'memory' | 'redis';
  start(events: EngineEvents): Promise<void>;
  /** Connected and serving: what /readyz, upgrades and fail-fast checks go by. */
  isReady(): boolean;
  /**
   * Connected (subscriptions live), whether or not Redis serves writes right now: what the
   * catch-up after an outage goes by (`readyChange` follows this). A Redis that stalls or
   * refuses writes loses nothing on the subscription; only a lost connection does.
   */
  isConnected(): boolean;
  /**
   * At shutdown, before `close`: presence leaves that failed (the engine stalled or away) are run
   * again if it serves before `deadline`, and the offlines they find reach `presenceExpired` —
   * an instance that exits with them would leave their users online for good when the store lost
   * or already removed their entries. Engines whose leaves cannot fail leave it out.
   */
  settlePresence?(deadline: number): Promise<void>;
  /**
   * A chat's subscription lost publications without the connection dropping (the hub found a
   * gap in its numbers): acts now on the commands it may have missed with them — a revoke must
   * be acted on before the catch-up replays what was published after it. Engines that cannot
   * lose publications leave it out.
   */
  readMissedCommands?(): Promise<void>;
  /** Removes this instance's presence and subscriptions, then disconnects. */
  close(): Promise<void>;
}

/** Raised by engine calls while the engine is unreachable. */
export class EngineUnavailableError extends Error {
  constructor(message = 'engine unavailable') {
    super(message);
    this.name = 'EngineUnavailableError';
  }
}
