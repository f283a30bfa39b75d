import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RequestError } from '../../src/protocol/errors.js';
import { FairScheduler } from '../../src/upstream/scheduler.js';

/** A main-API call the test ends by hand; `started` tells whether the scheduler ran it. */
function call() {
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const c = { started: false, finish, run: () => ((c.started = true), done) };
  return c;
}

const settle = () => new Promise<void>((r) => setImmediate(r));

describe('the main-API pool is shared fairly', () => {
  it('unregistered connections together hold at most their share; a user\'s call takes a free place while they wait', async () => {
    const pool = new FairScheduler(4, 10_000, 2);
    const anon = Array.from({ length: 5 }, () => call());
    anon.forEach((c, i) => void pool.run(`#${i}`, true, c.run));
    await settle();
    assert.deepEqual(anon.map((c) => c.started), [true, true, false, false, false]);
    const save = call();
    const saved = pool.run('alice', false, save.run);
    await settle();
    assert.equal(save.started, true, 'the user waited although the pool had room');
    save.finish();
    await saved;
    // An anonymous call ending hands its place to the next anonymous one, in turn.
    anon[0]!.finish();
    await settle();
    assert.deepEqual(anon.map((c) => c.started), [true, true, true, false, false]);
  });

  it('round-robin across users: a backlog delays another user by one turn, not by all of it', async () => {
    const pool = new FairScheduler(1, 10_000);
    const order: string[] = [];
    const first = call();
    void pool.run('a', false, first.run);
    const backlog = Array.from({ length: 3 }, (_, i) => pool.run('a', false, async () => void order.push(`a${i}`)));
    const other = pool.run('b', false, async () => void order.push('b'));
    first.finish();
    await Promise.all([...backlog, other]);
    assert.deepEqual(order, ['a0', 'b', 'a1', 'a2']);
  });

  it('a call answered before its body ended keeps its place until the body is drained (hold)', async () => {
    const pool = new FairScheduler(1, 10_000);
    let drain!: () => void;
    const answered = await pool.run('a', false, async (hold) => {
      hold(new Promise<void>((r) => (drain = r)));
      return 'answer';
    });
    assert.equal(answered, 'answer', 'the answer is not held');
    const next = call();
    const done = pool.run('b', false, next.run);
    await settle();
    assert.equal(next.started, false, 'started while the first call\'s connection was still draining');
    drain();
    await settle();
    assert.equal(next.started, true);
    next.finish();
    await done;
  });

  it('a call that waited past the timeout for its place is refused upstream_unavailable, never started late', async () => {
    const pool = new FairScheduler(1, 50);
    const slow = call();
    void pool.run('a', false, slow.run);
    const late = call();
    const refused = pool.run('b', false, late.run);
    await sleep(80);
    const fresh = call();
    const answered = pool.run('c', false, fresh.run);
    slow.finish();
    await assert.rejects(refused, (err: unknown) => err instanceof RequestError && err.code === 'upstream_unavailable');
    assert.equal(late.started, false);
    await settle();
    assert.equal(fresh.started, true, 'the next call in turn takes the place');
    fresh.finish();
    await answered;
  });
});
