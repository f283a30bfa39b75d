import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Deadlines, type HasDeadline } from '../../src/session/deadlines.js';

describe('deadlines', () => {
  it('fires each item once, never before its deadline and at most one resolution after; clear and reset work', async () => {
    const fired: Array<{ name: string; at: number }> = [];
    const items = ['a', 'b', 'c'].map((name) => ({ name, deadline: null as number | null }) satisfies HasDeadline & { name: string });
    const d = new Deadlines<(typeof items)[number]>((item) => fired.push({ name: item.name, at: Date.now() }), 50);
    const t0 = Date.now();
    d.set(items[0]!, t0 + 60);
    d.set(items[1]!, t0 + 120);
    d.set(items[2]!, t0 + 60);
    d.clear(items[2]!);
    d.set(items[1]!, t0 + 30); // reset: earlier
    assert.equal(d.size, 2);
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual(fired.map((f) => f.name).sort(), ['a', 'b']);
    assert.ok(fired.find((f) => f.name === 'a')!.at >= t0 + 60, 'fired early');
    assert.ok(fired.find((f) => f.name === 'b')!.at >= t0 + 30, 'fired early');
    assert.equal(d.size, 0);
    for (const item of items) assert.equal(item.deadline, null);
    d.close();
  });

  it('ticks on bucket boundaries: a deadline set just before one fires about one resolution after it, not two', async () => {
    const fired: number[] = [];
    const item = { deadline: null as number | null };
    const d = new Deadlines<typeof item>(() => fired.push(Date.now()), 300);
    await new Promise((r) => setTimeout(r, 290)); // just before the first boundary
    const at = Date.now() + 20; // due in the second bucket (boundary at 600 ms)
    d.set(item, at);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(fired.length, 1);
    assert.ok(fired[0]! >= at, 'fired early');
    // Due at 600 ms, one tick at that boundary; an interval started at 290 ms ticks at 890 ms (580 ms late).
    assert.ok(fired[0]! - at < 450, `fired ${fired[0]! - at} ms after its deadline`);
    d.close();
  });

  it('an item set again from its own onDue into a bucket that is already due waits for the next tick (no spin)', async () => {
    const fixed = 1_000_000; // the clock stands on a bucket boundary
    const item = { deadline: null as number | null };
    let calls = 0;
    const d = new Deadlines<typeof item>(
      (it) => {
        if (++calls < 100) d.set(it, fixed);
      },
      50,
      () => fixed,
    );
    d.set(item, fixed);
    await new Promise((r) => setTimeout(r, 80));
    assert.ok(calls >= 1 && calls <= 2, `onDue ran ${calls} times`);
    d.close();
  });
});
