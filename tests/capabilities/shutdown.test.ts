import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TestClient, sleep } from '../support/client.js';
import { ENGINE_MODES, Harness, uniqueChat } from '../support/harness.js';

/**
 * Graceful shutdown never loses an acked message, nor one the main API saved while the
 * gateway drained: on the draining instance and, with Redis, on the others.
 */
for (const mode of ENGINE_MODES) {
  describe(`graceful shutdown keeps "saved ⇒ delivered" [${mode}]`, () => {
    const isMessage = (id: string) => (f: { type: string; data?: unknown }) => f.type === 'message' && (f.data as { id: string }).id === id;

    /** A draining instance 0, and with Redis a second instance 1 that stays up. */
    async function setup(env: Record<string, string>) {
      const h = new Harness(mode, env);
      await h.start();
      await h.gateway();
      if (mode === 'redis') await h.gateway();
      const chat = uniqueChat();
      const sender = await h.member(1, chat, 0);
      const local = await h.member(2, chat, 0);
      const remote = mode === 'redis' ? await h.member(3, chat, 1) : null;
      return { h, chat, sender, local, remote };
    }

    it('SIGTERM while a save is in flight: acked, and delivered to receivers on the draining instance before their 1001', async () => {
      const { h, chat, sender, local, remote } = await setup({});
      try {
        h.api.addFault({ op: 'save', delayMs: 500 });
        const id = `drain-${chat}`;
        sender.send({ type: 'message', data: { id, ciphertext: 'x' } });
        await sleep(100);
        const drained = h.instances[0]!.gateway.shutdown();
        await sender.next({ type: 'ack', id }, 5000);
        await local.next(isMessage(id), 5000);
        if (remote) await remote.next(isMessage(id), 5000);
        assert.equal((await local.closed).code, 1001);
        const closedAt = local.frames.findIndex(isMessage(id));
        assert.ok(closedAt >= 0, 'the local receiver got the message before the close');
        await drained;
      } finally {
        await h.close();
      }
    });

    it('a save still running at SHUTDOWN_TIMEOUT_MS finishes during the drain and is broadcast (the engine closes last)', async () => {
      const { h, chat, sender, remote } = await setup({ SHUTDOWN_TIMEOUT_MS: '200', UPSTREAM_TIMEOUT_MS: '3000' });
      try {
        h.api.addFault({ op: 'save', delayMs: 1200 });
        const id = `late-${chat}`;
        sender.send({ type: 'message', data: { id, ciphertext: 'x' } });
        await sleep(100);
        const drained = h.instances[0]!.gateway.shutdown().then(() => Date.now());
        // The deadline passes first: the sender is closed without its ack.
        assert.equal((await sender.closed).code, 1001);
        assert.equal(sender.all({ type: 'ack' }).length, 0);
        const doneAt = await drained;
        const save = h.api.requests.find((r) => r.op === 'save' && (r.body as { id?: string }).id === id);
        assert.ok(save, 'the save reached the main API');
        assert.ok(h.api.messages.has(id), 'the main API saved it');
        assert.ok(doneAt >= save.at + 1100, 'the drain waited for the save at the main API');
        if (remote) {
          // Delivered to the instance that stays up; a resend through it is a duplicate, not a second broadcast.
          await remote.next(isMessage(id), 3000);
          const again = await TestClient.connect(h.instances[1]!.wsUrl);
          await again.register(await h.token(1), chat);
          const ack = await again.request({ type: 'message', data: { id, ciphertext: 'x' } }, { type: 'ack', id });
          assert.equal(ack.duplicate, true);
          await sleep(200);
          assert.equal(remote.all(isMessage(id)).length, 1);
          again.close();
        }
      } finally {
        await h.close();
      }
    });
  });
}

// The connection's own gate, the same on both engines: the memory engine only.
describe('while draining, new requests are refused retryable; ping and unregister are answered', () => {
  it('register, refresh, message, edit, delete and typing (a typing within its 1 s throttle too) get upstream_unavailable; ping gets pong; unregister is answered', async () => {
    const h = new Harness('memory', {});
    await h.start();
    try {
      await h.gateway();
      const chat = uniqueChat();
      const c = await h.member(1, chat, 0);
      c.send({ type: 'typing' }); // forwarded: the next typing within 1 s would be throttled
      h.api.addFault({ op: 'save', delayMs: 3000 }); // the drain lasts until its ack
      c.send({ type: 'message', data: { id: `inflight-${chat}`, ciphertext: 'x' } });
      await sleep(100);
      const drained = h.instances[0]!.gateway.shutdown();
      const token = await h.token(1);
      const refused = async (frame: Record<string, unknown>, op: string) => {
        const answer = await c.request(frame, (f) => f.type === 'error' && f.op === op, 2000);
        assert.equal(answer.code, 'upstream_unavailable', `${op}: ${JSON.stringify(answer)}`);
        assert.equal(answer.retryable, true);
      };
      await refused({ type: 'typing' }, 'typing');
      await refused({ type: 'message', data: { id: `late-${chat}`, ciphertext: 'x' } }, 'message');
      await refused({ type: 'edit_message', data: { id: `inflight-${chat}`, ciphertext: 'y' } }, 'edit_message');
      await refused({ type: 'delete_message', data: { id: `inflight-${chat}` } }, 'delete_message');
      await refused({ type: 'register', token, chat_id: uniqueChat() }, 'register');
      await refused({ type: 'refresh', token }, 'refresh');
      await c.request({ type: 'ping' }, { type: 'pong' }, 2000);
      await c.request({ type: 'unregister', chat_id: chat }, { type: 'unregistered', chat_id: chat }, 3000);
      assert.equal((await c.closed).code, 1001);
      await drained;
      assert.equal(h.api.requests.filter((r) => r.op === 'save').length, 1, 'only the save received before the signal');
    } finally {
      await h.close();
    }
  });
});
