/**
 * The chat page: log in as a demo user, pick a chat, send / edit / delete end-to-end-encrypted
 * messages, see who is online and typing, and watch the connection. Plain DOM, no framework;
 * bundled by web/server.ts with esbuild. Connection, outbox and recovery are the client SDK's;
 * encryption is web/crypto.ts. See docs/chat-page.md.
 */
import { ClientError, createClient, type Chat, type ChatId, type Client, type ReceivedEdit, type ReceivedMessage, type StateEvent, type UserId } from '../packages/client/src/index.js';
import { Api, ApiError, type StoredMessage } from './api.js';
import { CannotDecrypt, fingerprint, open, seal, type Recipient } from './crypto.js';
import { loadDevice, replaceDevice, type Device } from './device.js';
import { MESSAGES_KEPT, boundDevices, checkedTime, mergeHistory, messageTime, offlineText, trimMessages, type Entry } from './model.js';

const DEMO_USERS: ReadonlyArray<{ id: string; name: string }> = [
  { id: '1', name: 'Alice' },
  { id: '2', name: 'Bob' },
  { id: '3', name: 'Carol' },
  { id: '4', name: 'Dave' },
];
const DEMO_CHATS: ReadonlyArray<{ id: number; name: string }> = [
  { id: 1, name: 'General' },
  { id: 2, name: 'Random' },
];
const TYPING_SHOWN_MS = 3000;
const LOG_LINES = 60;
/** Retries of a chat's device list while a write waits for it: 1 s, doubling up to this. */
const DEVICES_RETRY_MAX_MS = 5000;
/**
 * After the device list could not be reached (a timeout is 5 s), writes use the last list for
 * this long without asking again, so messages queued behind one another do not each wait out
 * their own timeout. A load that succeeds ends it sooner.
 */
const DEVICES_REUSE_MS = 10_000;
/** The gateway's MAX_MESSAGE_BYTES (default): the SDK refuses larger writes `too_large`. */
const MAX_FRAME_BYTES = 65_536;

interface PageConfig {
  gatewayUrl: string;
}

// --- state ---------------------------------------------------------------------------------------

class ChatView {
  readonly key: string;
  readonly entries = new Map<string, Entry>();
  order: string[] = [];
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

  remove(id: string): void {
    this.deleted.add(id);
    if (this.entries.delete(id)) this.order = this.order.filter((x) => x !== id);
  }
}

interface Session {
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

let config: PageConfig = { gatewayUrl: '' };
let session: Session | null = null;

// --- DOM helpers ---------------------------------------------------------------------------------

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: { className?: string; text?: string } = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props.className) node.className = props.className;
  if (props.text !== undefined) node.textContent = props.text;
  node.append(...children);
  return node;
}

function userName(id: UserId | string): string {
  return DEMO_USERS.find((u) => u.id === String(id))?.name ?? `user ${String(id)}`;
}

function chatName(id: ChatId): string {
  return DEMO_CHATS.find((c) => String(c.id) === String(id))?.name ?? `chat ${String(id)}`;
}

/** The gateway's spelling of an id: a canonical positive integer is a number. */
function canonicalId(text: string): string | number {
  return /^[1-9][0-9]{0,14}$/.test(text) ? Number(text) : text;
}


function errorText(err: unknown): string {
  if (err instanceof ClientError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

function log(line: string): void {
  const list = $('log');
  const stamp = new Date().toTimeString().slice(0, 8);
  list.prepend(el('li', {}, el('time', { text: stamp }), line));
  while (list.children.length > LOG_LINES) list.lastElementChild?.remove();
}

// --- connection state ----------------------------------------------------------------------------

/** connecting · open · recovering · offline · closed, from the SDK's `state` and `registered` events. */
function connectionState(s: Session): { state: string; text: string; retry?: string } {
  const c = s.connection;
  if (c.state === 'disconnected') {
    if (c.retryInMs === null || c.retryInMs === undefined) return { state: 'closed', text: c.error ? `closed: ${c.error.code}` : 'closed' };
    const { state: text, retry } = offlineText(c.code, navigator.onLine, s.retryAt, Date.now());
    return { state: 'offline', text, retry };
  }
  if (c.state === 'connecting') return { state: 'connecting', text: 'connecting' };
  const waiting = [...s.views.values()].filter((v) => !v.registered && !v.gone);
  if (waiting.length === 0) return { state: 'open', text: 'open' };
  return waiting.some((v) => v.everRegistered) ? { state: 'recovering', text: 'recovering' } : { state: 'connecting', text: 'joining' };
}

let countdown: ReturnType<typeof setInterval> | undefined;

function renderState(): void {
  if (!session) {
    clearInterval(countdown);
    countdown = undefined;
    return;
  }
  const { state, text, retry } = connectionState(session);
  $('state').dataset.state = state;
  // The live region (#state-text) changes with the state only; the countdown ticks beside it,
  // aria-hidden and outside it, or a screen reader would say it every second.
  const label = $('state-text');
  if (label.textContent !== text) label.textContent = text;
  const countdownText = retry ? ` · ${retry}` : '';
  const ticking = $('retry');
  if (ticking.textContent !== countdownText) ticking.textContent = countdownText;
  // While offline the retry countdown ticks; the SDK only says when the wait began.
  if (state === 'offline') countdown ??= setInterval(renderState, 250);
  else if (countdown !== undefined) {
    clearInterval(countdown);
    countdown = undefined;
  }
}

// --- rendering -----------------------------------------------------------------------------------

function renderChats(): void {
  if (!session) return;
  const s = session;
  const list = $('chats');
  list.replaceChildren();
  const keys = new Set([...DEMO_CHATS.map((c) => String(c.id)), ...s.views.keys()]);
  for (const key of keys) {
    const view = s.views.get(key);
    const current = s.current?.key === key;
    const button = el('button', { className: 'chat' }, el('span', { className: 'name', text: `# ${chatName(key)}` }));
    button.type = 'button';
    button.title = `# ${chatName(key)}`;
    button.dataset.chat = key;
    if (current) button.setAttribute('aria-current', 'true');
    if (view && view.unread > 0) button.append(el('span', { className: 'badge', text: String(view.unread) }), el('span', { className: 'sr-only', text: ' unread' }));
    button.addEventListener('click', () => selectChat(canonicalId(key)));
    const li = el('li', { className: current ? 'current' : '' }, button);
    li.dataset.chat = key;
    list.append(li);
  }
}

function renderOnline(): void {
  const list = $('online');
  list.replaceChildren();
  const view = session?.current;
  if (!view) return;
  const ids = view.chat.online.map(String).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  for (const id of ids) {
    const li = el('li', { text: `${userName(id)}${id === session?.userId ? ' (you)' : ''}` });
    li.dataset.user = id;
    list.append(li);
  }
}

function renderTyping(): void {
  const view = session?.current;
  const now = Date.now();
  const names = view ? [...view.typing.entries()].filter(([id, until]) => until > now && id !== session?.userId).map(([id]) => userName(id)) : [];
  $('typing').textContent = names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
}

/** Views whose message list changed since the last render; rendered together, at most every RENDER_MS. */
const dirty = new Set<ChatView>();
let renderTimer: ReturnType<typeof setTimeout> | null = null;
const RENDER_MS = 16;

/**
 * Asks for `view`'s list to be rendered. Renders are gathered: a chat opening with a thousand
 * stored messages decrypts them one by one, and rebuilding the list after each made opening it
 * quadratic (over a minute for 1,000).
 */
function renderMessages(view: ChatView): void {
  dirty.add(view);
  renderTimer ??= setTimeout(() => {
    renderTimer = null;
    const views = [...dirty];
    dirty.clear();
    for (const v of views) renderMessagesNow(v);
  }, RENDER_MS);
}

/** The chat whose rows #messages holds now (another one's are swapped in when it is opened). */
let shownView: ChatView | null = null;
/** The first line of a chat that has older messages than it shows. */
const olderNote = el('li', { className: 'older', text: `Older messages are not shown: this page keeps the newest ${MESSAGES_KEPT.toLocaleString('en')} of a chat.` });

/**
 * Brings the list up to date: an entry's <li> is rebuilt only when what it shows changed, new ones
 * are inserted, gone ones removed, and the rest left alone — a chat receiving hundreds of messages
 * a second rebuilt every <li> on each render, and fell thousands of messages behind.
 */
function renderMessagesNow(view: ChatView): void {
  if (!session || session.current !== view) {
    renderChats();
    return;
  }
  const me = session.userId;
  const now = new Date();
  const day = now.toDateString(); // a message's time shows its date unless it is from today
  const list = $('messages');
  if (shownView !== view) {
    list.replaceChildren();
    shownView = view;
  }
  const focused = document.activeElement instanceof HTMLElement && list.contains(document.activeElement) ? { id: document.activeElement.closest<HTMLElement>('li.msg')?.dataset.id, className: document.activeElement.className } : null;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  // Queued behind a write that waits for the device list: waiting too, not sending yet.
  const anyWaiting = [...view.queued].some((e) => e.sending === 'waiting');
  for (const [id, row] of view.rows) {
    if (view.entries.has(id)) continue;
    row.li.remove();
    view.rows.delete(id);
  }
  const wanted: HTMLLIElement[] = view.trimmed ? [olderNote] : [];
  for (const id of view.order) {
    const entry = view.entries.get(id);
    if (!entry) continue;
    const mine = entry.senderId === me;
    const behind = entry.sending === 'sending' && anyWaiting && view.queued.has(entry);
    const built = JSON.stringify([day, mine, behind, entry.text, entry.problem, entry.edited, entry.at, entry.claimed, entry.sending, entry.failure]);
    let row = view.rows.get(id);
    if (row?.built !== built) {
      const li = messageItem(view, entry, mine, behind, now);
      if (row?.li.parentNode === list) row.li.replaceWith(li);
      row = { li, built };
      view.rows.set(id, row);
    }
    wanted.push(row.li);
  }
  // In order with the fewest moves: what is in place stays, the rest is inserted before it.
  let cursor = list.firstElementChild;
  for (const li of wanted) {
    if (cursor === li) cursor = cursor.nextElementSibling;
    else list.insertBefore(li, cursor);
  }
  while (cursor) {
    const next = cursor.nextElementSibling;
    cursor.remove();
    cursor = next;
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
  // A rebuilt <li> took the focus with it: give it back to the same button of the same message.
  if (focused?.id && !list.contains(document.activeElement)) list.querySelector<HTMLElement>(`li.msg[data-id="${CSS.escape(focused.id)}"] button.${CSS.escape(focused.className.split(' ')[0] ?? '')}`)?.focus();
  renderChatNote(view);
}

/** One message's <li>. */
function messageItem(view: ChatView, entry: Entry, mine: boolean, behind: boolean, now: Date): HTMLLIElement {
  const { id } = entry;
  const time = el('time', { text: messageTime(entry.at, now) });
  time.dateTime = entry.at;
  const who = el('span', { className: 'who', text: userName(entry.senderId) });
  who.title = userName(entry.senderId);
  const meta = el('div', { className: 'meta' }, who, time);
  if (entry.claimed !== undefined) {
    // The sender's clock is far off (or lying): the time shown is when the page (live) or the
    // main API (history) got it, and the claim is shown as a claim.
    time.title = 'when this arrived';
    const claim = el('span', { className: 'claimed', text: `sender says ${messageTime(entry.claimed, now) || entry.claimed}` });
    claim.title = `created_at from the sender: ${entry.claimed}`;
    meta.append(claim);
  }
  if (entry.edited) meta.append(el('span', { className: 'edited', text: 'edited' }));
  if (entry.sending) {
    const sending = behind ? 'queued' : entry.sending;
    const status = { sent: '✓', sending: 'sending…', queued: 'waiting…', waiting: "waiting for the chat's devices…", failed: entry.failure ? `not sent: ${entry.failure}` : 'not sent' }[sending];
    const span = el('span', { className: `status ${behind ? 'waiting' : entry.sending}`, text: status });
    if (entry.sending === 'sent') span.setAttribute('aria-label', 'sent');
    meta.append(span);
  }
  if (mine) {
    // Always in the DOM (keyboard users reach them with Tab); shown on hover or focus.
    const actions = el('span', { className: 'actions' });
    if (entry.text !== null) {
      const edit = el('button', { className: 'edit', text: 'edit' });
      edit.type = 'button';
      edit.setAttribute('aria-label', `edit: ${entry.text.slice(0, 40)}`);
      edit.addEventListener('click', () => startEdit(view, id));
      actions.append(edit);
    }
    // A delete needs no key: own messages this device cannot read can go too.
    const del = el('button', { className: 'delete', text: 'delete' });
    del.type = 'button';
    del.setAttribute('aria-label', entry.text !== null ? `delete: ${entry.text.slice(0, 40)}` : 'delete this message');
    del.addEventListener('click', () => deleteMessage(view, id));
    actions.append(del);
    meta.append(actions);
  }
  const body = entry.text !== null ? el('div', { className: 'text', text: entry.text }) : el('div', { className: 'text locked', text: entry.problem ?? 'decrypting…' });
  const li = el('li', { className: `msg ${mine ? 'mine' : 'theirs'}` }, meta, body);
  li.dataset.id = id;
  li.dataset.sender = entry.senderId;
  if (entry.problem && entry.text === null) li.dataset.problem = 'undecryptable';
  return li;
}

/** The note beside the chat's title, and the composer: disabled when the chat is gone. */
function renderChatNote(view: ChatView): void {
  if (session?.current !== view) return;
  const note = view.gone ? view.goneReason : view.history === 'loading' ? 'loading history…' : view.history === 'failed' ? 'history unavailable: showing new messages only' : '';
  const noteEl = $('history-note');
  noteEl.textContent = note;
  noteEl.classList.toggle('error', view.gone);
  const input = $<HTMLInputElement>('text');
  input.disabled = view.gone;
  $<HTMLButtonElement>('send').disabled = view.gone;
  input.placeholder = view.gone ? `You cannot write here: ${view.goneReason}` : 'Message (end-to-end encrypted)';
}

function renderAll(): void {
  if (!session) return;
  renderState();
  renderChats();
  renderOnline();
  renderTyping();
  if (session.current) {
    renderMessages(session.current);
    renderChatNote(session.current);
  }
  $('chat-title').textContent = session.current ? `# ${session.current.name}` : '';
}

// --- decrypting ----------------------------------------------------------------------------------

/** A screen reader hears new messages of the open chat here (the list is no live region: a history load would be read out whole). */
function announce(text: string): void {
  $('announce').textContent = text;
}

async function decryptInto(view: ChatView, entry: Entry, content: { ciphertext?: unknown; nonce?: unknown; envelopes?: unknown }, live = false): Promise<void> {
  const s = session;
  if (!s) return;
  const version = entry.version;
  let text: string | null = null;
  let problem: string | null = null;
  try {
    // Bound to the message's sender: an edit must come from its author to decrypt.
    text = await open(content, { chatId: view.chat.id, messageId: entry.id, senderId: entry.senderId }, { id: s.device.id, privateKey: s.device.privateKey });
  } catch (err) {
    problem = `cannot decrypt: ${err instanceof CannotDecrypt ? err.message : 'unreadable message'}`;
  }
  if (entry.version !== version || session !== s) return; // an edit overtook this one
  entry.text = text;
  entry.problem = problem;
  renderMessages(view);
  if (live && session.current === view) announce(`${userName(entry.senderId)}: ${text ?? problem ?? ''}`);
}

/**
 * A received message's entry. Its time is the sender's `created_at` checked against `reference`
 * (when the page got it live, or when the main API saved it: `saved_at`); see checkedTime.
 */
function entryFrom(message: { id: string; sender_id: UserId; created_at?: string; saved_at?: string; edited_at?: string }, reference?: number, pastSlackMs = 0): Entry {
  const saved = typeof message.saved_at === 'string' ? Date.parse(message.saved_at) : NaN;
  // History without a saved_at: only a claim in the future can be told wrong.
  const { at, claimed } = reference !== undefined ? checkedTime(message.created_at, reference, pastSlackMs) : Number.isNaN(saved) ? checkedTime(message.created_at, Date.now(), Infinity) : checkedTime(message.created_at, saved);
  return {
    id: message.id,
    senderId: String(message.sender_id),
    at,
    ...(claimed === undefined ? {} : { claimed }),
    text: null,
    problem: null,
    edited: typeof message.edited_at === 'string',
    version: 0,
    sending: null,
    changed: performance.now(),
  };
}

// --- incoming ------------------------------------------------------------------------------------

function onMessage(view: ChatView, message: ReceivedMessage): void {
  if (view.deleted.has(message.id) || view.entries.has(message.id)) return; // already from history
  // A replay after a reconnect (before the chat's `registered`) brings what was written while
  // the page was away: older than now by up to that long. It is announced once, as a count.
  const replay = !view.registered;
  const entry = entryFrom(message, Date.now(), replay && session ? Date.now() - session.lostAt : 0);
  // A new message is not edited, whatever its sender put in it (the gateway passes unknown data
  // fields through): only an edit broadcast sets `edited`.
  entry.edited = false;
  view.add(entry);
  view.typing.delete(entry.senderId);
  if (session?.current !== view) view.unread++;
  if (replay) view.missedNew++;
  renderMessages(view);
  renderTyping();
  void decryptInto(view, entry, message, !replay);
}

function onEdit(view: ChatView, edit: ReceivedEdit): void {
  const entry = view.entries.get(edit.id);
  if (!entry) {
    // Not here yet while the history loads: applied after the merge. Otherwise a message this
    // page never had (deleted, or from before its history).
    if (view.history === 'loading' && !view.deleted.has(edit.id)) view.lateEdits.set(edit.id, edit);
    return;
  }
  // Only the author edits a message. The main API checks it and the gateway sets sender_id from
  // the verified token; the page checks it too rather than trusting every broadcast.
  if (String(edit.sender_id) !== entry.senderId) {
    log(`${view.name}: ignored an edit of ${userName(entry.senderId)}'s message by ${userName(edit.sender_id)}`);
    return;
  }
  entry.version++;
  entry.edited = true;
  entry.changed = performance.now();
  void decryptInto(view, entry, edit);
}

function onDelete(view: ChatView, id: string, deletedBy: UserId | undefined): void {
  const entry = view.entries.get(id);
  if (entry && deletedBy !== undefined && String(deletedBy) !== entry.senderId) {
    log(`${view.name}: ignored a delete of ${userName(entry.senderId)}'s message by ${userName(deletedBy)}`);
    return;
  }
  view.remove(id);
  view.lateEdits.delete(id);
  if (session?.editing?.view === view && session.editing.id === id) abandonEdit('the message was deleted');
  renderMessages(view);
}

/** Loads the chat's stored messages from the main API: on first open, and after a gap. */
async function loadHistory(view: ChatView, afterGap: boolean): Promise<void> {
  const s = session;
  if (!s) return;
  const started = performance.now();
  view.history = 'loading';
  renderMessages(view);
  let stored: StoredMessage[];
  let more: boolean;
  try {
    // The newest MESSAGES_KEPT: a chat flooded with thousands would take long to decrypt and show.
    ({ messages: stored, more } = await s.api.messages(view.chat.id, MESSAGES_KEPT));
  } catch (err) {
    if (session !== s) return;
    view.history = 'failed';
    log(`${view.name}: history unavailable (${errorText(err)})`);
    renderMessages(view);
    return;
  }
  if (session !== s) return;
  // Entries changed (arrived, or edited live) after the request went out are newer than the
  // snapshot, and own writes not acked yet are not in it: both are kept (web/model.ts).
  const fresh = mergeHistory(view, stored, started, afterGap, (m) => entryFrom(m));
  view.trimmed = trimMessages(view) > 0 || more;
  view.history = 'loaded';
  if (s.editing?.view === view && !view.entries.has(s.editing.id)) abandonEdit('the message is no longer in the chat (deleted elsewhere)');
  log(`${view.name}: ${stored.length} stored message(s) loaded${afterGap ? ' after a gap' : ''}${more ? ' (older ones not)' : ''}`);
  renderMessages(view);
  const decrypting = fresh.filter(({ entry }) => view.entries.get(entry.id) === entry).map(({ entry, message }) => decryptInto(view, entry, message));
  const late = [...view.lateEdits.values()];
  view.lateEdits.clear();
  for (const edit of late) onEdit(view, edit);
  await Promise.all(decrypting);
}

// --- outgoing ------------------------------------------------------------------------------------

/**
 * How a device-list call failed: `unreachable` (no answer: the network, a timeout, or the page
 * server's 502/504 for a main API it cannot reach), `refused` (403: not a member), or `error`
 * (any other answer, e.g. a 500: the API is there but has no list for us now).
 */
function deviceListFailure(err: unknown): 'unreachable' | 'refused' | 'error' {
  if (err instanceof ApiError) return err.status === 403 ? 'refused' : err.status === 502 || err.status === 504 ? 'unreachable' : 'error';
  return 'unreachable'; // fetch threw: a network error or the timeout
}

/**
 * Fetches the chat's device list and keeps it as the last known one; wakes writes waiting for it.
 * One request at a time per chat: whoever asks while one is in flight (a burst of presence, the
 * writes queued behind one another) shares it, so a hanging API costs them one timeout, not one each.
 */
function fetchDevices(view: ChatView): Promise<Recipient[]> {
  const s = session!;
  view.devicesRequest ??= s.api
    .devices(view.chat.id)
    .then(
      (devices) => {
        // Hundreds of devices of one member would make every message too large for the gateway.
        const list = boundDevices(devices).map(({ device_id, public_key }) => ({ device_id, public_key }));
        if (session === s) {
          view.devices = list;
          view.devicesUnreachableAt = 0;
          const waiting = view.devicesLoaded;
          view.devicesLoaded = [];
          for (const wake of waiting) wake();
        }
        return list;
      },
      (err: unknown) => {
        if (deviceListFailure(err) === 'unreachable') view.devicesUnreachableAt = performance.now();
        throw err;
      },
    )
    .finally(() => (view.devicesRequest = null));
  return view.devicesRequest;
}

/** Loads the device list ahead of any write: when the chat registers and when someone comes online. */
function loadDevices(view: ChatView): void {
  if (view.devicesRequest) return; // one at a time: a burst of presence needs one list
  fetchDevices(view).catch((err: unknown) => log(`${view.name}: device list not loaded (${errorText(err)})`));
}

class Abandoned extends Error {}

/**
 * The recipients of a write: every device of the chat's members as the main API lists it now,
 * this one always included, with its own key. Encrypting to fewer devices than the chat has would send a message
 * its members cannot read, so without a list the write waits (shown as "waiting for the chat's
 * devices") and retries; only when the API is unreachable does it use the last list loaded.
 */
async function recipients(view: ChatView, entry: Entry): Promise<Recipient[]> {
  const s = session!;
  let delay = 1000;
  let logged = false;
  for (;;) {
    if (session !== s || view.deleted.has(entry.id)) throw new Abandoned();
    if (view.gone) throw new Error(view.goneReason);
    let devices: Recipient[] | null = null;
    try {
      // The list could not be reached a moment ago: the last one, without waiting again.
      if (view.devices !== null && view.devicesUnreachableAt > 0 && performance.now() - view.devicesUnreachableAt < DEVICES_REUSE_MS) devices = view.devices;
      else devices = await fetchDevices(view);
    } catch (err) {
      const failure = deviceListFailure(err);
      if (failure === 'refused') throw new Error(`not a member of this chat (${errorText(err)})`);
      if (failure === 'unreachable' && view.devices !== null) {
        log(`${view.name}: device list unavailable (${errorText(err)}), using the last one`);
        devices = view.devices;
      } else if (!logged) {
        logged = true;
        log(`${view.name}: waiting for the chat's device list (${errorText(err)})`);
      }
    }
    if (devices) {
      if (entry.sending === 'waiting') entry.sending = 'sending';
      // This device with its own key, whatever key the list gives its id: an envelope wrapped
      // for another key would be one this device (and its other tabs) cannot open.
      const own = { device_id: s.device.id, public_key: s.device.publicKey };
      return [...devices.filter((d) => d.device_id !== own.device_id), own];
    }
    if (entry.sending !== 'waiting') {
      entry.sending = 'waiting';
      renderMessages(view);
    }
    // Until the next retry, or sooner when another load gets the list.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, delay);
      view.devicesLoaded.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    delay = Math.min(delay * 2, DEVICES_RETRY_MAX_MS);
  }
}

/** Runs `prepare` after the chat's earlier writes were handed to the SDK (which keeps their order). */
function queueWrite(view: ChatView, entry: Entry | null, prepare: () => Promise<void>): void {
  view.writes = view.writes
    .then(prepare)
    .catch((err: unknown) => log(`${view.name}: write failed: ${errorText(err)}`))
    .finally(() => {
      if (entry && view.queued.delete(entry)) renderMessages(view);
    });
}

/** What the page shows for a refused write. */
function failureText(view: ChatView, err: unknown): string {
  if (err instanceof ClientError && err.code === 'too_large') {
    const devices = view.devices?.length;
    return `too large for the gateway (${MAX_FRAME_BYTES / 1024} KiB a frame${devices ? `, ${devices} devices in this chat` : ''}: a shorter text, or fewer devices)`;
  }
  return errorText(err);
}

function settle(view: ChatView, entry: Entry, ack: Promise<unknown>): void {
  ack.then(
    () => {
      entry.sending = 'sent';
      entry.failure = undefined;
      renderMessages(view);
    },
    (err: unknown) => {
      if (err instanceof Abandoned) return;
      entry.sending = 'failed';
      entry.failure = failureText(view, err);
      log(`${view.name}: not sent: ${entry.failure}`);
      renderMessages(view);
    },
  );
}

function sendText(view: ChatView, text: string): void {
  const s = session!;
  const id = crypto.randomUUID();
  // created_at is set here, once: the outbox resends the same bytes, so a resend keeps it.
  const at = new Date().toISOString();
  const senderId = s.userId;
  const entry: Entry = { id, senderId, at, text, problem: null, edited: false, version: 0, sending: 'sending', handed: false, changed: performance.now() };
  view.add(entry);
  view.queued.add(entry);
  renderMessages(view);
  queueWrite(view, entry, async () => {
    try {
      const to = await recipients(view, entry);
      const sealed = await seal(text, { chatId: view.chat.id, messageId: id, senderId }, to);
      if (view.deleted.has(id)) throw new Abandoned();
      entry.handed = true;
      settle(view, entry, view.chat.send({ ...sealed, message_type: 'text', created_at: at }, { id }));
    } catch (err) {
      settle(view, entry, Promise.reject(err));
    }
  });
}

/** Sends an edit; false when the message is not here any more (nothing is sent). */
function editText(view: ChatView, id: string, text: string): boolean {
  const entry = view.entries.get(id);
  if (!entry) return false;
  entry.text = text;
  entry.edited = true;
  entry.version++;
  entry.changed = performance.now();
  entry.sending = 'sending';
  view.queued.add(entry);
  renderMessages(view);
  queueWrite(view, entry, async () => {
    try {
      // A fresh content key and fresh envelopes: whoever the chat has now can read the new text.
      const sealed = await seal(text, { chatId: view.chat.id, messageId: id, senderId: entry.senderId }, await recipients(view, entry));
      if (view.deleted.has(id)) throw new Abandoned();
      settle(view, entry, view.chat.edit(id, { ...sealed }));
    } catch (err) {
      settle(view, entry, Promise.reject(err));
    }
  });
  return true;
}

function deleteMessage(view: ChatView, id: string): void {
  // A message still waiting for the device list was never sent: nothing to delete but here.
  const neverSent = view.entries.get(id)?.handed === false;
  view.remove(id);
  if (session?.editing?.view === view && session.editing.id === id) abandonEdit('you deleted the message');
  renderMessages(view);
  const wake = view.devicesLoaded;
  view.devicesLoaded = [];
  for (const w of wake) w(); // a waiting write sees the delete and gives up
  if (neverSent) return;
  queueWrite(view, null, async () => {
    view.chat.delete(id).catch((err: unknown) => log(`${view.name}: delete failed: ${errorText(err)}`));
  });
}

function startEdit(view: ChatView, id: string): void {
  const entry = view.entries.get(id);
  if (!session || !entry || entry.text === null) return;
  const input = $<HTMLInputElement>('text');
  // What was typed before "edit" comes back when the edit is done or cancelled.
  const draft = session.editing ? session.editing.draft : input.value;
  session.editing = { view, id, draft, original: entry.text };
  $('editing').hidden = false;
  notice('');
  input.value = entry.text;
  input.focus();
}

function stopEdit(): void {
  const draft = session?.editing?.draft ?? '';
  if (session) session.editing = null;
  $('editing').hidden = true;
  $<HTMLInputElement>('text').value = draft;
}

/** A line under the composer about what just happened to it (empty: hidden). */
function notice(text: string): void {
  const el = $('notice');
  el.textContent = text;
  el.hidden = text === '';
}

/**
 * Ends an edit that cannot go on (its message was deleted, here or elsewhere, or is gone after a
 * history reload, or another chat was opened) without losing what was typed: a changed text stays
 * in the composer (Send sends it as a new message); an unchanged one gives the draft back. Says
 * why, in the log, under the composer, and to a screen reader.
 */
function abandonEdit(why: string): void {
  const s = session;
  if (!s?.editing) return;
  const input = $<HTMLInputElement>('text');
  const typed = input.value;
  const changed = typed !== s.editing.original && typed.trim() !== '';
  stopEdit();
  if (changed) input.value = typed;
  const text = `Edit ended: ${why}.${changed ? ' Your text is still in the composer; Send sends it as a new message.' : ''}`;
  log(text);
  notice(text);
  announce(text);
}

// --- chats ---------------------------------------------------------------------------------------

function openChat(id: string | number): ChatView {
  const s = session!;
  const existing = s.views.get(String(id));
  if (existing) return existing;
  const view = new ChatView(s.client.chat(id), chatName(id));
  s.views.set(view.key, view);
  const { chat } = view;
  chat.on('registered', (e) => {
    const first = !view.everRegistered;
    view.registered = view.everRegistered = true;
    if (session === s && String(e.userId) !== s.userId) {
      // The gateway's word on who this is (the login's spelling of the id may differ).
      log(`the gateway knows this user as ${String(e.userId)}`);
      s.userId = String(e.userId);
      showMe(s.userId);
      renderMessages(view);
    }
    // The device list is loaded before any write needs it, and again on every (re)join.
    loadDevices(view);
    if (first) {
      log(`${view.name}: joined, ${e.online.length} online`);
      void loadHistory(view, false);
    } else {
      log(`${view.name}: ${e.recovered === false ? 'rejoined, not recovered' : `recovered, ${view.replayed} missed update(s) replayed`}`);
      // One announcement for the replay, not one per message (a screen reader would read them all).
      if (view.missedNew > 0 && s.current === view) announce(`${view.missedNew} new message${view.missedNew === 1 ? '' : 's'} in ${view.name}`);
    }
    view.replayed = 0;
    view.missedNew = 0;
    renderState();
    renderOnline();
  });
  chat.on('message', ({ message }) => {
    if (!view.registered) view.replayed++;
    onMessage(view, message);
  });
  chat.on('edit', ({ edit }) => {
    if (!view.registered) view.replayed++;
    onEdit(view, edit);
  });
  chat.on('delete', ({ id: messageId, deletedBy }) => {
    if (!view.registered) view.replayed++;
    onDelete(view, messageId, deletedBy);
  });
  chat.on('event', ({ data }) => {
    // A system event the backend published through the server API (docs/server-api.md).
    if (!view.registered) view.replayed++;
    log(`${view.name}: event ${JSON.stringify(data).slice(0, 120)}`);
  });
  chat.on('presence', ({ userId, status }) => {
    log(`${view.name}: ${userName(userId)} ${status}`);
    if (status === 'offline') view.typing.delete(String(userId));
    // Someone (maybe a new member, maybe on a new device) came online: refresh the device list.
    else if (String(userId) !== s.userId) loadDevices(view);
    renderOnline();
    renderTyping();
  });
  chat.on('typing', ({ userId }) => {
    view.typing.set(String(userId), Date.now() + TYPING_SHOWN_MS);
    renderTyping();
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
  });
  chat.on('gap', ({ from, to, reason }) => {
    log(`${view.name}: gap after ${from.seq} up to ${to.seq} (${reason}), reloading history`);
    void loadHistory(view, true);
  });
  chat.on('unregistered', ({ error }) => {
    log(`${view.name}: removed (${errorText(error)})`);
    view.registered = false;
    view.gone = true;
    view.goneReason =
      error.code === 'forbidden' ? 'not a member of this chat' : error.code === 'revoked' ? 'you were removed from this chat' : `this chat is closed (${errorText(error)})`;
    // Writes waiting for a device list give up.
    const wake = view.devicesLoaded;
    view.devicesLoaded = [];
    for (const w of wake) w();
    renderState();
    renderChatNote(view);
  });
  return view;
}

function selectChat(id: string | number): void {
  const s = session;
  if (!s) return;
  const view = openChat(id);
  if (s.current !== view) {
    notice('');
    if (s.editing) abandonEdit(`you opened ${view.name}`);
    stopTyping();
  }
  s.current = view;
  view.unread = 0;
  showPanel('');
  renderAll();
  const input = $<HTMLInputElement>('text');
  if (!input.disabled) input.focus();
}

/** Narrow screens show one column: the chat, or the chat list (`chats`), or the log (`log`). */
function showPanel(panel: '' | 'chats' | 'log'): void {
  $('app').dataset.panel = panel;
  $('show-chats').setAttribute('aria-expanded', String(panel === 'chats'));
  $('show-log').setAttribute('aria-expanded', String(panel === 'log'));
}

// --- login / logout ------------------------------------------------------------------------------

/** Who is logged in, in the header (a long id ends in "…" there; the title has it whole). */
function showMe(userId: string): void {
  const me = $('me');
  me.textContent = `${userName(userId)} (user ${userId})`;
  me.title = me.textContent;
}

let loggingIn = false;

async function login(userId: string): Promise<void> {
  if (session || loggingIn) return;
  loggingIn = true;
  const error = $('login-error');
  error.hidden = true;
  try {
    const api = new Api(userId);
    await api.login();
    let device = await loadDevice(userId);
    let replaced = '';
    try {
      await api.publishKey(device.id, device.publicKey);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 403)) throw err;
      // The device id is another user's now (the dev API forgot it in a restart and a member who
      // saw it in an envelope published it first): this device could never log in again. A new one.
      replaced = device.id;
      device = await replaceDevice(userId, device.id);
      await api.publishKey(device.id, device.publicKey);
    }
    const views = new Map<string, ChatView>();
    const client = createClient({
      url: config.gatewayUrl,
      token: (() => {
        let first = true;
        return () => {
          const fresh = !first; // asked again: the gateway refused the token
          first = false;
          return api.currentToken(fresh);
        };
      })(),
      // A person is waiting: retry sooner than the SDK's 30 s cap (the demo has few clients).
      reconnect: { maxDelayMs: 5000 },
      isKnownMessage: (chatId, messageId) => views.get(String(chatId))?.entries.has(messageId) ?? false,
    });
    session = { userId, api, device, client, views, current: null, connection: { state: 'connecting' }, retryAt: 0, lostAt: Date.now(), editing: null };
    const s = session;
    client.on('state', (e) => {
      if (s.connection.state === 'connected' && e.state !== 'connected') s.lostAt = Date.now();
      s.connection = e;
      if (e.state === 'disconnected' && typeof e.retryInMs === 'number') s.retryAt = Date.now() + e.retryInMs;
      if (e.state !== 'connected') for (const v of s.views.values()) v.registered = false;
      if (e.state === 'disconnected') {
        log(e.retryInMs === null || e.retryInMs === undefined ? `closed${e.error ? `: ${errorText(e.error)}` : ''}` : `offline (${e.code ?? '?'}${e.reason ? ` ${e.reason}` : ''}), retry in ${(e.retryInMs / 1000).toFixed(1)} s`);
      } else {
        log(e.state === 'connecting' ? 'connecting' : 'connected');
      }
      if (e.state === 'connected') {
        for (const v of s.views.values()) {
          if (v.everRegistered && !v.gone) log(`${v.name}: recovering after position ${v.chat.position?.seq ?? 'none'}`);
        }
      }
      renderState();
    });
    showMe(userId);
    const print = await fingerprint(device.publicKey);
    $('device').replaceChildren(
      el('span', { text: `device ${device.id.slice(0, 8)}…` }),
      el('br'),
      el('span', { text: `key ${print}` }),
      ...(device.persisted ? [] : [el('br'), el('span', { text: 'not saved: no IndexedDB' })]),
    );
    $('login').hidden = true;
    $('app').hidden = false;
    $('log').replaceChildren();
    if (replaced) log(`device ${replaced.slice(0, 8)} is another user's now: made a new one (messages sent to the old one cannot be decrypted here)`);
    log(`logged in as ${userName(userId)}, device ${device.id.slice(0, 8)}`);
    selectChat(DEMO_CHATS[0]!.id);
  } catch (err) {
    session?.client.close();
    session = null;
    error.textContent = `Could not log in: ${errorText(err)}`;
    error.hidden = false;
    $('app').hidden = true;
    $('login').hidden = false;
  } finally {
    loggingIn = false;
  }
}

function logout(): void {
  session?.client.close();
  session = null;
  stopTyping();
  renderState();
  $('app').hidden = true;
  $('login').hidden = false;
  $('messages').replaceChildren();
  shownView = null;
  history.replaceState(null, '', location.pathname);
}

// --- typing --------------------------------------------------------------------------------------

/** The SDK sends at most one `typing` a second and drops the rest (never queued). */
const TYPING_EVERY_MS = 1100;
let lastTypingAt = 0;
let typingTimer: ReturnType<typeof setTimeout> | undefined;

/**
 * Tells the chat this user is typing. A keystroke inside the SDK's one-second window would be
 * dropped, so one trailing `typing` goes out when the window ends if the user is still at it —
 * in the chat typed in: if another chat was opened meanwhile, the trailing one is dropped.
 */
function typing(input: HTMLInputElement, view: ChatView | null | undefined = session?.current): void {
  if (!view || session?.current !== view || view.gone || input.value === '' || session?.editing) return;
  const wait = lastTypingAt + TYPING_EVERY_MS - Date.now();
  if (wait <= 0) {
    lastTypingAt = Date.now();
    view.chat.typing();
  } else {
    typingTimer ??= setTimeout(() => {
      typingTimer = undefined;
      typing(input, view);
    }, wait);
  }
}

function stopTyping(): void {
  clearTimeout(typingTimer);
  typingTimer = undefined;
}

// --- wiring --------------------------------------------------------------------------------------

function wire(): void {
  const buttons = $('user-buttons');
  for (const user of DEMO_USERS) {
    const button = el('button', {}, user.name, el('small', { text: `user ${user.id}` }));
    button.type = 'button';
    button.dataset.user = user.id;
    button.addEventListener('click', () => void login(user.id));
    buttons.append(button);
  }
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = $<HTMLInputElement>('user-id').value.trim();
    if (id) void login(id);
  });
  $('logout').addEventListener('click', logout);
  $('open-chat').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>('chat-id');
    const id = input.value.trim();
    if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(id) || /^\.+$/.test(id)) return;
    input.value = '';
    selectChat(canonicalId(id));
  });
  const input = $<HTMLInputElement>('text');
  input.addEventListener('input', () => typing(input));
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const s = session;
    const text = input.value;
    if (!s?.current || text.trim() === '') return;
    notice('');
    if (s.editing) {
      // The message may have gone meanwhile (a reload dropped it): say so, keep the text.
      if (editText(s.editing.view, s.editing.id, text)) stopEdit();
      else abandonEdit('the message is no longer in the chat');
    } else {
      if (s.current.gone) return;
      stopTyping();
      sendText(s.current, text);
      input.value = '';
    }
  });
  $('show-chats').addEventListener('click', () => showPanel($('app').dataset.panel === 'chats' ? '' : 'chats'));
  $('show-log').addEventListener('click', () => showPanel($('app').dataset.panel === 'log' ? '' : 'log'));
  $('cancel-edit').addEventListener('click', stopEdit);
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && session?.editing) {
      stopEdit();
      event.stopPropagation(); // only the edit: an open panel stays
    }
  });
  // Escape closes the Chats / Log panel of a narrow screen, and gives the focus back to its button.
  document.addEventListener('keydown', (event) => {
    const panel = $('app').dataset.panel;
    if (event.key !== 'Escape' || !panel) return;
    showPanel('');
    $(panel === 'chats' ? 'show-chats' : 'show-log').focus();
  });
  // Widened past the phone layout: every column is shown, so no panel is open (or expanded).
  matchMedia('(max-width: 760px)').addEventListener('change', (event) => {
    if (!event.matches) showPanel('');
  });
  window.addEventListener('online', () => {
    log('the browser is online again');
    renderState();
  });
  window.addEventListener('offline', () => {
    log('the browser reports no network');
    renderState();
  });
}

async function main(): Promise<void> {
  wire();
  config = (await (await fetch('/config.json')).json()) as PageConfig;
  const user = new URLSearchParams(location.search).get('user');
  if (user) await login(user);
  else $('login').hidden = false;
  document.body.dataset.ready = 'true';
}

void main();
