/**
 * A browser app: the global WebSocket, a token from the app's backend, and an outbox kept in
 * localStorage so a message typed just before a reload is still sent afterwards.
 */
import { createClient, type OutboxEntry, type OutboxStorage } from '@message-service/client';

/** One localStorage key per unacked write. IndexedDB is the better choice for large outboxes. */
const localOutbox: OutboxStorage = {
  load: () =>
    Object.keys(localStorage)
      .filter((k) => k.startsWith('outbox:'))
      .map((k) => JSON.parse(localStorage.getItem(k)!) as OutboxEntry),
  put: (entry) => localStorage.setItem(`outbox:${entry.key}`, JSON.stringify(entry)),
  remove: (key) => localStorage.removeItem(`outbox:${key}`),
};

const client = createClient({
  url: 'wss://chat.example.com/ws',
  token: async () => (await (await fetch('/api/chat-token', { credentials: 'include' })).json()).token as string,
  storage: localOutbox,
});

const chatId = 42;
const positionKey = `position:${chatId}`;
const stored = localStorage.getItem(positionKey);
const chat = client.chat(chatId, stored ? { since: JSON.parse(stored) } : {});

chat.on('message', ({ message }) => {
  render(message.id, message.ciphertext);
  localStorage.setItem(positionKey, JSON.stringify(chat.position));
});
// System events from the backend (chat renamed, member added…) are in the chat's stream too.
chat.on('event', ({ data }) => {
  renderSystemEvent(data);
  localStorage.setItem(positionKey, JSON.stringify(chat.position));
});
chat.on('gap', async ({ from }) => {
  // The gateway could not replay what was missed: load it from the main API's history.
  await loadHistory(chatId, from);
});
client.on('state', ({ state }) => document.body.classList.toggle('offline', state !== 'connected'));

document.querySelector('form')?.addEventListener('submit', async (event) => {
  event.preventDefault();
  const ciphertext = await encrypt((document.querySelector('input') as HTMLInputElement).value);
  await chat.send({ ciphertext }); // resolves once saved, even across a reconnect
});

declare function render(id: string, ciphertext: string): void;
declare function renderSystemEvent(data: Record<string, unknown>): void;
declare function encrypt(text: string): Promise<string>;
declare function loadHistory(chatId: number, after: unknown): Promise<void>;
