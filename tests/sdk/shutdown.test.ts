import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ENGINE_MODES, Harness, uniqueChat, waitFor } from '../support/harness.js';
import { RelayProxy } from './proxy.js';
import { sdk, text } from './support.js';

/**
 * A real drain: the gateway closes its clients 1001 and the SDK reconnects — through the
 * "load balancer" (the proxy), which now points at the instance that stays up.
 */
for (const mode of ENGINE_MODES) {
  describe(`SDK across a gateway shutdown [${mode}]`, () => {
    it('1001 from a draining instance: the client reconnects to the next one and carries on', async () => {
      const h = new Harness(mode);
      await h.start();
      const p0 = await h.gateway();
      const p1 = await h.gateway();
      const lb = await RelayProxy.start(p0.wsUrl);
      try {
        const chatId = uniqueChat();
        const fast = { url: lb.url, reconnect: { minDelayMs: 50, maxDelayMs: 200 } };
        const a = await sdk(h, 1, fast);
        // With Redis the receiver stays on the surviving instance; in memory it moves along too.
        const b = await sdk(h, 2, mode === 'redis' ? { url: p1.wsUrl } : fast);
        const chatA = a.client.chat(chatId);
        await chatA.ready();
        await b.client.chat(chatId).ready();
        await chatA.send(text('before'));
        await b.next('message');
        lb.target = p1.wsUrl;
        await p0.gateway.shutdown();
        const down = await a.next('state', (e) => e.state === 'disconnected');
        assert.equal(down.code, 1001);
        await waitFor(() => a.all('registered').length === 2 && b.all('registered').length === (mode === 'redis' ? 1 : 2), 5000, 're-registered on instance 1');
        const ack = await chatA.send(text('after'));
        await b.next('message', (e) => e.message.id === ack.id);
        a.client.close();
        b.client.close();
      } finally {
        await lb.close();
        await h.close();
      }
    });
  });
}
