/**
 * The chat page's pure pieces (web/model.ts, web/api.ts's id spelling) on Node: how a history
 * reload merges into what the page has, which devices a message is encrypted to, and the
 * clock-dependent texts.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CLOCK_SLACK_MS, DEVICES_PER_USER, boundDevices, checkedTime, markAcked, mergeHistory, settlePendingDeletes, trimMessages, messageTime, offlineText, type Entry, type Messages } from '../../web/model.js';
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

  it("an own write acked before the snapshot replaced it keeps its ✓, and the position of the edit shown", () => {
    const v = view(entry('mine', 'acked', 10, { sending: 'sent', editedAt: { seq: 7, epoch: 'e' } }));
    mergeHistory(v, [{ id: 'mine', text: 'acked' }], 100, false, fromStored);
    const replaced = v.entries.get('mine')!;
    assert.equal(replaced.text, 'stored:acked', 'the stored copy');
    assert.equal(replaced.sending, 'sent', 'still shown as saved (it lost its ✓)');
    assert.deepEqual(replaced.editedAt, { seq: 7, epoch: 'e' });
  });

  it('after a gap keeps own writes acked after the reload\'s request went out (the snapshot may predate their save)', () => {
    // Typed offline at t=10 (a new message and an edit), resent by the outbox on reconnect; the
    // reload's request goes out at t=100, the main API reads the chat before saving them, and
    // they are acked at t=150, before the snapshot lands.
    const v = view(entry('old', 'old', 5), entry('ed', 'EDITED', 10, { edited: true, sending: 'sending' }), entry('new', 'typed offline', 10, { sending: 'sending' }));
    markAcked(v.entries.get('ed')!, 150);
    markAcked(v.entries.get('new')!, 150);
    mergeHistory(v, [{ id: 'old', text: 'old' }, { id: 'ed', text: 'ORIGINAL' }], 100, true, fromStored);
    assert.deepEqual(v.order, ['old', 'ed', 'new'], 'the acked own message stays');
    assert.equal(v.entries.get('ed')!.text, 'EDITED', 'the acked own edit is not reverted');
    assert.equal(v.entries.get('ed')!.sending, 'sent');
    // One acked before the request went out is in the snapshot: the stored copy replaces it.
    const w = view(entry('early', 'early', 10, { sending: 'sending' }));
    markAcked(w.entries.get('early')!, 50);
    mergeHistory(w, [{ id: 'early', text: 'early' }], 100, true, fromStored);
    assert.equal(w.entries.get('early')!.text, 'stored:early');
  });

  it('on a first load keeps what arrived live, and never brings back a deleted message or a duplicate', () => {
    const v = view(entry('live', 'live', 10));
    v.deleted.add('d');
    mergeHistory(v, [{ id: 'a', text: 'a' }, { id: 'd', text: 'deleted' }, { id: 'a', text: 'again' }], 100, false, fromStored);
    assert.deepEqual(v.order, ['a', 'live']);
  });
});

describe('settlePendingDeletes (deletes that came before their message)', () => {
  it("applies a delete by the stored message's sender, ignores one by anyone else, keeps one whose message the snapshot lacks", () => {
    const pending = new Map([['a', '1'], ['b', '9'], ['c', '1'], ['n', '2']]);
    const stored = [{ id: 'a', sender_id: 1 }, { id: 'b', sender_id: 1 }, { id: 'n', sender_id: '2' }, { id: 'x', sender_id: 3 }];
    const { apply, ignore } = settlePendingDeletes(pending, stored);
    assert.deepEqual(apply, ['a', 'n'], 'by its author (ids compared as the gateway spells them or as strings)');
    assert.deepEqual(ignore, [{ id: 'b', senderId: '1', deletedBy: '9' }], 'a non-author delete is not applied');
    assert.deepEqual([...pending], [['c', '1']], 'not in the snapshot: still held (it may come live)');
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
    // The state (spoken when it changes) and the ticking countdown (never spoken) apart.
    assert.deepEqual(offlineText(1006, true, at + 4200, at), { state: 'offline (1006)', retry: 'retry in 5 s' });
    assert.deepEqual(offlineText(1006, true, at + 4200, at + 1000), { state: 'offline (1006)', retry: 'retry in 4 s' });
    assert.deepEqual(offlineText(undefined, false, at + 4200, at + 3500), { state: 'offline (?, no network)', retry: 'retry in 1 s' });
    assert.deepEqual(offlineText(1006, true, at + 4200, at + 5000), { state: 'offline (1006)', retry: 'retrying' });
  });
});

describe('checkedTime (a sender\'s created_at)', () => {
  const ref = Date.parse('2026-06-01T12:00:00Z');
  it('believes a claim within a few minutes of when the page got it', () => {
    assert.deepEqual(checkedTime('2026-06-01T11:58:30Z', ref), { at: '2026-06-01T11:58:30Z' });
    assert.deepEqual(checkedTime('2026-06-01T12:04:00Z', ref), { at: '2026-06-01T12:04:00Z' });
  });
  it('shows the reference time for year 9999, year 0, or anything unparseable, and keeps the claim aside', () => {
    for (const claim of ['9999-12-31T23:59:59Z', '0000-01-01T00:00:00Z', 'yesterday', new Date(ref + CLOCK_SLACK_MS + 1000).toISOString(), new Date(ref - CLOCK_SLACK_MS - 1000).toISOString()]) {
      assert.deepEqual(checkedTime(claim, ref), { at: '2026-06-01T12:00:00.000Z', claimed: claim }, claim);
    }
    assert.deepEqual(checkedTime(undefined, ref), { at: '2026-06-01T12:00:00.000Z' }, 'no claim: the reference');
  });
  it('a replay after an hour offline may be an hour old, never in the future', () => {
    const hour = 3_600_000;
    assert.deepEqual(checkedTime('2026-06-01T11:10:00Z', ref, hour), { at: '2026-06-01T11:10:00Z' });
    assert.equal(checkedTime('2026-06-01T10:50:00Z', ref, hour).claimed, '2026-06-01T10:50:00Z');
    assert.equal(checkedTime('2026-06-01T12:30:00Z', ref, hour).claimed, '2026-06-01T12:30:00Z');
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

describe('trimMessages (what a chat keeps)', () => {
  it('drops the oldest past the bound and says how many; a dropped id is not taken for deleted', () => {
    const v = view(entry('a', 'a', 1), entry('b', 'b', 2), entry('c', 'c', 3));
    assert.equal(trimMessages(v, 5), 0);
    assert.equal(trimMessages(v, 2), 1);
    assert.deepEqual([v.order, [...v.entries.keys()], v.deleted.size], [['b', 'c'], ['b', 'c'], 0]);
  });
});

describe('boundDevices (what a message is encrypted to)', () => {
  const device = (id: string, user: number | string, key = `key-${id}`) => ({ device_id: id, user_id: user, public_key: key });

  it('a flood of one user\'s devices with one key is one device; at most DEVICES_PER_USER per user, the last listed', () => {
    const flood = Array.from({ length: 420 }, (_, i) => device(`m${i}`, 66, 'same key'));
    const many = Array.from({ length: 15 }, (_, i) => device(`c${i}`, 3));
    const kept = boundDevices([device('a1', 1), ...flood, ...many, device('b1', '2')]);
    assert.deepEqual(kept.filter((d) => d.user_id === 66).map((d) => d.device_id), ['m419']);
    assert.deepEqual(kept.filter((d) => d.user_id === 3).map((d) => d.device_id), Array.from({ length: DEVICES_PER_USER }, (_, i) => `c${i + 5}`));
    assert.deepEqual(kept.map((d) => d.device_id).filter((id) => /^[ab]/.test(id)), ['a1', 'b1']);
  });

  it('a key listed under two users is kept for both: a copied key must not take its owner\'s envelope away', () => {
    const kept = boundDevices([device('alice-1', 1, 'alice key'), device('copy', 66, 'alice key')]);
    assert.deepEqual(kept.map((d) => d.device_id), ['alice-1', 'copy']);
  });
});
