import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { textFrame } from '../../src/hub/outgoing.js';
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

  it('a long burst is flushed within the turn: no more than 64 KiB ever waits corked', async () => {
    const { ours, theirs, received } = await socketPair(server);
    const mark: WriteTurnMark = { writeTurn: -1 };
    const chunk = 'x'.repeat(1023);
    let most = 0;
    for (let i = 0; i < 200; i++) {
      writeInTurn(mark, ours, Buffer.from(`${chunk}${i % 10}`));
      most = Math.max(most, ours.writableLength);
    }
    assert.equal(ours.writableCorked, 1, 'still coalescing after a flush');
    assert.ok(most <= 64 * 1024 + 1024, `${most} bytes waited corked`);
    await turnEnd();
    const expected = Array.from({ length: 200 }, (_, i) => `${chunk}${i % 10}`).join('');
    while (received().length < expected.length) await once(theirs, 'data');
    assert.equal(received(), expected);
    ours.destroy();
    theirs.destroy();
  });

  it('a socket destroyed while corked loses what was corked, nothing else, and the next turn writes as usual', async () => {
    const doomed = await socketPair(server);
    const mark: WriteTurnMark = { writeTurn: -1 };
    writeInTurn(mark, doomed.ours, Buffer.from('1'));
    writeInTurn(mark, doomed.ours, Buffer.from('2'));
    doomed.ours.destroy();
    await once(doomed.theirs, 'close');
    assert.equal(doomed.received(), '1');

    const next = await socketPair(server);
    const other: WriteTurnMark = { writeTurn: -1 };
    writeInTurn(other, next.ours, Buffer.from('a'));
    writeInTurn(other, next.ours, Buffer.from('b'));
    await turnEnd();
    while (next.received() !== 'ab') await once(next.theirs, 'data');
    next.ours.destroy();
    next.theirs.destroy();
  });
});

describe('write turns beside ws: its own sends and its close', () => {
  it('pre-framed writes, a ws.send and a close in one turn reach the client in that order', async () => {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await once(wss, 'listening');
    const { port } = wss.address() as { port: number };
    const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
    const client = new WebSocket(`ws://127.0.0.1:${port}`);
    const got: string[] = [];
    client.on('message', (d: Buffer) => got.push(d.toString()));
    const closed = once(client, 'close') as Promise<[number, Buffer]>;
    const [peer] = await accepted;
    const socket = (peer as unknown as { _socket: Socket })._socket;
    const mark: WriteTurnMark = { writeTurn: -1 };
    writeInTurn(mark, socket, textFrame(Buffer.from('A')));
    writeInTurn(mark, socket, textFrame(Buffer.from('B')));
    assert.equal(socket.writableCorked, 1);
    peer.send('C'); // ws's own cork and uncork nest inside the turn's
    writeInTurn(mark, socket, textFrame(Buffer.from('D')));
    peer.close(4000, 'bye');
    const [code, reason] = await closed;
    assert.deepEqual(got, ['A', 'B', 'C', 'D']);
    assert.equal(code, 4000);
    assert.equal(reason.toString(), 'bye');
    wss.close();
  });
});
