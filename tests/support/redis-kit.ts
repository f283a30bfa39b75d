import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { sleep, type Frame, type TestClient } from './client.js';
import { waitFor, type Harness } from './harness.js';

/** What the Redis fault tests share (tests/capabilities/redis-faults.test.ts, redis-outages.test.ts). */
const run = promisify(execFile);
export const cli = async (port: number, ...args: string[]) => (await run('redis-cli', ['-p', String(port), ...args])).stdout.trim();
export const online = (f: Record<string, unknown>) => [...(f.online as number[])].sort();

/** Instance `i`'s subscriber connection (the engine's internals): cut it, later bring it back. */
export const subscriber = (h: Harness, i: number) =>
  (h.instances[i]!.gateway.engine as unknown as { sub: { disconnect(reconnect: boolean): void; connect(): Promise<void>; subscribe(ch: string): Promise<unknown>; unsubscribe(ch: string): Promise<unknown> } }).sub;

/**
 * `receiver` (on instance 1) misses `missed` broadcasts `sender` makes while instance 1's
 * subscriber is down; expects its connection closed 1012 once it is back, and returns what a
 * resume from the last position it had is answered.
 */
export async function missTooMuch(h: Harness, sender: TestClient, receiver: TestClient, chat: number, missed: number): Promise<Frame> {
  const first = await sender.request({ type: 'message', data: { id: `m0-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
  await receiver.next({ type: 'message' });
  subscriber(h, 1).disconnect(false);
  await waitFor(() => !h.instances[1]!.gateway.engine.isReady(), 3000, 'the outage');
  for (let n = 1; n <= missed; n++) await sender.request({ type: 'message', data: { id: `m${n}-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
  await subscriber(h, 1).connect();
  assert.equal((await Promise.race([receiver.closed, sleep(8000).then(() => ({ code: -1 }))])).code, 1012);
  const again = await h.connect(1);
  const reg = await again.request({ type: 'register', token: await h.token(2), chat_id: chat, since: { seq: first.seq, epoch: first.epoch } }, { type: 'registered' }, 5000);
  again.close();
  return reg;
}
