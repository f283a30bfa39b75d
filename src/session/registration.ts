import { positionOf, type StreamPosition } from '../engine/stream.js';
import type { Outgoing } from '../hub/outgoing.js';
import type { Member } from '../hub/registry.js';
import type { IdKey } from '../protocol/ids.js';
import type { UnregisterReason } from '../protocol/outbound.js';
import { CLOSE } from '../protocol/errors.js';

/** What a registration needs of its connection. */
export interface Connection {
  readonly id: string;
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

/**
 * One (connection, chat) registration: the member the hub delivers the chat to. While it
 * catches up — between attaching to the chat and answering `registered`, when a replay may be
 * sent — live deliveries are held, then sent after the replay minus what the replay already
 * covered, so the client sees the chat's broadcasts in order, each once.
 */
export class Registration implements Member {
  lastTypingAt = 0;
  /** Set when the registration ends: nothing more of the chat reaches the connection through it. */
  private ended = false;
  /** When its credentials are next due (token expiry or re-verify; see Session.watchCredentials). */
  deadlineAt: number | null = null;
  private held: Outgoing[] | null = [];
  private heldBytes = 0;

  constructor(
    private readonly connection: Connection,
    readonly chat: IdKey,
    readonly user: IdKey,
    /** The token the main API admitted this chat with; sent as the bearer of this chat's calls. */
    public token: string,
  ) {}

  get id(): string {
    return this.connection.id;
  }

  send(frame: Outgoing): void {
    if (this.ended) return;
    if (this.held === null) return this.connection.sendFramed(frame);
    this.heldBytes += frame.wire.length;
    if (this.heldBytes > this.connection.maxBufferedBytes) {
      this.held = [];
      this.heldBytes = 0;
      return this.connection.overflow();
    }
    this.held.push(frame);
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
    this.ended = true;
    this.held = null;
    this.heldBytes = 0;
  }

  /** Holds live deliveries until `goLive` (a re-register with `since` catches up again). */
  hold(): void {
    this.held ??= [];
  }

  /** Sends what was held, skipping stream broadcasts at or before `covered`, and goes live. */
  goLive(covered: StreamPosition): void {
    if (this.ended) return;
    const held = this.held ?? [];
    this.held = null;
    this.heldBytes = 0;
    for (const frame of held) {
      const at = positionOf(frame.json);
      if (at !== null && at.epoch === covered.epoch && at.seq <= covered.seq) continue;
      this.connection.sendFramed(frame);
    }
  }
}
