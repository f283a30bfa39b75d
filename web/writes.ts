/**
 * This user's writes: sending, editing and deleting messages (each encrypted in order, then handed
 * to the SDK), what they show until acked or refused, and the composer's edit mode.
 */
import { ClientError, type Ack } from '../packages/client/src/index.js';
import { seal } from './crypto.js';
import { $, announce, errorText, log, notice } from './dom.js';
import { olderThanShown } from './incoming.js';
import { markAcked, type Entry } from './model.js';
import { Abandoned, MAX_FRAME_BYTES, recipients } from './recipients.js';
import { renderMessages } from './render.js';
import { session, type ChatView } from './state.js';

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
      // Saved now: a history reload whose request went out before keeps it (web/model.ts).
      markAcked(entry);
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

export function sendText(view: ChatView, text: string): void {
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

/**
 * This page's edit was saved at `ack`'s place in the stream. An edit of another device of the
 * user received meanwhile replaced the text shown; if it was saved before this one, this one is
 * the message's content now, for every other page and the main API: shown again. (Unless this
 * page has edited it again since: that edit's own ack decides.)
 */
function showOwnEdit(view: ChatView, entry: Entry, ack: Ack, text: string, own: number): void {
  if (ack.seq === undefined || ack.epoch === undefined || olderThanShown(entry, ack)) return;
  entry.editedAt = { seq: ack.seq, epoch: ack.epoch };
  // Saved now, also when the text shown is already this one: a history reload whose request
  // went out before may hold the older text, and must not put it back (settle marks it too).
  entry.changed = performance.now();
  if (entry.ownEdits !== own) return;
  // A received edit still decrypting is older: it must not land on top — also when its text has
  // not landed yet, and this one's is still shown (a CI run under load met that order).
  entry.version++;
  if (entry.text === text) return;
  entry.text = text;
  entry.problem = null;
}

/** Sends an edit; false when the message is not here any more (nothing is sent). */
export function editText(view: ChatView, id: string, text: string): boolean {
  const entry = view.entries.get(id);
  if (!entry) return false;
  entry.text = text;
  entry.edited = true;
  entry.version++;
  const own = (entry.ownEdits = (entry.ownEdits ?? 0) + 1);
  entry.changed = performance.now();
  entry.sending = 'sending';
  view.queued.add(entry);
  renderMessages(view);
  queueWrite(view, entry, async () => {
    try {
      // A fresh content key and fresh envelopes: whoever the chat has now can read the new text.
      const sealed = await seal(text, { chatId: view.chat.id, messageId: id, senderId: entry.senderId }, await recipients(view, entry));
      if (view.deleted.has(id)) throw new Abandoned();
      settle(view, entry, view.chat.edit(id, { ...sealed }).then((ack) => showOwnEdit(view, entry, ack, text, own)));
    } catch (err) {
      settle(view, entry, Promise.reject(err));
    }
  });
  return true;
}

export function deleteMessage(view: ChatView, id: string): void {
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

export function startEdit(view: ChatView, id: string): void {
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

export function stopEdit(): void {
  const draft = session?.editing?.draft ?? '';
  if (session) session.editing = null;
  $('editing').hidden = true;
  $<HTMLInputElement>('text').value = draft;
}

/**
 * Ends an edit that cannot go on (its message was deleted, here or elsewhere, or is gone after a
 * history reload, or another chat was opened) without losing what was typed: a changed text stays
 * in the composer (Send sends it as a new message); an unchanged one gives the draft back. Says
 * why, in the log, under the composer, and to a screen reader.
 */
export function abandonEdit(why: string): void {
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
