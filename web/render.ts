/**
 * Draws the chat page from its state: the connection pill, the chat list, who is online and
 * typing, the open chat's messages (updated in place, renders gathered), the header and panels.
 */
import { MESSAGES_KEPT, messageTime, offlineText, type Entry } from './model.js';
import { $, el } from './dom.js';
import { DEMO_CHATS, chatName, session, userName, type ChatView, type Session } from './state.js';

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

export function renderState(): void {
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

// --- chats, who is online and typing, messages, panels ----------------------------------------

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
    const li = el('li', { className: current ? 'current' : '' }, button);
    li.dataset.chat = key;
    list.append(li);
  }
}

export function renderOnline(): void {
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

export function renderTyping(): void {
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
export function renderMessages(view: ChatView): void {
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

/** The chat whose messages the list shows (a click on one of them acts in it). */
export function shownChat(): ChatView | null {
  return shownView;
}

/** Empties the list (logged out). */
export function clearMessages(): void {
  $('messages').replaceChildren();
  shownView = null;
}
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
      const li = messageItem(entry, mine, behind, now);
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

/** One message's <li> (its buttons' clicks are handled on the list: web/app.ts). */
function messageItem(entry: Entry, mine: boolean, behind: boolean, now: Date): HTMLLIElement {
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
      actions.append(edit);
    }
    // A delete needs no key: own messages this device cannot read can go too.
    const del = el('button', { className: 'delete', text: 'delete' });
    del.type = 'button';
    del.setAttribute('aria-label', entry.text !== null ? `delete: ${entry.text.slice(0, 40)}` : 'delete this message');
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
export function renderChatNote(view: ChatView): void {
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

export function renderAll(): void {
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

/** Narrow screens show one column: the chat, or the chat list (`chats`), or the log (`log`). */
export function showPanel(panel: '' | 'chats' | 'log'): void {
  $('app').dataset.panel = panel;
  $('show-chats').setAttribute('aria-expanded', String(panel === 'chats'));
  $('show-log').setAttribute('aria-expanded', String(panel === 'log'));
}

/** Who is logged in, in the header (a long id ends in "…" there; the title has it whole). */
export function showMe(userId: string): void {
  const me = $('me');
  me.textContent = `${userName(userId)} (user ${userId})`;
  me.title = me.textContent;
}
