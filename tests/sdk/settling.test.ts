import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ClientError, type OutboxEntry, type OutboxStorage } from '../../packages/client/src/index.js';
import { uniqueChat, useHarness, waitFor } from '../support/harness.js';
import { sdk, text } from './support.js';

/** A full, synchronous garbage collection (the runner is not started with --expose-gc). */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describe('SDK: how writes, pings, listeners and the storage settle when a chat or the client ends [memory]', () => {
  const h = useHarness('memory');

  it('a write failed for good while its storage put() is still running is not left in the storage (the next client would send it)', { timeout: 15_000 }, async () => {
    const chatId = uniqueChat();
    h.api.setMembers(chatId, [2]); // user 1 is refused: forbidden
    const db = new Map<string, OutboxEntry>();
    const ops: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const storage: OutboxStorage = {
      load: () => [...db.values()],
      put: async (e) => {
        await gate; // a slow IndexedDB
        db.set(e.key, e);
        ops.push('put');
      },
      remove: (k) => {
        db.delete(k);
        ops.push('remove');
      },
    };
    const a = await sdk(h, 1, { storage });
    const chat = a.client.chat(chatId);
    await assert.rejects(chat.send(text('never to be sent'), { id: `race-${chatId}` }), (e: ClientError) => e instanceof ClientError && e.code === 'forbidden');
    release();
    await waitFor(() => ops.includes('put') && ops.includes('remove'), 3000, 'the put and the remove done');
    assert.deepEqual([...db.values()].map((e) => e.data.id), [], 'the failed write is not in the storage');
    assert.deepEqual(ops, ['put', 'remove'], 'removed after it was stored');
  });

  it("a listener removed with the function chat.on() returned is let go at once, not kept until the chat is left", { timeout: 15_000 }, async () => {
    const a = await sdk(h, 1);
    const chat = a.client.chat(uniqueChat());
    await chat.ready();
    const removed: Array<WeakRef<object>> = [];
    const kept: Array<WeakRef<object>> = [];
    const offs: Array<() => void> = [];
    const subscribe = (into: Array<WeakRef<object>>) => {
      const held = { state: new Array(100).fill(into.length) }; // what a UI component's listener holds
      into.push(new WeakRef(held));
      return chat.on('message', () => void held.state.length);
    };
    for (let i = 0; i < 200; i++) subscribe(removed)(); // subscribed and unsubscribed at once (a component unmounting)
    for (let i = 0; i < 5; i++) offs.push(subscribe(kept));
    await new Promise((r) => setImmediate(r)); // WeakRefs made in this job hold their targets until it ends
    collectGarbage();
    assert.equal(kept.filter((r) => r.deref() !== undefined).length, 5, 'subscribed listeners are kept (the check can tell)');
    assert.equal(removed.filter((r) => r.deref() !== undefined).length, 0, 'no removed listener is kept');
    for (const off of offs) off();
  });
});
