import { atOrBefore, type StreamPosition } from '../engine/stream.js';
import type { Outgoing } from '../hub/outgoing.js';
import type { Member } from '../hub/registry.js';
import type { IdKey } from '../protocol/ids.js';
import type { UnregisterReason } from '../protocol/outbound.js';
import { CLOSE } from '../protocol/errors.js';

/** What a registration needs of its connection. */
export interface Connection {
  readonly id: string;
  /** The connection's user: bound at its first register, before any registration exists, and never rebound. */
  readonly user: IdKey | null;
  /** Writes a broadcast's ready-made WebSocket frame. */
  sendFramed(frame: Outgoing): void;
  /** Closes the connection as a slow consumer (its held backlog grew past the limit). */
  overflow(): void;
  readonly maxBufferedBytes: number;
  /** Ends `reg`, telling the client why (`unregistered` with a reason). */
  endRegistration(reg: Registration, reason: UnregisterReason): void;
  close(code: number, reason: string): void;
  /** The registration's credentials deadline has come (token expiry or re-verify). */
  credentialsDue(reg: Registration): void;
}

/** Live deliveries held while a registration catches up, and their size. */
interface Held {
  frames: Outgoing[];
  bytes: number;
}

/**
 * One (connection, chat) registration: the member the hub delivers the chat to. While it
 * catches up — between attaching to the chat and answering `registered`, when a replay may be
 * sent — live deliveries are held, then sent after the replay minus what the replay already
 * covered, so the client sees the chat's broadcasts in order, each once.
 *
 * The position `registered` names is read on the engine's command connection, while broadcasts
 * arrive on its subscription: one numbered before the read can still be on its way when the
 * registration goes live. So until a later broadcast of the chat arrives, any at or before the
 * covered position is dropped (`floor`): the client has it from the replay, or it is older than
 * where the client starts.
 */
export class Registration implements Member {
  /** performance.now() of the last typing forwarded; 0: none yet (a small integer: an idle registration holds no boxed number). */
  lastTypingAt = 0;
  /** Its credentials deadline (token expiry or re-verify; see Session.watchCredentials), as ctx.deadlines keeps it. */
  deadline: number | null = null;
  /**
   * Which of the connection's token-carrying frames (Session.tokenFrames) gave it its token: a
   * register or refresh received earlier that is answered later must not put its older token back.
   */
  tokenFrame = 0;
  /** False while its join brought the user online and `online` is not announced yet (see Hub.leave). */
  onlineAnnounced = true;
  /** Why it ended, once the gateway ended it (`unregistered` told the client). */
  endedFor: UnregisterReason | null = null;
  /**
   * Live deliveries held while it catches up; `live` once they are sent at once; `ended` when the
   * registration has ended: nothing more of the chat reaches the connection through it.
   */
  private held: Held | 'live' | 'ended' = { frames: [], bytes: 0 };
  /** The position it went live at, until a broadcast after it arrives (see above); null after. */
  private floor: StreamPosition | null = null;

  constructor(
    private readonly connection: Connection,
    readonly chat: IdKey,
    /** The token the main API admitted this chat with; sent as the bearer of this chat's calls. */
    public token: string,
  ) {}

  get id(): string {
    return this.connection.id;
  }

  /** The connection's user: a registration exists only once its connection is bound to one. */
  get user(): IdKey {
    return this.connection.user as IdKey;
  }

  send(frame: Outgoing): void {
    if (this.held === 'ended') return;
    if (this.held === 'live') {
      if (this.floor !== null && this.belowFloor(frame)) return;
      return this.connection.sendFramed(frame);
    }
    this.held.bytes += frame.wire.length;
    if (this.held.bytes > this.connection.maxBufferedBytes) {
      this.held = { frames: [], bytes: 0 };
      return this.connection.overflow();
    }
    this.held.frames.push(frame);
  }

  /** The server API revoked the user's membership. */
  revoke(): void {
    this.connection.endRegistration(this, 'revoked');
  }

  credentialsDue(): void {
    this.connection.credentialsDue(this);
  }

  reconnect(): void {
    this.connection.close(CLOSE.resync, 'missed broadcasts during an engine outage; reconnect and resume');
  }

  /** Nothing more is sent through this registration, held deliveries included. */
  end(): void {
    this.held = 'ended';
  }

  /** Holds live deliveries until `goLive` (a re-register with `since` catches up again). */
  hold(): void {
    if (this.held === 'live') this.held = { frames: [], bytes: 0 };
  }

  /**
   * Sends what was held, skipping stream broadcasts at or before `covered`, and goes live;
   * broadcasts at or before `covered` that arrive later are dropped too (see above). Without
   * `covered`, everything held is sent and nothing is dropped.
   */
  goLive(covered: StreamPosition | null): void {
    if (this.held === 'ended' || this.held === 'live') return;
    const held = this.held.frames;
    this.held = 'live';
    if (covered !== null) this.floor = covered;
    for (const frame of held) this.send(frame);
  }

  /**
   * Where a live registration's client stands: the position it went live at while nothing later
   * has reached it, else `delivered`, the chat's last broadcast delivered on this instance (a
   * live registration got every one of them, or sent it and was acked).
   */
  position(delivered: StreamPosition | undefined): StreamPosition | undefined {
    const floor = this.floor;
    if (floor === null) return delivered;
    // Later in the same epoch: broadcasts it sent itself (not delivered back to it, acked instead).
    return delivered !== undefined && delivered.epoch === floor.epoch && !atOrBefore(delivered, floor) ? delivered : floor;
  }

  /** A numbered frame at or before the floor is dropped; the first one after it lifts the floor. */
  private belowFloor(frame: Outgoing): boolean {
    const at = frame.position;
    if (at === null) return false;
    if (atOrBefore(at, this.floor!)) return true;
    this.floor = null;
    return false;
  }
}
