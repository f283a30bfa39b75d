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
});
