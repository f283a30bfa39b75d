import { ClientError, errorText } from './errors.js';
import type { Ack, ChatEvents, ChatId, Content, Position, RegisteredEvent, UserId, WriteOp } from './types.js';

/** What a chat handle needs from its client (kept narrow so the handle stays a thin facade). */
export interface ChatHost {
  write(chat: Chat, op: WriteOp, data: { id: string } & Record<string, unknown>): Promise<Ack>;
  typing(chat: Chat): void;
  leave(chat: Chat): void;
  ready(chat: Chat): Promise<RegisteredEvent>;
  position(chat: Chat): Position | null;
  online(chat: Chat): UserId[];
  listen<K extends keyof ChatEvents>(chat: Chat, type: K, listener: (event: ChatEvents[K]) => void): () => void;
  newId(): string;
}

/** One chat of a client: `client.chat(id)`. Registered on every connection until `leave()`. */
export class Chat {
  /** @internal */
  constructor(
    private readonly host: ChatHost,
    readonly id: ChatId,
  ) {}

  /**
   * Sends a message; resolves with the ack once the main API saved it (a `duplicate` ack means
   * an earlier send of this id was saved), rejects with a `ClientError`. The id is generated
   * unless given; the SDK resends with the same id until it gets an answer. It never throws:
   * an id that cannot be generated (no `crypto` in the runtime) rejects `bad_request`.
   */
  send(content: Content, options: { id?: string } = {}): Promise<Ack> {
    let id: string;
    try {
      id = options.id ?? this.host.newId();
    } catch (err) {
      return Promise.reject(new ClientError('bad_request', errorText(err), { op: 'message', chatId: this.id }));
    }
    return this.host.write(this, 'message', { ...content, id });
  }

  /** Replaces the content of message `id` (only its sender may). */
  edit(id: string, content: Content): Promise<Ack> {
    return this.host.write(this, 'edit_message', { ...content, id });
  }

  /** Deletes message `id` (only its sender may). */
  delete(id: string): Promise<Ack> {
    return this.host.write(this, 'delete_message', { id });
  }

  /** Tells the chat this user is typing; at most one per second is sent, never queued. */
  typing(): void {
    this.host.typing(this);
  }

  /**
   * Leaves the chat: its events stop at once, later writes reject with `closed`; writes already
   * made are still sent and answered, then the chat is unregistered. A chat whose register is
   * refused for now (main API down) is not registered again: its writes fail `closed` (stored
   * entries stay, as with `close()`).
   */
  leave(): void {
    this.host.leave(this);
  }

  /**
   * Resolves on the next `registered` (at once if registered now); rejects if the chat is refused
   * (with the refusal's error) or left (`closed`, as soon as `leave()` is called).
   */
  ready(): Promise<RegisteredEvent> {
    return this.host.ready(this);
  }

  on<K extends keyof ChatEvents>(type: K, listener: (event: ChatEvents[K]) => void): () => void {
    return this.host.listen(this, type, listener);
  }

  /**
   * Everything up to this position was delivered: persist it and pass it as `since` next time.
   * It stays below a broadcast the SDK still keeps from the app (an edit held for its message), so
   * a client closed meanwhile gets that broadcast replayed instead of losing it.
   */
  get position(): Position | null {
    return this.host.position(this);
  }

  /** Users online in the chat (from `registered` and `presence`). */
  get online(): UserId[] {
    return this.host.online(this);
  }
}
