import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { TestClient } from '../support/client.js';
import { ENGINE_MODES, uniqueChat, useHarness } from '../support/harness.js';

const messageIds = (c: TestClient) => c.all({ type: 'message' }).map((f) => (f.data as { id: string }).id);

for (const mode of ENGINE_MODES) {
  describe(`per-chat order [${mode}]`, () => {
    const h = useHarness(mode, { RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000', MAX_PENDING_WRITES: '1000' });

    it('3 concurrent senders, 5 receivers: every receiver sees the same sequence; each sender its own order', async () => {
      const chat = uniqueChat();
      const senders = await Promise.all([1, 2, 3].map((u) => h.member(u, chat)));
      const receivers = await Promise.all([11, 12, 13, 14, 15].map((u) => h.member(u, chat)));
      // Upstream latency varies per call, so saves of different connections overlap and finish out of order.
      h.api.addFault({ op: 'save', delayMs: 5, times: 20 });
      const perSender = 40;
      const sent = senders.map((_, s) => Array.from({ length: perSender }, (_, i) => `s${s}-${i}-${chat}`));
      senders.forEach((c, s) => sent[s]!.forEach((id) => c.send({ type: 'message', data: { id, ciphertext: 'x' } })));
      const total = senders.length * perSender;
      await Promise.all(receivers.map((r) => r.next(() => r.all({ type: 'message' }).length >= total, 15_000)));
      const first = messageIds(receivers[0]!);
      assert.equal(first.length, total);
      for (const r of receivers) assert.deepEqual(messageIds(r), first);
      for (let s = 0; s < senders.length; s++) {
        assert.deepEqual(first.filter((id) => id.startsWith(`s${s}-`)), sent[s], `sender ${s} order`);
        await senders[s]!.next(() => senders[s]!.all({ type: 'ack' }).length >= perSender, 10_000);
        assert.deepEqual(senders[s]!.all({ type: 'ack' }).map((f) => f.id), sent[s]);
      }
      for (const c of [...senders, ...receivers]) c.close();
    });
  });
}
