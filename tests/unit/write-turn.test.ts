import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { writeInTurn, type WriteTurnMark } from '../../src/session/write-turn.js';

/** A real TCP connection on loopback: the gateway's end and the client's end. */
async function socketPair(server: Server): Promise<{ ours: Socket; theirs: Socket; received: () => string }> {
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const { port } = server.address() as { port: number };
  const theirs = connect(port, '127.0.0.1');
  const [ours] = await accepted;
  let text = '';
  theirs.on('data', (d: Buffer) => (text += d.toString()));
  return { ours, theirs, received: () => text };
}

const turnEnd = () => new Promise<void>((r) => setImmediate(r));

describe('write turns: one socket’s writes within one event-loop turn leave together', () => {
  const server = createServer();
  before(async () => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  });
  after(() => server.close());

  it('the first write of a turn goes out at once; later ones are corked until the turn ends, then flushed in order', async () => {
    const { ours, theirs, received } = await socketPair(server);
    const mark: WriteTurnMark = { writeTurn: -1 };
    writeInTurn(mark, ours, Buffer.from('a'));
    assert.equal(ours.writableCorked, 0, 'a lone write is not held back');
    writeInTurn(mark, ours, Buffer.from('b'));
    writeInTurn(mark, ours, Buffer.from('c'));
    assert.equal(ours.writableCorked, 1, 'the second write of the turn corks the socket, once');
    assert.equal(ours.writableLength, 2, 'corked bytes count as buffered (the slow-consumer limit sees them)');
    await turnEnd();
    assert.equal(ours.writableCorked, 0);
    while (received() !== 'abc') await once(theirs, 'data');

    // The next turn starts afresh: its first write is immediate again.
    writeInTurn(mark, ours, Buffer.from('d'));
    assert.equal(ours.writableCorked, 0);
    while (received() !== 'abcd') await once(theirs, 'data');
    ours.destroy();
    theirs.destroy();
  });

  it('turns are per socket: a burst on one socket does not hold back another’s first write', async () => {
    const one = await socketPair(server);
    const two = await socketPair(server);
    const m1: WriteTurnMark = { writeTurn: -1 };
    const m2: WriteTurnMark = { writeTurn: -1 };
    writeInTurn(m1, one.ours, Buffer.from('x'));
    writeInTurn(m1, one.ours, Buffer.from('y'));
    writeInTurn(m2, two.ours, Buffer.from('z'));
    assert.equal(one.ours.writableCorked, 1);
    assert.equal(two.ours.writableCorked, 0);
    await turnEnd();
    while (one.received() !== 'xy') await once(one.theirs, 'data');
    while (two.received() !== 'z') await once(two.theirs, 'data');
    for (const s of [one.ours, one.theirs, two.ours, two.theirs]) s.destroy();
  });

  it('a socket destroyed while corked is dropped quietly at the end of the turn', async () => {
    const { ours, theirs } = await socketPair(server);
    const mark: WriteTurnMark = { writeTurn: -1 };
    writeInTurn(mark, ours, Buffer.from('1'));
    writeInTurn(mark, ours, Buffer.from('2'));
    ours.destroy();
    await turnEnd();
    assert.equal(ours.destroyed, true);
    theirs.destroy();
  });
});
