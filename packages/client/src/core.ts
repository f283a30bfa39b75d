import type { Emit } from './emitter.js';
import type { ClientError } from './errors.js';
import type { Config } from './options.js';
import type { Requests, Track } from './requests.js';
import type { ClientEvents } from './types.js';

/** What the parts of a client share: its settings, its events, its connection and its end. */
export interface Core {
  readonly cfg: Config;
  /** The client's `emit` (silent once the client ended). */
  readonly emit: Emit<ClientEvents>;
  /** Why the client ended (closed, or gave up); null while it runs. */
  ended(): ClientError | null;
  /** Ends the client: no reconnect; every pending promise rejects with `error`. */
  giveUp(error: ClientError, code?: number): void;
  /** The connection is open and the client connected: frames may be sent. */
  isOpen(): boolean;
  /**
   * Sends a frame within the client's token bucket; queued (in order) when out of tokens or
   * while the gateway is not reading, or dropped if `droppable` (typing). False when it was not
   * sent or queued. A `track`ed frame is a request: matched with its answer, resent if dropped.
   */
  transmit(text: string, droppable?: boolean, track?: Track): boolean;
  /** The requests of the current connection. */
  readonly requests: Requests;
  /** Connections opened so far (a write remembers the one it was sent on). */
  connectionNo(): number;
}
