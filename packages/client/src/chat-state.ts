import type { Chat } from './chat.js';
import type { ClientError } from './errors.js';
import type { Stream } from './stream.js';
import type { Timer } from './timers.js';
import type { Frame, RegisteredEvent, UserId } from './types.js';

/** One chat's state inside the client. */
export interface ChatState {
  chat: Chat;
  key: string;
  stream: Stream;
  status: 'idle' | 'registering' | 'registered' | 'gone';
  /** `leave()` was called: no more events; unregistered once its queued writes are answered. */
  leaving: boolean;
  /** The pending register carried `since`. */
  askedSince: boolean;
  registerAttempts: number;
  retryTimer: Timer | null;
  lastTypingAt: number;
  online: Map<string, UserId>;
  waiters: Array<{ resolve(e: RegisteredEvent): void; reject(e: ClientError): void }>;
  lastRegistered: RegisteredEvent | null;
  /** Number of the last `typing` frame sent (to place a `rate_limited` answer to it). */
  lastTypingNo: number;
  /**
   * Opened again (with a `since`) while the register of its earlier handle was out, carrying
   * another position: once that register is answered, the chat registers again with its own.
   */
  registerAgain: boolean;
  /**
   * While it registers again so: its broadcasts, kept until that register is answered and then
   * handed to the stream in `seq` order (the first answer's replay and the live frames after it
   * would otherwise reach the app ahead of the older ones the second replay brings).
   */
  reordering: Frame[] | null;
  /**
   * Its registration expired (`token_expired`) while a register of it was out: that register's
   * `unauthorized` answer is the expiry's (docs/protocol.md), not a refusal of the token.
   */
  expiredWhileRegistering: boolean;
  /**
   * Its register was refused past the gateway's chats per connection while chats being left
   * still counted there: registered again when an `unregister` is answered (or its backoff ends).
   */
  waitsForLeave: boolean;
}
