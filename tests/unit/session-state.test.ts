import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Chats } from '../../src/session/chats.js';
import { RateLimit } from '../../src/session/rate-limit.js';
import type { Registration } from '../../src/session/registration.js';

describe('rate limit', () => {
  it('lets a full bucket through `burst` at once, then refills at `ratePerSec`', () => {
    let now = 1000;
    const limit = new RateLimit(10, 3, () => now);
    let bucket: number | null = RateLimit.FULL;
    const take = () => {
      const next = limit.take(bucket!);
      if (next !== null) bucket = next;
      return next !== null;
    };
    assert.deepEqual([take(), take(), take(), take()], [true, true, true, false]);
    now += 99;
    assert.equal(take(), false);
    now += 1; // one token per 100 ms
    assert.deepEqual([take(), take()], [true, false]);
    now += 10_000; // never more than `burst` saved up
    assert.deepEqual([take(), take(), take(), take()], [true, true, true, false]);
  });
});

describe('chats of a connection', () => {
  const reg = (chat: string) => ({ chat }) as Registration;

  it('keeps one registration as itself, several in a Map, and counts pending registers once', () => {
    const chats = new Chats();
    const [a, b, a2] = [reg('a'), reg('b'), reg('a')];
    chats.add(a);
    assert.equal(chats.get('a'), a);
    assert.equal(chats.size, 1);
    chats.add(a2);
    assert.equal(chats.get('a'), a2);
    chats.add(b);
    assert.deepEqual([...chats.keys()], ['a', 'b']);
    assert.equal(chats.delete('a'), true);
    assert.deepEqual([...chats.values()], [b]);
    assert.equal(chats.has('a'), false);
    chats.startRegistering('b');
    chats.startRegistering('c');
    assert.equal(chats.held, 2);
    assert.equal(chats.isRegistering('c'), true);
    chats.doneRegistering('c');
    chats.doneRegistering('b');
    assert.equal(chats.isRegistering('c'), false);
    chats.clear();
    assert.equal(chats.size, 0);
  });
});
