/**
 * The chat page: log in as a demo user, pick a chat, send / edit / delete end-to-end-encrypted
 * messages, see who is online and typing, and watch the connection. Plain DOM, no framework;
 * bundled by web/server.ts with esbuild. Connection, outbox and recovery are the client SDK's;
 * encryption is web/crypto.ts. See docs/chat-page.md.
 */
import { ClientError, createClient, type Chat, type ChatId, type Client, type ReceivedEdit, type ReceivedMessage, type StateEvent, type UserId } from '../packages/client/src/index.js';
import { Api, type ChatDevice, type StoredMessage } from './api.js';
import { CannotDecrypt, fingerprint, open, seal, type Recipient } from './crypto.js';
import { loadDevice, type Device } from './device.js';

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

interface PageConfig {
  gatewayUrl: string;
}

// --- state ---------------------------------------------------------------------------------------

interface Entry {
  id: string;
  senderId: string;
  at: string;
  /** The decrypted text, or null while decrypting or when it cannot be decrypted. */
  text: string | null;
  /** Why it cannot be shown ("cannot decrypt: …"), or a failed write. */
  problem: string | null;
  edited: boolean;
  /** Bumped by every edit, so a slow decryption of an older version never overwrites a newer one. */
  version: number;
  /** Own writes: waiting for the ack, acked, or refused. */
  sending: 'sending' | 'sent' | 'failed' | null;
  /** performance.now() when it reached this page (history reloads keep newer entries). */
  arrived: number;
}

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
  /** Broadcasts replayed since the connection came back (logged with the `registered`). */
  replayed = 0;
  /** Encryption runs in order before each write reaches the SDK, which keeps a chat's writes in order. */
  writes: Promise<void> = Promise.resolve();
  /** The members' devices last fetched, used when the main API cannot be reached. */
  devices: Recipient[] = [];

  constructor(
    readonly chat: Chat,
    readonly name: string,
  ) {
    this.key = String(chat.id);
  }

  add(entry: Entry): void {
    if (!this.entries.has(entry.id)) this.order.push(entry.id);
    this.entries.set(entry.id, entry);
  }

  remove(id: string): void {
    this.deleted.add(id);
    if (this.entries.delete(id)) this.order = this.order.filter((x) => x !== id);
  }
}

interface Session {
  userId: string;
  api: Api;
  device: Device;
  client: Client;
  views: Map<string, ChatView>;
  current: ChatView | null;
  connection: StateEvent;
  editing: { view: ChatView; id: string } | null;
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

function clock(at: string | number = Date.now()): string {
  const d = new Date(at);
  return Number.isNaN(d.getTime()) ? '' : d.toTimeString().slice(0, 5);
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
function connectionState(s: Session): { state: string; text: string } {
  const c = s.connection;
  if (c.state === 'disconnected') {
    if (c.retryInMs === null || c.retryInMs === undefined) return { state: 'closed', text: c.error ? `closed: ${c.error.code}` : 'closed' };
    const net = navigator.onLine ? '' : ', no network';
    return { state: 'offline', text: `offline (${c.code ?? '?'}${net}) · retry in ${(c.retryInMs / 1000).toFixed(1)} s` };
  }
  if (c.state === 'connecting') return { state: 'connecting', text: 'connecting' };
  const waiting = [...s.views.values()].filter((v) => !v.registered && !v.gone);
  if (waiting.length === 0) return { state: 'open', text: 'open' };
  return waiting.some((v) => v.everRegistered) ? { state: 'recovering', text: 'recovering' } : { state: 'connecting', text: 'joining' };
}

function renderState(): void {
  if (!session) return;
  const { state, text } = connectionState(session);
  const pill = $('state');
  pill.dataset.state = state;
  pill.textContent = text;
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
    const li = el('li', { className: s.current?.key === key ? 'current' : '' }, el('span', { text: `# ${chatName(key)}` }));
    li.dataset.chat = key;
    if (view && view.unread > 0) li.append(el('span', { className: 'badge', text: String(view.unread) }));
    li.addEventListener('click', () => selectChat(canonicalId(key)));
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

function renderMessagesNow(view: ChatView): void {
  if (!session || session.current !== view) {
    renderChats();
    return;
  }
  const me = session.userId;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren();
  for (const id of view.order) {
    const entry = view.entries.get(id);
    if (!entry) continue;
    const mine = entry.senderId === me;
    const meta = el('div', { className: 'meta' }, el('span', { className: 'who', text: userName(entry.senderId) }), el('time', { text: clock(entry.at) }));
    if (entry.edited) meta.append(el('span', { className: 'edited', text: 'edited' }));
    if (entry.sending) meta.append(el('span', { className: `status ${entry.sending}`, text: entry.sending === 'sent' ? '✓' : entry.sending === 'sending' ? 'sending…' : 'not sent' }));
    if (mine && entry.text !== null) {
      const edit = el('button', { className: 'edit', text: 'edit' });
      edit.type = 'button';
      edit.addEventListener('click', () => startEdit(view, id));
      const del = el('button', { className: 'delete', text: 'delete' });
      del.type = 'button';
      del.addEventListener('click', () => deleteMessage(view, id));
      meta.append(el('span', { className: 'actions' }, edit, del));
    }
    const body =
      entry.text !== null
        ? el('div', { className: 'text', text: entry.text })
        : el('div', { className: 'text locked', text: entry.problem ?? 'decrypting…' });
    const li = el('li', { className: `msg ${mine ? 'mine' : 'theirs'}` }, meta, body);
    li.dataset.id = id;
    li.dataset.sender = entry.senderId;
    if (entry.problem && entry.text === null) li.dataset.problem = 'undecryptable';
    list.append(li);
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
  const note = view.history === 'loading' ? 'loading history…' : view.history === 'failed' ? 'history unavailable: showing new messages only' : '';
  $('history-note').textContent = note;
}

function renderAll(): void {
  if (!session) return;
  renderState();
  renderChats();
  renderOnline();
  renderTyping();
  if (session.current) renderMessages(session.current);
  $('chat-title').textContent = session.current ? `# ${session.current.name}` : '';
}

// --- decrypting ----------------------------------------------------------------------------------

async function decryptInto(view: ChatView, entry: Entry, content: { ciphertext?: unknown; nonce?: unknown; envelopes?: unknown }): Promise<void> {
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
}

function entryFrom(message: { id: string; sender_id: UserId; created_at?: string; saved_at?: string; edited_at?: string }): Entry {
  return {
    id: message.id,
    senderId: String(message.sender_id),
    at: message.created_at ?? message.saved_at ?? new Date().toISOString(),
    text: null,
    problem: null,
    edited: typeof message.edited_at === 'string',
    version: 0,
    sending: null,
    arrived: performance.now(),
  };
}

// --- incoming ------------------------------------------------------------------------------------

function onMessage(view: ChatView, message: ReceivedMessage): void {
  if (view.deleted.has(message.id) || view.entries.has(message.id)) return; // already from history
  const entry = entryFrom(message);
  view.add(entry);
  view.typing.delete(entry.senderId);
  if (session?.current !== view) view.unread++;
  renderMessages(view);
  renderTyping();
  void decryptInto(view, entry, message);
}

function onEdit(view: ChatView, edit: ReceivedEdit): void {
  const entry = view.entries.get(edit.id);
  if (!entry) return; // a message this page never had (deleted, or from before its history)
  entry.version++;
  entry.edited = true;
  void decryptInto(view, entry, edit);
}

/** Loads the chat's stored messages from the main API: on first open, and after a gap. */
async function loadHistory(view: ChatView, afterGap: boolean): Promise<void> {
  const s = session;
  if (!s) return;
  const started = performance.now();
  view.history = 'loading';
  renderMessages(view);
  let stored: StoredMessage[];
  try {
    stored = await s.api.messages(view.chat.id);
  } catch (err) {
    if (session !== s) return;
    view.history = 'failed';
    log(`${view.name}: history unavailable (${errorText(err)})`);
    renderMessages(view);
    return;
  }
  if (session !== s) return;
  // Entries that reached the page after the request went out are newer than the snapshot, and
  // own writes not acked yet are not in it: both are kept. After a gap, anything else the
  // snapshot lacks was deleted meanwhile.
  const keep = (e: Entry | undefined): boolean => e !== undefined && (e.arrived >= started || e.sending === 'sending');
  const order: string[] = [];
  const fresh: Array<{ entry: Entry; message: StoredMessage }> = [];
  for (const message of stored) {
    if (view.deleted.has(message.id)) continue;
    const existing = view.entries.get(message.id);
    order.push(message.id);
    if (keep(existing)) continue;
    const entry = entryFrom(message as StoredMessage & { sender_id: UserId });
    if (existing) entry.version = existing.version + 1;
    view.entries.set(message.id, entry);
    fresh.push({ entry, message });
  }
  const inSnapshot = new Set(order);
  for (const id of view.order) {
    if (inSnapshot.has(id)) continue;
    if (!afterGap || keep(view.entries.get(id))) order.push(id);
    else view.entries.delete(id);
  }
  view.order = order;
  view.history = 'loaded';
  log(`${view.name}: ${stored.length} stored message(s) loaded${afterGap ? ' after a gap' : ''}`);
  renderMessages(view);
  await Promise.all(fresh.map(({ entry, message }) => decryptInto(view, entry, message)));
}

// --- outgoing ------------------------------------------------------------------------------------

/** The recipients of a write: every device of the chat's members, this one always included. */
async function recipients(view: ChatView): Promise<Recipient[]> {
  const s = session!;
  let devices: ChatDevice[] | Recipient[];
  try {
    devices = await s.api.devices(view.chat.id);
    view.devices = devices;
  } catch (err) {
    devices = view.devices; // offline: the last list we had
    log(`${view.name}: device list unavailable (${errorText(err)}), using the last one`);
  }
  const own = { device_id: s.device.id, public_key: s.device.publicKey };
  return devices.some((d) => d.device_id === own.device_id) ? devices : [...devices, own];
}

/** Runs `prepare` after the chat's earlier writes were handed to the SDK (which keeps their order). */
function queueWrite(view: ChatView, prepare: () => Promise<void>): void {
  view.writes = view.writes.then(prepare).catch((err: unknown) => log(`${view.name}: write failed: ${errorText(err)}`));
}

function settle(view: ChatView, entry: Entry, ack: Promise<unknown>): void {
  ack.then(
    () => {
      entry.sending = 'sent';
      renderMessages(view);
    },
    (err: unknown) => {
      entry.sending = 'failed';
      log(`${view.name}: ${errorText(err)}`);
      renderMessages(view);
    },
  );
}

function sendText(view: ChatView, text: string): void {
  const s = session!;
  const id = crypto.randomUUID();
  const entry: Entry = { id, senderId: s.userId, at: new Date().toISOString(), text, problem: null, edited: false, version: 0, sending: 'sending', arrived: performance.now() };
  view.add(entry);
  renderMessages(view);
  queueWrite(view, async () => {
    try {
      const sealed = await seal(text, { chatId: view.chat.id, messageId: id, senderId: s.userId }, await recipients(view));
      settle(view, entry, view.chat.send({ ...sealed, message_type: 'text' }, { id }));
    } catch (err) {
      settle(view, entry, Promise.reject(err));
    }
  });
}

function editText(view: ChatView, id: string, text: string): void {
  const entry = view.entries.get(id);
  if (!entry) return;
  entry.text = text;
  entry.edited = true;
  entry.version++;
  entry.sending = 'sending';
  renderMessages(view);
  queueWrite(view, async () => {
    try {
      // A fresh content key and fresh envelopes: whoever the chat has now can read the new text.
      const sealed = await seal(text, { chatId: view.chat.id, messageId: id, senderId: entry.senderId }, await recipients(view));
      settle(view, entry, view.chat.edit(id, { ...sealed }));
    } catch (err) {
      settle(view, entry, Promise.reject(err));
    }
  });
}

function deleteMessage(view: ChatView, id: string): void {
  view.remove(id);
  if (session?.editing?.id === id) stopEdit();
  renderMessages(view);
  queueWrite(view, async () => {
    view.chat.delete(id).catch((err: unknown) => log(`${view.name}: delete failed: ${errorText(err)}`));
  });
}

function startEdit(view: ChatView, id: string): void {
  const entry = view.entries.get(id);
  if (!session || !entry || entry.text === null) return;
  session.editing = { view, id };
  $('editing').hidden = false;
  const input = $<HTMLInputElement>('text');
  input.value = entry.text;
  input.focus();
}

function stopEdit(): void {
  if (session) session.editing = null;
  $('editing').hidden = true;
  $<HTMLInputElement>('text').value = '';
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
    if (first) {
      log(`${view.name}: joined, ${e.online.length} online`);
      void loadHistory(view, false);
    } else {
      log(`${view.name}: ${e.recovered === false ? 'rejoined, not recovered' : `recovered, ${view.replayed} missed update(s) replayed`}`);
    }
    view.replayed = 0;
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
  chat.on('delete', ({ id: messageId }) => {
    if (!view.registered) view.replayed++;
    view.remove(messageId);
    if (session?.editing?.id === messageId) stopEdit();
    renderMessages(view);
  });
  chat.on('event', ({ data }) => {
    // A system event the backend published through the server API (docs/server-api.md).
    if (!view.registered) view.replayed++;
    log(`${view.name}: event ${JSON.stringify(data).slice(0, 120)}`);
  });
  chat.on('presence', ({ userId, status }) => {
    log(`${view.name}: ${userName(userId)} ${status}`);
    if (status === 'offline') view.typing.delete(String(userId));
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
    renderState();
  });
  return view;
}

function selectChat(id: string | number): void {
  const s = session;
  if (!s) return;
  const view = openChat(id);
  if (s.editing) stopEdit();
  s.current = view;
  view.unread = 0;
  renderAll();
  $<HTMLInputElement>('text').focus();
}

// --- login / logout ------------------------------------------------------------------------------

let loggingIn = false;

async function login(userId: string): Promise<void> {
  if (session || loggingIn) return;
  loggingIn = true;
  const error = $('login-error');
  error.hidden = true;
  try {
    const api = new Api(userId);
    await api.login();
    const device = await loadDevice(userId);
    await api.publishKey(device.id, device.publicKey);
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
    session = { userId, api, device, client, views, current: null, connection: { state: 'connecting' }, editing: null };
    const s = session;
    client.on('state', (e) => {
      s.connection = e;
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
    $('me').textContent = `${userName(userId)} (user ${userId})`;
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
  $('app').hidden = true;
  $('login').hidden = false;
  $('messages').replaceChildren();
  history.replaceState(null, '', location.pathname);
}

// --- typing --------------------------------------------------------------------------------------

/** The SDK sends at most one `typing` a second and drops the rest (never queued). */
const TYPING_EVERY_MS = 1100;
let lastTypingAt = 0;
let typingTimer: ReturnType<typeof setTimeout> | undefined;

/**
 * Tells the chat this user is typing. A keystroke inside the SDK's one-second window would be
 * dropped, so one trailing `typing` goes out when the window ends if the user is still at it.
 */
function typing(input: HTMLInputElement): void {
  const chat = session?.current?.chat;
  if (!chat || input.value === '' || session?.editing) return;
  const wait = lastTypingAt + TYPING_EVERY_MS - Date.now();
  if (wait <= 0) {
    lastTypingAt = Date.now();
    chat.typing();
  } else {
    typingTimer ??= setTimeout(() => {
      typingTimer = undefined;
      typing(input);
    }, wait);
  }
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
    if (s.editing) {
      editText(s.editing.view, s.editing.id, text);
      stopEdit();
    } else {
      clearTimeout(typingTimer);
      typingTimer = undefined;
      sendText(s.current, text);
      input.value = '';
    }
  });
  $('cancel-edit').addEventListener('click', stopEdit);
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && session?.editing) stopEdit();
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
