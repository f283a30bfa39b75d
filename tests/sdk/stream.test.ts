import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Stream, type Delivery } from '../../packages/client/src/stream.js';
import { backoffDelay } from '../../packages/client/src/index.js';

/** The SDK's exactly-once / ordering bookkeeping on its own, frame by frame (no gateway). */
const opts = { holdMs: 1000, maxHeld: 3, maxIds: 100, maxUnfilled: 5 };
const E = 'k3j2';
const msg = (seq: number, id: string, epoch = E) => ({ type: 'message', seq, epoch, chat_id: 1, data: { id, ciphertext: 'x', sender_id: 2 } });
const edit = (seq: number, id: string) => ({ type: 'edit_message', seq, epoch: E, chat_id: 1, data: { id, ciphertext: 'y', sender_id: 2 } });
const del = (seq: number, id: string) => ({ type: 'delete_message', seq, epoch: E, chat_id: 1, data: { id, deleted_by: 2 } });
const ev = (seq: number, name: string) => ({ type: 'event', seq, epoch: E, chat_id: 1, data: { name } });
/** "message:m1", "edit:m1", "delete:m1", "event:<data.name>", "gap:3-7:reason" */
const show = (ds: Delivery[]) =>
  ds.map((d) =>
    d.type === 'gap' ? `gap:${d.event.from.seq}-${d.event.to.seq}:${d.event.reason}`
    : d.type === 'event' ? `event:${String(d.event.data.name)}`
    : `${d.type}:${d.type === 'message' ? d.event.message.id : d.type === 'edit' ? d.event.edit.id : d.event.id}`,
  );

function feed(stream: Stream, frames: object[], now = 0): string[] {
  return frames.flatMap((f) => show(stream.onBroadcast(f as Record<string, unknown>, now)));
}

describe('SDK stream bookkeeping', () => {
  it('drops broadcasts at or below what was delivered, and messages whose id was delivered', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 4, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [msg(4, 'old'), msg(5, 'a'), msg(5, 'a'), msg(6, 'b'), msg(7, 'a')]), ['message:a', 'message:b']);
    assert.deepEqual(s.position, { seq: 7, epoch: E });
  });

  it("counts the client's own acked writes as seen, even when the ack comes after a later broadcast", () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    s.noteSending('mine');
    assert.deepEqual(feed(s, [msg(2, 'theirs')]), ['message:theirs']);
    assert.deepEqual(s.position, { seq: 0, epoch: E }, 'seq 1 (our own, unacked) is a hole for now');
    s.noteAck('message', 'mine', 1, E, []);
    assert.deepEqual(s.position, { seq: 2, epoch: E });
    // A replay after a reconnect includes our own message: not delivered to ourselves.
    assert.deepEqual(feed(s, [msg(1, 'mine'), msg(2, 'theirs')]), []);
  });

  it('a replay fills a hole; the position then resumes from the top', () => {
    const s = new Stream(1, { seq: 3, epoch: E }, opts);
    assert.deepEqual(feed(s, [msg(5, 'e')]), ['message:e']);
    assert.deepEqual(s.position, { seq: 3, epoch: E }, 'since asks from before the hole');
    assert.deepEqual(feed(s, [msg(4, 'd'), msg(5, 'e')]), ['message:d']);
    assert.deepEqual(s.onRegistered({ seq: 5, epoch: E }, true, undefined, true), []);
    assert.deepEqual(s.position, { seq: 5, epoch: E });
  });

  it('recovered:false reports a gap from the last position to the new one, then goes on from there', () => {
    const s = new Stream(1, { seq: 3, epoch: E }, opts);
    assert.deepEqual(show(s.onRegistered({ seq: 9, epoch: 'new' }, false, 'epoch_changed', true)), ['gap:3-9:epoch_changed']);
    assert.deepEqual(s.position, { seq: 9, epoch: 'new' });
    assert.deepEqual(feed(s, [msg(10, 'x', 'new')]), ['message:x']);
    // Nothing missed (already at the top): no gap even if the gateway could not replay.
    assert.deepEqual(s.onRegistered({ seq: 10, epoch: 'new' }, false, 'no_history', true), []);
    // A position ahead of the stream (it was reset under the same name) is not "caught up".
    assert.deepEqual(show(s.onRegistered({ seq: 4, epoch: 'new' }, false, 'epoch_changed', true)), ['gap:10-4:epoch_changed']);
  });

  it('a second registered in the same epoch never moves the position back (an own ack overtook it)', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 4, epoch: E }, undefined, undefined, false);
    s.noteSending('mine');
    s.noteAck('message', 'mine', 5, E, []);
    assert.deepEqual(s.position, { seq: 5, epoch: E });
    // The answer to a register sent twice says 4: seq 5 (our own) must stay seen.
    assert.deepEqual(s.onRegistered({ seq: 4, epoch: E }, true, undefined, true), []);
    assert.deepEqual(s.position, { seq: 5, epoch: E });
    assert.deepEqual(feed(s, [msg(6, 'theirs')]), ['message:theirs']);
    assert.deepEqual(s.position, { seq: 6, epoch: E });
    // Ahead in the same epoch: everything up to it was replayed; what was seen above stays.
    s.noteSending('later');
    s.noteAck('message', 'later', 9, E, []);
    assert.deepEqual(s.onRegistered({ seq: 8, epoch: E }, true, undefined, true), []);
    assert.deepEqual(s.position, { seq: 9, epoch: E });
  });

  it('a new epoch mid-connection is a gap; a hole that never fills is reported after maxUnfilled', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 2, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [msg(1, 'n1', 'other')]), ['gap:2-0:epoch_changed', 'message:n1']);
    const t = new Stream(1, null, opts);
    t.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    const out = feed(t, [2, 3, 4, 5, 6, 7].map((n) => msg(n, `m${n}`)));
    assert.deepEqual(out, ['message:m2', 'message:m3', 'message:m4', 'message:m5', 'message:m6', 'gap:0-1:missed', 'message:m7']);
    assert.deepEqual(t.position, { seq: 7, epoch: E });
  });

  it("a hole waits only while a write of the chat is unanswered; otherwise it is a gap at once", () => {
    let unanswered = 0;
    const s = new Stream(1, null, { ...opts, maxUnfilled: 1000, ownUnanswered: () => unanswered });
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    // Nothing of ours on the way: seq 1 was lost by the gateway, reported before message 2.
    assert.deepEqual(feed(s, [msg(2, 'm2')]), ['gap:0-1:missed', 'message:m2']);
    assert.deepEqual(s.position, { seq: 2, epoch: E });
    // One write unanswered: one hole may be ours (its ack brings seq 3).
    unanswered = 1;
    s.noteSending('mine');
    assert.deepEqual(feed(s, [msg(4, 'm4')]), ['message:m4']);
    assert.deepEqual(s.position, { seq: 2, epoch: E });
    // Two missing (3 and 5) with one write unanswered: the lower hole is reported now.
    assert.deepEqual(feed(s, [msg(6, 'm6')]), ['gap:2-3:missed', 'message:m6']);
    // The write is answered without a position (a duplicate): the hole left is no one's.
    unanswered = 0;
    const out: Delivery[] = [];
    s.noteAck('message', 'mine', undefined, undefined, out);
    assert.deepEqual(show(out), ['gap:4-5:missed']);
    assert.deepEqual(s.position, { seq: 6, epoch: E });
    // An ack that does bring the position fills the hole: no gap.
    unanswered = 1;
    s.noteSending('mine2');
    assert.deepEqual(feed(s, [msg(8, 'm8')]), ['message:m8']);
    unanswered = 0;
    const filled: Delivery[] = [];
    s.noteAck('message', 'mine2', 7, E, filled);
    assert.deepEqual(show(filled), []);
    assert.deepEqual(s.position, { seq: 8, epoch: E });
    // A failed write owns no hole either.
    unanswered = 1;
    assert.deepEqual(feed(s, [msg(10, 'm10')]), ['message:m10']);
    unanswered = 0;
    const failed: Delivery[] = [];
    s.noteFailed(failed);
    assert.deepEqual(show(failed), ['gap:8-9:missed']);
    // While registering (Infinity), holes wait for the registered answer.
    unanswered = Infinity;
    assert.deepEqual(feed(s, [msg(12, 'm12')]), ['message:m12']);
    assert.deepEqual(s.onRegistered({ seq: 12, epoch: E }, true, undefined, true), []);
    assert.deepEqual(s.position, { seq: 12, epoch: E });
  });

  it('a hole no write of ours can own gets holeGraceMs to be filled (a reordering), then expire reports it', () => {
    const s = new Stream(1, null, { ...opts, maxUnfilled: 1000, ownUnanswered: () => 0, holeGraceMs: 2000 });
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false, 0);
    assert.deepEqual(feed(s, [msg(2, 'm2')], 100), ['message:m2']);
    assert.equal(s.nextExpiry(), 2100);
    assert.deepEqual(feed(s, [msg(1, 'm1')], 500), ['message:m1'], 'filled within the grace: no gap');
    assert.equal(s.nextExpiry(), null);
    assert.deepEqual(s.position, { seq: 2, epoch: E });
    assert.deepEqual(feed(s, [msg(4, 'm4')], 1000), ['message:m4']);
    assert.deepEqual(show(s.expire(2999)), []);
    assert.deepEqual(show(s.expire(3000)), ['gap:2-3:missed']);
    assert.deepEqual(s.position, { seq: 4, epoch: E });
    assert.deepEqual(feed(s, [msg(3, 'm3')], 3100), [], 'what a gap covered is not delivered late');
  });

  it('holds edits for an unseen message and applies them after it; a delete is a tombstone', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [edit(1, 'a'), edit(2, 'a')]), []);
    assert.deepEqual(feed(s, [msg(3, 'a')]), ['message:a', 'edit:a', 'edit:a']);
    assert.deepEqual(feed(s, [edit(4, 'b'), del(5, 'b'), msg(6, 'b'), edit(7, 'b')]), ['delete:b']);
    assert.deepEqual(feed(s, [del(8, 'a'), del(9, 'a')]), ['delete:a'], 'a second delete of an id is dropped');
  });

  it('a delete the app refuses (acceptDelete) leaves no tombstone and is not handed over; its seq still counts', () => {
    const asked: unknown[][] = [];
    // The app accepts only deletes by user 2 (the author of every message here).
    const s = new Stream(1, null, { ...opts, acceptDelete: (chatId, id, by) => (asked.push([chatId, id, by]), by === 2) });
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    const delBy = (seq: number, id: string, by?: number) => ({ type: 'delete_message', seq, epoch: E, chat_id: 1, data: { id, ...(by === undefined ? {} : { deleted_by: by }) } });
    assert.deepEqual(feed(s, [msg(1, 'a'), delBy(2, 'a', 3)]), ['message:a'], 'refused: no delete event');
    assert.deepEqual(s.position, { seq: 2, epoch: E }, 'the refused delete\'s seq is delivered');
    assert.deepEqual(feed(s, [edit(3, 'a'), delBy(4, 'a')]), ['edit:a'], 'no tombstone: the author\'s later edit comes through; a delete without deleted_by is refused too');
    // Refused before its message arrived (its author's other device was faster): the message still comes.
    assert.deepEqual(feed(s, [delBy(5, 'b', 3), msg(6, 'b'), edit(7, 'b')]), ['message:b', 'edit:b']);
    // Accepted: as without the option (a tombstone; later edits and a resend of the message dropped).
    assert.deepEqual(feed(s, [delBy(8, 'a', 2), edit(9, 'a'), msg(10, 'a')]), ['delete:a']);
    assert.deepEqual(s.position, { seq: 10, epoch: E });
    assert.deepEqual(asked, [[1, 'a', 3], [1, 'a', undefined], [1, 'b', 3], [1, 'a', 2]]);
  });

  it('held edits are handed over after holdMs, or when more than maxHeld wait', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [edit(1, 'a')], 0), []);
    assert.equal(s.nextExpiry(), 1000);
    assert.deepEqual(show(s.expire(999)), []);
    assert.deepEqual(show(s.expire(1000)), ['edit:a']);
    assert.deepEqual(feed(s, [edit(2, 'b'), edit(3, 'c'), edit(4, 'd'), edit(5, 'e')], 2000), ['edit:b']);
  });

  it('an edit of a message the app comes to know (isKnown) hands the edits held for it over first, in order', () => {
    let loaded = false;
    const s = new Stream(1, null, { ...opts, isKnown: () => loaded });
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [edit(1, 'old')]), [], 'held: the app does not have the message yet');
    loaded = true; // the app's history arrived
    const out = s.onBroadcast(edit(2, 'old'), 0);
    assert.deepEqual(out.map((d) => (d.type === 'edit' ? d.event.seq : -1)), [1, 2], 'v1 then v2, never v2 then v1');
    assert.deepEqual(show(s.expire(5000)), [], 'nothing left to come out later');
    assert.deepEqual(s.position, { seq: 2, epoch: E });
  });

  it('frames without seq (a gateway that does not number broadcasts) are deduped by message id only', () => {
    const s = new Stream(1, null, opts);
    const plain = (id: string) => ({ type: 'message', chat_id: 1, data: { id, ciphertext: 'x' } });
    assert.deepEqual(feed(s, [plain('a'), plain('a'), plain('b')]), ['message:a', 'message:b']);
    assert.equal(s.position, null);
  });

  it('system events take their place in the stream: deduped by seq (they have no id), holes and replays like messages', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 0, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [msg(1, 'a'), ev(2, 'renamed'), ev(2, 'renamed'), msg(3, 'b')]), ['message:a', 'event:renamed', 'message:b']);
    assert.deepEqual(s.position, { seq: 3, epoch: E });
    // Two events with the same data are two events; an event above a hole is delivered, the hole filled by a replay.
    assert.deepEqual(feed(s, [ev(5, 'renamed')]), ['event:renamed']);
    assert.deepEqual(s.position, { seq: 3, epoch: E });
    assert.deepEqual(feed(s, [ev(4, 'renamed'), ev(5, 'renamed')]), ['event:renamed']);
    assert.deepEqual(s.position, { seq: 5, epoch: E });
    const [delivery] = s.onBroadcast(ev(6, 'member_added'), 0);
    assert.deepEqual(delivery, { type: 'event', event: { chatId: 1, data: { name: 'member_added' }, seq: 6, epoch: E } });
    assert.deepEqual(feed(s, [{ type: 'event', seq: 7, epoch: E, chat_id: 1, data: 'not an object' }]), [], 'malformed: ignored');
  });

  it('the position never passes an edit still held, nor deliveries kept back while muted; resuming goes on from where the stream stands', () => {
    const s = new Stream(1, null, opts);
    s.onRegistered({ seq: 2, epoch: E }, undefined, undefined, false);
    assert.deepEqual(feed(s, [edit(3, 'old'), msg(4, 'a')]), ['message:a']);
    assert.deepEqual(s.position, { seq: 2, epoch: E }, 'below the held edit (seq 3)');
    assert.deepEqual(s.resumeFrom, { seq: 4, epoch: E }, 'its own register resumes from the top: the held edit is in memory');
    assert.deepEqual(show(s.expire(1000)), ['edit:old']);
    assert.deepEqual(s.position, { seq: 4, epoch: E });
    // Muted (the chat is being left): kept back, the position stays below; unmuted: handed over in order.
    s.mute();
    assert.deepEqual(feed(s, [msg(5, 'b'), edit(6, 'b')]), []);
    assert.deepEqual(s.position, { seq: 4, epoch: E });
    assert.deepEqual(show(s.onRegistered({ seq: 9, epoch: E }, false, 'too_far_behind', true)), []);
    assert.deepEqual(s.position, { seq: 4, epoch: E });
    assert.deepEqual(show(s.unmute()), ['message:b', 'edit:b', 'gap:6-9:too_far_behind']);
    assert.deepEqual(s.position, { seq: 9, epoch: E });
  });

  it('recovered:false reports only what was not delivered: broadcasts delivered above a hole split the gap', () => {
    const s = new Stream(1, { seq: 1, epoch: E }, opts);
    assert.deepEqual(feed(s, [msg(5, 'e'), msg(6, 'f'), msg(8, 'h')]), ['message:e', 'message:f', 'message:h']);
    assert.deepEqual(show(s.onRegistered({ seq: 10, epoch: E }, false, 'too_far_behind', true)), ['gap:1-4:too_far_behind', 'gap:6-7:too_far_behind', 'gap:8-10:too_far_behind']);
    assert.deepEqual(s.position, { seq: 10, epoch: E });
  });

  it("an own ack in a new epoch that overtakes that epoch's earlier broadcasts counts once the stream gets there (no gap for it)", () => {
    const s = new Stream(1, null, { ...opts, ownUnanswered: () => 0, holeGraceMs: 2000 });
    s.onRegistered({ seq: 3, epoch: E }, undefined, undefined, false);
    s.noteSending('mine');
    const out: Delivery[] = [];
    s.noteAck('message', 'mine', 3, 'new', out, 0);
    assert.deepEqual(show(out), []);
    assert.deepEqual(feed(s, [msg(1, 'x', 'new'), msg(2, 'y', 'new'), msg(4, 'z', 'new')], 5000), ['gap:3-0:epoch_changed', 'message:x', 'message:y', 'message:z']);
    assert.deepEqual(s.position, { seq: 4, epoch: 'new' }, 'seq 3 (ours) is no hole');
  });

  it('own acks in an epoch the stream never reaches are kept up to maxUnfilled (the lowest go first)', () => {
    const s = new Stream(1, null, { ...opts, ownUnanswered: () => 0 });
    s.onRegistered({ seq: 3, epoch: E }, undefined, undefined, false);
    for (let seq = 1; seq <= 20; seq++) s.noteAck('message', `mine${seq}`, seq, 'new', [], 0);
    const ahead = (s as unknown as { ownAhead: { seqs: Set<number> } }).ownAhead.seqs;
    assert.deepEqual([...ahead], [16, 17, 18, 19, 20]);
    assert.deepEqual(feed(s, [msg(15, 'x', 'new')]), ['gap:3-14:epoch_changed', 'message:x']);
    assert.deepEqual(s.position, { seq: 20, epoch: 'new' });
  });

  it('backoff: full jitter within [0, min(max, min·2^n)]', () => {
    const b = { minDelayMs: 250, maxDelayMs: 30_000 };
    assert.equal(backoffDelay(0, b, () => 0.999), 249);
    assert.equal(backoffDelay(3, b, () => 0.5), 1000);
    assert.equal(backoffDelay(20, b, () => 0.999), 29_970);
    assert.equal(backoffDelay(5, b, () => 0), 0);
  });
});
