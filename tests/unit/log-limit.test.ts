import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LogLimiter } from '../../src/util/log-limit.js';

describe('LogLimiter: a flood of one kind of line costs one line per interval', () => {
  it('admits the first of a kind, leaves out the rest of the interval, then reports how many were left out', () => {
    const limit = new LogLimiter(1000);
    assert.deepEqual(limit.admit('a', 0), { suppressed: 0 });
    for (let t = 1; t < 1000; t += 10) assert.equal(limit.admit('a', t), null);
    assert.deepEqual(limit.admit('b', 5), { suppressed: 0 }, 'kinds are counted apart');
    assert.deepEqual(limit.admit('a', 1000), { suppressed: 100 });
    assert.equal(limit.admit('a', 1001), null);
  });

  it('tracks a bounded number of kinds', () => {
    const limit = new LogLimiter(1000, 2);
    limit.admit('a', 0);
    limit.admit('b', 0);
    limit.admit('c', 0); // evicts 'a'
    assert.deepEqual(limit.admit('a', 1), { suppressed: 0 });
    assert.equal(limit.admit('c', 1), null);
  });
});
