import { positionOf, type StreamPosition } from '../engine/stream.js';
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
 */
export class Registration implements Member {
  lastTypingAt = 0;
  /** Its credentials deadline (token expiry or re-verify; see Session.watchCredentials), as ctx.deadlines keeps it. */
  deadline: number | null = null;
  /**
   * Live deliveries held while it catches up; `live` once they are sent at once; `ended` when the
   * registration has ended: nothing more of the chat reaches the connection through it.
   */
  private held: Held | 'live' | 'ended' = { frames: [], bytes: 0 };

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
    if (this.held === 'live') return this.connection.sendFramed(frame);
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

  /** Sends what was held, skipping stream broadcasts at or before `covered`, and goes live. */
  goLive(covered: StreamPosition): void {
    if (this.held === 'ended') return;
    const held = this.held === 'live' ? [] : this.held.frames;
    this.held = 'live';
    for (const frame of held) {
      const at = positionOf(frame.json);
      if (at !== null && at.epoch === covered.epoch && at.seq <= covered.seq) continue;
      this.connection.sendFramed(frame);
    }
  }
}
