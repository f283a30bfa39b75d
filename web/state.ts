/**
 * The chat page's state: the demo users and chats, who is logged in (the session: its SDK client,
 * device and API), and each open chat's view (its messages, devices, pending writes). No DOM.
 */
import type { Chat, ChatId, Client, ReceivedEdit, StateEvent, UserId } from '../packages/client/src/index.js';
import type { Api } from './api.js';
import type { Recipient } from './crypto.js';
import type { Device } from './device.js';
import { MESSAGES_KEPT, trimMessages, type Entry } from './model.js';

export const DEMO_USERS: ReadonlyArray<{ id: string; name: string }> = [
  { id: '1', name: 'Alice' },
  { id: '2', name: 'Bob' },
  { id: '3', name: 'Carol' },
  { id: '4', name: 'Dave' },
];
export const DEMO_CHATS: ReadonlyArray<{ id: number; name: string }> = [
  { id: 1, name: 'General' },
  { id: 2, name: 'Random' },
];

export interface PageConfig {
  gatewayUrl: string;
}

/** Deleted ids a chat remembers: ten times the messages it shows, far more than a reload can bring back. */
export const DELETED_KEPT = 10 * MESSAGES_KEPT;

export class ChatView {
  readonly key: string;
  readonly entries = new Map<string, Entry>();
  order: string[] = [];
  /** Ids deleted while the page was open, the newest DELETED_KEPT (a history reload must not bring them back). */
  readonly deleted = new Set<string>();
  readonly typing = new Map<string, number>();
  unread = 0;
  history: 'loading' | 'loaded' | 'failed' = 'loading';
  /** Registered on the current connection / ever. */
  registered = false;
  everRegistered = false;
  /** The gateway refused the chat for good (not a member): it no longer counts for the state. */
  gone = false;
  /** Why it is gone, shown instead of the history note (and the composer is disabled). */
  goneReason = '';
  /** Broadcasts replayed since the connection came back (logged with the `registered`). */
  replayed = 0;
  /** New messages among them: announced once, as a count, after the `registered`. */
  missedNew = 0;
  /** Encryption runs in order before each write reaches the SDK, which keeps a chat's writes in order. */
  writes: Promise<void> = Promise.resolve();
  /** The members' devices last fetched (null: never loaded); used when the main API cannot be reached. */
  devices: Recipient[] | null = null;
  /** The device-list request in flight: every write and load waiting for a list shares it. */
  devicesRequest: Promise<Recipient[]> | null = null;
  /** performance.now() of the last "unreachable" failure of the list (0: none since the last load). */
  devicesUnreachableAt = 0;
  /** Own writes queued and not yet handed to the SDK (behind a waiting one they show "waiting…"). */
  readonly queued = new Set<Entry>();
  /** Writes waiting for a device list are woken when one loads. */
  devicesLoaded: Array<() => void> = [];
  /**
   * Deletes of messages not here (yet), by who sent them (`deleted_by`): applied when the message
   * comes (from history, or live) only if that is its sender; the newest DELETED_KEPT.
   */
  readonly pendingDeletes = new Map<string, string>();
  /** Edits of messages not here yet while the history loads: applied once it is merged. */
  readonly lateEdits = new Map<string, ReceivedEdit>();
  /** Older messages than those kept exist (dropped past MESSAGES_KEPT, or left in the main API): a line says so. */
  trimmed = false;
  /** Each shown message's <li> and what it was built from (renderMessagesNow rebuilds only what changed). */
  readonly rows = new Map<string, { li: HTMLLIElement; built: string }>();

  constructor(
    readonly chat: Chat,
    readonly name: string,
  ) {
    this.key = String(chat.id);
  }

  /** Adds (or replaces) an entry; past MESSAGES_KEPT the oldest go. */
  add(entry: Entry): void {
    if (!this.entries.has(entry.id)) this.order.push(entry.id);
    this.entries.set(entry.id, entry);
    if (trimMessages(this) > 0) this.trimmed = true;
  }

  /** Holds a delete of a message not here (see `pendingDeletes`). */
  holdDelete(id: string, deletedBy: string): void {
    this.pendingDeletes.delete(id);
    this.pendingDeletes.set(id, deletedBy);
    if (this.pendingDeletes.size > DELETED_KEPT) this.pendingDeletes.delete(this.pendingDeletes.keys().next().value!);
  }

  remove(id: string): void {
    this.deleted.add(id);
    // Bounded like the messages: a member deleting ids by the thousand must not grow every page.
    if (this.deleted.size > DELETED_KEPT) this.deleted.delete(this.deleted.values().next().value!);
    if (this.entries.delete(id)) this.order = this.order.filter((x) => x !== id);
  }
}

export interface Session {
  /** The user as the gateway knows it (`registered.user_id`; until then, what was logged in as). */
  userId: string;
  api: Api;
  device: Device;
  client: Client;
  views: Map<string, ChatView>;
  current: ChatView | null;
  connection: StateEvent;
  /** Date.now() of the next connection attempt while disconnected. */
  retryAt: number;
  /** Date.now() when the connection was last lost: a replay may bring messages written since. */
  lostAt: number;
  /** An edit in progress: its message, what was in the composer before, the message's text. */
  editing: { view: ChatView; id: string; draft: string; original: string } | null;
}

/** Where the gateway is (/config.json). */
export let config: PageConfig = { gatewayUrl: '' };
/** Who is logged in (null: the login screen). Set only through setSession: importers see it live. */
export let session: Session | null = null;

export function setConfig(value: PageConfig): void {
  config = value;
}

export function setSession(value: Session | null): void {
  session = value;
}

export function userName(id: UserId | string): string {
  return DEMO_USERS.find((u) => u.id === String(id))?.name ?? `user ${String(id)}`;
}

export function chatName(id: ChatId): string {
  return DEMO_CHATS.find((c) => String(c.id) === String(id))?.name ?? `chat ${String(id)}`;
}

/** The gateway's spelling of an id: a canonical positive integer is a number. */
export function canonicalId(text: string): string | number {
  return /^[1-9][0-9]{0,14}$/.test(text) ? Number(text) : text;
}
