/**
 * What reaches a chat: messages, edits and deletes from the SDK, and the chat's stored history
 * from the main API; each decrypted with this device's key.
 */
import type { ReceivedEdit, ReceivedMessage, UserId } from '../packages/client/src/index.js';
import type { StoredMessage } from './api.js';
import { CannotDecrypt, open } from './crypto.js';
import { announce, errorText, log } from './dom.js';
import { MESSAGES_KEPT, checkedTime, mergeHistory, settlePendingDeletes, trimMessages, type Entry } from './model.js';
import { renderMessages, renderTyping } from './render.js';
import { session, userName, type ChatView } from './state.js';
import { abandonEdit } from './writes.js';

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

export function onMessage(view: ChatView, message: ReceivedMessage): void {
  if (view.deleted.has(message.id) || view.entries.has(message.id)) return; // already from history
  // Its delete came first (a delete is broadcast before its message when the author's other
  // device was faster): applied now if the deleter is its sender, else ignored.
  if (view.pendingDeletes.size > 0 && settleHeldDeletes(view, [message]).includes(message.id)) return;
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

/** `at` comes before what the entry shows (same stream, lower seq): an older version. */
export function olderThanShown(entry: Entry, at: { seq?: number | undefined; epoch?: string | undefined }): boolean {
  return at.seq !== undefined && entry.editedAt !== undefined && at.epoch === entry.editedAt.epoch && at.seq < entry.editedAt.seq;
}

export function onEdit(view: ChatView, edit: ReceivedEdit, at: { seq?: number | undefined; epoch?: string | undefined } = {}): void {
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
  // This page's own edit, saved after this one, is already shown: this one is older.
  if (olderThanShown(entry, at)) return;
  if (at.seq !== undefined && at.epoch !== undefined) entry.editedAt = { seq: at.seq, epoch: at.epoch };
  entry.version++;
  entry.edited = true;
  entry.changed = performance.now();
  void decryptInto(view, entry, edit);
}

/**
 * Whether a delete of `id` by `deletedBy` is applied (the SDK asks it too: `acceptDelete`, so
 * that a delete ignored here leaves no tombstone there, which would drop the author's later edits).
 * Only the author deletes a message: the main API checks it and the gateway sets `deleted_by`
 * from the verified token; the page checks it too. A delete without `deleted_by` is ignored. One
 * of a message not here is held (`pendingDeletes`) and applied only when the message comes — from
 * the history, or live — from that sender; until then it is not applied.
 */
export function acceptDelete(view: ChatView, id: string, deletedBy: UserId | undefined): boolean {
  const entry = view.entries.get(id);
  if (deletedBy === undefined || deletedBy === null) {
    log(`${view.name}: ignored a delete of ${entry ? `${userName(entry.senderId)}'s message` : 'a message'} that does not say who deleted it`);
    return false;
  }
  if (entry) {
    if (String(deletedBy) === entry.senderId) return true;
    logIgnoredDelete(view, entry.senderId, deletedBy);
    return false;
  }
  if (view.deleted.has(id)) return true; // gone here already (a replay)
  view.holdDelete(id, String(deletedBy));
  return false;
}

/** Settles the deletes held for `messages` (see `acceptDelete`): returns the ids deleted. */
function settleHeldDeletes(view: ChatView, messages: ReadonlyArray<{ id: string; sender_id: string | number }>): string[] {
  const { apply, ignore } = settlePendingDeletes(view.pendingDeletes, messages);
  for (const id of apply) view.remove(id);
  for (const { senderId, deletedBy } of ignore) logIgnoredDelete(view, senderId, deletedBy);
  return apply;
}

function logIgnoredDelete(view: ChatView, senderId: UserId, deletedBy: UserId): void {
  log(`${view.name}: ignored a delete of ${userName(senderId)}'s message by ${userName(deletedBy)}`);
}

export function onDelete(view: ChatView, id: string, deletedBy: UserId | undefined): void {
  if (!acceptDelete(view, id, deletedBy)) return;
  view.remove(id);
  view.lateEdits.delete(id);
  if (session?.editing?.view === view && session.editing.id === id) abandonEdit('the message was deleted');
  renderMessages(view);
}

/** Loads the chat's stored messages from the main API: on first open, and after a gap. */
export async function loadHistory(view: ChatView, afterGap: boolean): Promise<void> {
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
  // Deletes held for messages this page did not have: the stored copy says who sent each.
  settleHeldDeletes(view, stored);
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
