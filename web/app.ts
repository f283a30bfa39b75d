/**
 * The chat page: log in as a demo user, pick a chat, send / edit / delete end-to-end-encrypted
 * messages, see who is online and typing, and watch the connection. Plain DOM, no framework;
 * bundled by web/server.ts with esbuild. Connection, outbox and recovery are the client SDK's;
 * encryption is web/crypto.ts. See docs/chat-page.md.
 *
 * This module is the session's life: logging in and out, each chat's SDK events, typing, and the
 * page's controls. The rest: state.ts (what the page knows), render.ts (drawing it), incoming.ts
 * (what arrives), writes.ts (what this user sends), recipients.ts (who it is encrypted to), dom.ts.
 */
import { createClient } from '../packages/client/src/index.js';
import { Api, ApiError } from './api.js';
import { fingerprint } from './crypto.js';
import { loadDevice, replaceDevice } from './device.js';
import { $, announce, el, errorText, log, notice } from './dom.js';
import { acceptDelete, loadHistory, onDelete, onEdit, onMessage } from './incoming.js';
import { loadDevices } from './recipients.js';
import { clearMessages, renderAll, renderChatNote, renderMessages, renderOnline, renderState, renderTyping, shownChat, showMe, showPanel } from './render.js';
import { ChatView, DEMO_CHATS, DEMO_USERS, canonicalId, chatName, config, session, setConfig, setSession, userName, type PageConfig, type Session } from './state.js';
import { abandonEdit, deleteMessage, editText, sendText, startEdit, stopEdit } from './writes.js';

const TYPING_SHOWN_MS = 3000;

// --- chats ----------------------------------------------------------------------------------------

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
  chat.on('edit', ({ edit, seq, epoch }) => {
    if (!view.registered) view.replayed++;
    onEdit(view, edit, { seq, epoch });
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

let loggingIn = false;

async function login(userId: string): Promise<void> {
  if (session || loggingIn) return;
  loggingIn = true;
  const error = $('login-error');
  error.hidden = true;
  let created: Session | null = null;
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
    // A new token after this (the gateway or the main API refused the old one: most likely the
    // dev API restarted with a new secret, forgetting every device key) publishes the key again,
    // or no one would encrypt to this device until the next login. One publish at a time (its own
    // 401 mints a token, which must not start another).
    const published = device;
    let republishing: Promise<void> | null = null;
    const publishAgain = (): Promise<void> =>
      (republishing ??= api
        .publishKey(published.id, published.publicKey)
        .then(
          () => {
            if (session?.api === api) log('new token: device key published again');
          },
          (err: unknown) => {
            if (session?.api === api) log(`new token: could not publish the device key again (${errorText(err)})`);
          },
        )
        .finally(() => {
          republishing = null;
        }));
    api.onNewToken = () => void publishAgain();
    const views = new Map<string, ChatView>();
    const client = createClient({
      url: config.gatewayUrl,
      token: (() => {
        let first = true;
        return async () => {
          const fresh = !first; // asked again: the gateway refused the token
          first = false;
          const token = await api.currentToken(fresh);
          // Published before the register that brings this device back online (members load the
          // chat's device list when someone comes online).
          if (republishing) await republishing;
          return token;
        };
      })(),
      // A person is waiting: retry sooner than the SDK's 30 s cap (the demo has few clients).
      reconnect: { maxDelayMs: 5000 },
      isKnownMessage: (chatId, messageId) => views.get(String(chatId))?.entries.has(messageId) ?? false,
      // A delete the page ignores (not by the author it knows; or of a message it does not have
      // yet, held until it comes) must leave no tombstone in the SDK: the author's later edits
      // would never come (web/incoming.ts).
      acceptDelete: (chatId, messageId, deletedBy) => {
        const view = views.get(String(chatId));
        return view === undefined || acceptDelete(view, messageId, deletedBy);
      },
    });
    const s: Session = { userId, api, device, client, views, current: null, connection: { state: 'connecting' }, retryAt: 0, lostAt: Date.now(), editing: null };
    setSession((created = s));
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
    // What the SDK retries on its own (a register refused for now, a storage that failed…): in the
    // log, so "recovering" that lasts has a reason beside it.
    client.on('error', ({ error, during }) => log(`${during}: ${errorText(error)}`));
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
    if (created) created.api.onNewToken = null;
    created?.client.close();
    setSession(null);
    error.textContent = `Could not log in: ${errorText(err)}`;
    error.hidden = false;
    $('app').hidden = true;
    $('login').hidden = false;
  } finally {
    loggingIn = false;
  }
}

function logout(): void {
  if (session) session.api.onNewToken = null;
  session?.client.close();
  setSession(null);
  stopTyping();
  renderState();
  $('app').hidden = true;
  $('login').hidden = false;
  clearMessages();
  history.replaceState(null, '', location.pathname);
}

// --- typing ---------------------------------------------------------------------------------------

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

// --- wiring ---------------------------------------------------------------------------------------

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
  // A chat in the list, and a message's edit and delete buttons: one listener each list.
  $('chats').addEventListener('click', (event) => {
    const key = (event.target as Element).closest<HTMLElement>('button.chat')?.dataset.chat;
    if (key !== undefined) selectChat(canonicalId(key));
  });
  $('messages').addEventListener('click', (event) => {
    const button = (event.target as Element).closest<HTMLButtonElement>('li.msg button');
    const id = button?.closest<HTMLElement>('li.msg')?.dataset.id;
    const view = shownChat();
    if (!button || id === undefined || !view) return;
    if (button.classList.contains('edit')) startEdit(view, id);
    else if (button.classList.contains('delete')) deleteMessage(view, id);
  });
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
  setConfig((await (await fetch('/config.json')).json()) as PageConfig);
  const user = new URLSearchParams(location.search).get('user');
  if (user) await login(user);
  else $('login').hidden = false;
  document.body.dataset.ready = 'true';
}

void main();
