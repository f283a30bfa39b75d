/**
 * The chat page's pure pieces (web/model.ts, web/api.ts's id spelling) on Node: how a history
 * reload merges into what the page has, and the clock-dependent texts.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mergeHistory, messageTime, offlineText, type Entry, type Messages } from '../../web/model.js';
import { userIdValue } from '../../web/api.js';

function entry(id: string, text: string, changed: number, extra: Partial<Entry> = {}): Entry {
  return { id, senderId: '1', at: '2026-01-01T00:00:00Z', text, problem: null, edited: false, version: 0, sending: null, changed, ...extra };
}

function view(...entries: Entry[]): Messages {
  return { entries: new Map(entries.map((e) => [e.id, e])), order: entries.map((e) => e.id), deleted: new Set() };
}

interface Stored {
  id: string;
  text: string;
}
const fromStored = (m: Stored): Entry => entry(m.id, `stored:${m.text}`, 1_000_000);

describe('mergeHistory (a history reload)', () => {
  it('keeps an entry edited live after the reload started over the snapshot\'s older text', () => {
    // X arrived long ago (t=10); the reload starts at t=100; an edit of X arrives live at t=150,
    // after the snapshot was read, so the snapshot still has X's old text.
    const x = entry('x', 'X EDITED', 150, { edited: true, version: 1 });
    const v = view(x, entry('y', 'y', 20));
    const fresh = mergeHistory(v, [{ id: 'x', text: 'X original' }, { id: 'y', text: 'y' }], 100, true, fromStored);
    assert.equal(v.entries.get('x')!.text, 'X EDITED', 'the newer live edit is kept');
    assert.equal(v.entries.get('y')!.text, 'stored:y', 'an entry unchanged since before the reload takes the snapshot');
    assert.deepEqual(fresh.map((f) => f.entry.id), ['y']);
    assert.equal(v.entries.get('y')!.version, 1, 'a replaced entry bumps its version (a slow decryption of the old one is dropped)');
  });

  it('after a gap drops what the snapshot lacks, except newer entries and unacked own writes', () => {
    const v = view(entry('gone', 'deleted meanwhile', 10), entry('new', 'arrived during the reload', 120), entry('mine', 'unacked', 10, { sending: 'sending' }), entry('held', 'waiting for devices', 10, { sending: 'waiting' }));
    mergeHistory(v, [{ id: 'a', text: 'a' }], 100, true, fromStored);
    assert.deepEqual(v.order, ['a', 'new', 'mine', 'held']);
    assert.equal(v.entries.has('gone'), false);
  });

  it('on a first load keeps what arrived live, and never brings back a deleted message or a duplicate', () => {
    const v = view(entry('live', 'live', 10));
    v.deleted.add('d');
    mergeHistory(v, [{ id: 'a', text: 'a' }, { id: 'd', text: 'deleted' }, { id: 'a', text: 'again' }], 100, false, fromStored);
    assert.deepEqual(v.order, ['a', 'live']);
  });
});

describe('clock texts', () => {
  it('a message from today shows the time, an older one the date too', () => {
    const now = new Date(2026, 5, 15, 12, 0);
    assert.equal(messageTime(new Date(2026, 5, 15, 9, 5).toISOString(), now), '09:05');
    assert.equal(messageTime(new Date(2026, 5, 14, 23, 59).toISOString(), now), '14 Jun 23:59');
    assert.equal(messageTime(new Date(2025, 0, 3, 7, 0).toISOString(), now), '3 Jan 2025 07:00');
    assert.equal(messageTime('not a date', now), '');
  });

  it('the offline text counts down to the next attempt', () => {
    const at = 10_000;
    assert.equal(offlineText(1006, true, at + 4200, at), 'offline (1006) · retry in 5 s');
    assert.equal(offlineText(1006, true, at + 4200, at + 1000), 'offline (1006) · retry in 4 s');
    assert.equal(offlineText(undefined, false, at + 4200, at + 3500), 'offline (?, no network) · retry in 1 s');
    assert.equal(offlineText(1006, true, at + 4200, at + 5000), 'offline (1006) · retrying');
  });
});

describe('user ids', () => {
  it('a number only when a JS number holds it exactly', () => {
    assert.equal(userIdValue('42'), 42);
    assert.equal(userIdValue('9007199254740991'), 9007199254740991);
    assert.equal(userIdValue('9007199254740993'), '9007199254740993', 'past 2^53: Number() would name another user');
    assert.equal(userIdValue('12345678901234567891'), '12345678901234567891');
    assert.equal(userIdValue('007'), '007');
    assert.equal(userIdValue('alice'), 'alice');
  });
});
