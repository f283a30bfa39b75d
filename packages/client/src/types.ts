/** Public types of the SDK: ids, content, positions, events and the WebSocket it needs. */
import type { ClientError } from './errors.js';

/** A chat or user id as the gateway writes it: a positive integer or a string. */
export type ChatId = string | number;
export type UserId = string | number;

/** Where a chat's broadcast stream stands: `seq` counts broadcasts within the stream `epoch`. */
export interface Position {
  seq: number;
  epoch: string;
}

/**
 * What the app sends: encrypted bytes the gateway never reads. Any other field passes through
 * to the main API and the receivers untouched.
 */
export interface Content {
  ciphertext: string;
  nonce?: string;
  envelopes?: Record<string, unknown>;
  message_type?: string;
  [field: string]: unknown;
}

/** A received message: the sender's content plus what the gateway set. */
export interface ReceivedMessage extends Content {
  id: string;
  chat_id: ChatId;
  sender_id: UserId;
  created_at?: string;
}

/** A received edit: the new content of message `id`. */
export interface ReceivedEdit extends Content {
  id: string;
  sender_id: UserId;
  edited_at?: string;
}

/** The write operations the gateway acks. */
export type WriteOp = 'message' | 'edit_message' | 'delete_message';

/** The answer to a write: `duplicate` means an earlier send of the same id was already saved. */
export interface Ack {
  op: WriteOp;
  id: string;
  chatId: ChatId;
  duplicate: boolean;
  /** The stream position the write got; absent for a duplicate (nothing was broadcast again). */
  seq?: number;
  epoch?: string;
}

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

// --- events ------------------------------------------------------------------------------------

interface ChatScoped {
  chatId: ChatId;
}

/** Position of a broadcast, when the gateway numbers them. */
interface Sequenced {
  seq?: number;
  epoch?: string;
}

export interface MessageEvent extends ChatScoped, Sequenced {
  message: ReceivedMessage;
}
export interface EditEvent extends ChatScoped, Sequenced {
  edit: ReceivedEdit;
}
export interface DeleteEvent extends ChatScoped, Sequenced {
  id: string;
  deletedBy?: UserId;
}
/**
 * A system event the backend published to the chat (chat renamed, member added…): `data` is
 * the backend's JSON object, untouched. It takes a place in the chat's stream like a message,
 * so it is delivered once, in order with the messages, and replayed after a reconnect.
 */
export interface SystemEvent extends ChatScoped, Sequenced {
  data: Record<string, unknown>;
}
export interface PresenceEvent extends ChatScoped {
  userId: UserId;
  status: 'online' | 'offline';
}
export interface TypingEvent extends ChatScoped {
  userId: UserId;
}

/** Why the gateway could not replay what a chat missed. */
export type GapReason = 'epoch_changed' | 'too_far_behind' | 'no_history' | 'missed' | (string & {});

/**
 * Broadcasts after `from` up to and including `to` were not delivered and will not be: fetch
 * them from the main API's history (by what the app has — its newest message — not by `seq`,
 * which numbers the gateway's stream). `from` is the last position the app saw; with
 * `epoch_changed`, `to` is in the new epoch.
 */
export interface GapEvent extends ChatScoped {
  from: Position;
  to: Position;
  reason: GapReason;
}

export interface RegisteredEvent extends ChatScoped {
  userId: UserId;
  online: UserId[];
  /** The chat's position now (absent from gateways that do not number broadcasts). */
  position?: Position;
  /** true: everything missed since the last position was replayed before this event. */
  recovered?: boolean;
}

/**
 * Why the gateway ended a registration itself (`unregistered` with a reason): `revoked` (the
 * backend took the user out of the chat), `forbidden` / `unauthorized` (the main API refused
 * it), `token_expired` (the token's `exp` passed without a refresh).
 */
export type UnregisterReason = 'revoked' | 'forbidden' | 'unauthorized' | 'token_expired' | (string & {});

/** The chat is gone for good (refused, or removed by the gateway and not restorable). */
export interface UnregisteredEvent extends ChatScoped {
  /** `error.code`: `revoked`, `token_expired`, `forbidden`, `unauthorized`, … */
  error: ClientError;
  /** Present when the gateway ended the registration itself (`unregistered` frame), not for a refused register. */
  reason?: UnregisterReason;
}

export interface StateEvent {
  state: ConnectionState;
  /** On `disconnected`: the WebSocket close code (1006 when the link died or could not open). */
  code?: number;
  reason?: string;
  /** On `disconnected`: ms until the next attempt, or null when the client will not reconnect. */
  retryInMs?: number | null;
  /** On a final `disconnected`: why the client gave up. */
  error?: ClientError;
}

/** Outcome of an outbox entry, also for entries restored from storage (which have no promise). */
export interface SentEvent extends ChatScoped {
  ack: Ack;
}
export interface FailedEvent extends ChatScoped {
  op: WriteOp;
  id: string;
  error: ClientError;
}

/** A frame as received, for tools (`unhandled` event: frames the SDK had no use for). */
export type Frame = Record<string, unknown> & { type: string };

/** A failure outside any request (the outbox storage threw); the SDK carries on. */
export interface ErrorEvent {
  error: unknown;
  during: string;
}

export interface ClientEvents {
  state: StateEvent;
  registered: RegisteredEvent;
  unregistered: UnregisteredEvent;
  message: MessageEvent;
  edit: EditEvent;
  delete: DeleteEvent;
  event: SystemEvent;
  presence: PresenceEvent;
  typing: TypingEvent;
  gap: GapEvent;
  sent: SentEvent;
  failed: FailedEvent;
  unhandled: Frame;
  error: ErrorEvent;
}

/** The events a chat handle emits (each also on the client, with `chatId`). */
export type ChatEvents = Pick<ClientEvents, 'registered' | 'unregistered' | 'message' | 'edit' | 'delete' | 'event' | 'presence' | 'typing' | 'gap' | 'sent' | 'failed'>;

// --- the WebSocket the SDK drives ---------------------------------------------------------------

/**
 * The part of a WebSocket the SDK uses: the browser's, Node ≥ 22's global, and `ws`'s all fit.
 * Handlers are typed loosely because each implementation declares its own event classes.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;
