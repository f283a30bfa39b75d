import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { loadConfig } from '../../src/config/index.js';
import { createEngine } from '../../src/engine/index.js';
import * as scripts from '../../src/engine/redis/stream-scripts.js';
import type { Engine, EngineEvents } from '../../src/engine/types.js';
import { createLogger } from '../../src/log.js';
import { waitFor } from '../support/harness.js';
import { RedisServer } from '../support/redis.js';

/**
 * What the history scripts cost Redis, counted rather than timed: Redis's MONITOR shows every
 * command a Lua script runs with its arguments, so each XRANGE / XREVRANGE a RECOVER or CONTAINS
 * ran is read again afterwards (the history is unchanged meanwhile) to count the entries and
 * bytes it copied into Lua. A first version read the whole history for every register with
 * `since` and every 409 look-up: 100 frames of 60 KB, ~10 ms of Redis each, even when the answer
 * was too_far_behind.
 */

/** A register's replay budget at the default MAX_BUFFERED_BYTES (4 MiB): half of it. */
const BUDGET = Math.floor(4194304 / 2);
/** CONTAINS's byte cap (CONTAINS_MAX_BYTES; read loosely so that this file also runs against older scripts). */
const CAP = (scripts as { CONTAINS_MAX_BYTES?: number }).CONTAINS_MAX_BYTES ?? BUDGET;
/** Entries per read in the scripts. */
const PAGE = 16;
/** A large frame's payload: a 60 KB message. */
const LARGE = 60_000;
const HISTORY_TTL_MS = 300_000;

/** RECOVER as it was before paging: the reference for what RECOVER must answer. */
const WHOLE_READ_RECOVER = `
local head = redis.call('HMGET', KEYS[1], 'epoch', 'run')
local epoch = head[1]
if not epoch or head[2] ~= ARGV[8] or ARGV[8] == '' then return redis.error_reply('test: the stream must be current') end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local since = tonumber(ARGV[2])
if since < 0 then return {seq, epoch, 'position'} end
if epoch ~= ARGV[3] or since > seq then return {seq, epoch, 'epoch_changed'} end
if since == seq then return {seq, epoch, 'ok'} end
if tonumber(ARGV[6]) == 0 then return {seq, epoch, 'no_history'} end
local entries = redis.call('XRANGE', KEYS[2], '0-' .. (since + 1), '+')
if #entries ~= seq - since then return {seq, epoch, 'too_far_behind'} end
local out = {seq, epoch, 'ok'}
local oldest = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
for _, entry in ipairs(entries) do
  local fields = entry[2]
  if tonumber(fields[2]) < oldest then return {seq, epoch, 'too_far_behind'} end
  budget = budget - #fields[4]
  if budget < 0 then return {seq, epoch, 'too_far_behind'} end
  out[#out + 1] = fields[4]
end
return out
`;

const streamKey = (chat: string) => `ms:stream:{${chat}}`;
const historyKey = (chat: string) => `ms:history:{${chat}}`;
type Entry = [string, string[]];

const events: EngineEvents = {
  deliver: () => undefined,
  command: () => 0,
  presenceExpired: () => undefined,
  presenceRestored: () => undefined,
  readyChange: () => undefined,
  streamAt: () => undefined,
};

describe('Redis history scripts read pages, not the whole history', () => {
  let redis: RedisServer;
  let client: Redis;
  let monitored: Redis;
  const lines: Array<{ source: string; args: string[] }> = [];
  const engines: Engine[] = [];
  let e: Engine;
  let marks = 0;

  async function engine(historySize: number): Promise<Engine> {
    const config = loadConfig({ REDIS_HOST: redis.url, HISTORY_SIZE: String(historySize), HISTORY_TTL_MS: String(HISTORY_TTL_MS) });
    const created = await createEngine(config, createLogger('silent'));
    engines.push(created);
    await created.start(events);
    await waitFor(() => created.isReady(), 5000, 'engine ready');
    return created;
  }

  async function fill(chat: string, sizes: number[]): Promise<void> {
    for (let i = 0; i < sizes.length; i++) {
      await e.append(chat, Buffer.from(`{"type":"message","n":${i + 1},"data":"${'x'.repeat(sizes[i]!)}"}`), null, `m${i + 1}`);
    }
  }

  /** Rewrites a chat's history into `to` (hash copied, entries changed by `edit`; null drops one). */
  async function copy(from: string, to: string, edit: (entry: Entry) => Entry | null = (x) => x): Promise<void> {
    const hash = (await client.hgetall(streamKey(from))) as Record<string, string>;
    const entries = (await client.xrange(historyKey(from), '-', '+')) as Entry[];
    await client.del(streamKey(to), historyKey(to));
    await client.hset(streamKey(to), hash);
    for (const entry of entries) {
      const edited = edit(entry);
      if (edited !== null) await client.xadd(historyKey(to), edited[0], ...edited[1]);
    }
  }

  const seqOf = (entry: Entry) => Number(entry[0].slice(2));

  /** Runs `fn` and returns what it read of `chat`'s history inside scripts: reads, entries, bytes. */
  async function cost<T>(chat: string, fn: () => Promise<T>): Promise<{ result: T; reads: string[][]; entries: number; bytes: number }> {
    const mark = async () => {
      const name = `mark-${++marks}`;
      await client.echo(name);
      await waitFor(() => lines.some((l) => l.args[0]?.toLowerCase() === 'echo' && l.args[1] === name), 5000, 'MONITOR');
      return lines.findIndex((l) => l.args[0]?.toLowerCase() === 'echo' && l.args[1] === name);
    };
    const from = await mark();
    const result = await fn();
    const to = await mark();
    const reads = lines
      .slice(from + 1, to)
      .filter((l) => l.source === 'lua' && /^x(rev)?range$/i.test(l.args[0] ?? '') && l.args[1] === historyKey(chat))
      .map((l) => l.args);
    let entries = 0;
    let bytes = 0;
    for (const [command, ...args] of reads) {
      const got = (await client.call(command!, ...args)) as Entry[];
      entries += got.length;
      for (const [, fields] of got) bytes += fields[3]!.length;
    }
    return { result, reads, entries, bytes };
  }

  const epochOf = async (chat: string) => (await client.hget(streamKey(chat), 'epoch'))!;
  const framesAfter = async (chat: string, since: number) => ((await client.xrange(historyKey(chat), `0-${since + 1}`, '+')) as Entry[]).map(([, f]) => f[3]!);

  before(async () => {
    redis = await RedisServer.start();
    client = new Redis(redis.url);
    e = await engine(100);
    // big: 130 broadcasts of 60 KB, so history holds 31 … 130 (6 MB; the budget holds ~34).
    await fill('big', Array.from({ length: 130 }, () => LARGE));
    // small: 50 broadcasts of 10 B – 3 KB, all in history and all within the budget.
    await fill('small', Array.from({ length: 50 }, (_, i) => 10 + ((i * 977) % 3000)));
    // aged: 20 of 60 KB whose first five were appended long ago (past HISTORY_TTL_MS).
    await fill('aged-src', Array.from({ length: 20 }, () => LARGE));
    await copy('aged-src', 'aged', ([id, f]) => [id, Number(id.slice(2)) <= 5 ? ['t', '1000', ...f.slice(2)] : f]);
    // skewed: one entry in the middle stamped long ago (an instance whose clock is behind).
    await copy('small', 'skewed', ([id, f]) => [id, id === '0-30' ? ['t', '1000', ...f.slice(2)] : f]);
    // gappy: 20 … 24 missing (appended by an instance configured with HISTORY_SIZE=0).
    await copy('small', 'gappy', (entry) => (seqOf(entry) >= 20 && seqOf(entry) <= 24 ? null : entry));
    // gone: the history expired, the position stays.
    await copy('small', 'gone', () => null);
    monitored = await client.monitor();
    monitored.on('monitor', (_time: string, args: string[], source: string) => lines.push({ source, args: args.length > 8 ? args.slice(0, 8) : args }));
  });

  after(async () => {
    for (const x of engines) await x.close();
    monitored?.disconnect();
    client?.disconnect();
    await redis?.close();
  });

  it('a register the history cannot serve is decided on one entry at most: trimmed, or its first entry too old', async () => {
    for (const since of [0, 29]) {
      const { result, entries, reads } = await cost('big', () => e.recover('big', { seq: since, epoch: 'x' }, BUDGET));
      assert.equal(result.recovered, false);
      assert.equal(entries, 0, `epoch_changed reads nothing: ${JSON.stringify(reads)}`);
    }
    const epoch = await epochOf('big');
    for (const since of [0, 10, 29]) {
      const { result, entries, reads } = await cost('big', () => e.recover('big', { seq: since, epoch }, BUDGET));
      assert.deepEqual(result.recovered ? 'recovered' : result.reason, 'too_far_behind');
      assert.ok(entries <= 1, `since ${since} (trimmed): read ${entries} entries in ${JSON.stringify(reads)}`);
    }
    const aged = await epochOf('aged');
    for (const since of [0, 3]) {
      const { result, entries, reads } = await cost('aged', () => e.recover('aged', { seq: since, epoch: aged }, BUDGET));
      assert.deepEqual(result.recovered ? 'recovered' : result.reason, 'too_far_behind');
      assert.ok(entries <= 1, `since ${since} (too old): read ${entries} entries in ${JSON.stringify(reads)}`);
    }
  });

  it('a replay past the byte budget stops reading about where the budget ends, not at the end of the history', async () => {
    const epoch = await epochOf('big');
    const { result, entries, bytes } = await cost('big', () => e.recover('big', { seq: 30, epoch }, BUDGET));
    assert.deepEqual(result.recovered ? 'recovered' : result.reason, 'too_far_behind');
    assert.ok(bytes <= BUDGET + PAGE * (LARGE + 100), `read ${entries} entries, ${bytes} bytes, for a budget of ${BUDGET}`);
    // Over budget by a small one: one frame short of the replay.
    const small = await epochOf('small');
    const all = await framesAfter('small', 0);
    const total = all.reduce((n, f) => n + f.length, 0);
    const over = await cost('small', () => e.recover('small', { seq: 0, epoch: small }, total - 1));
    assert.equal(over.result.recovered, false);
  });

  it('a replay within the budget is exactly the entries after `since`, in order, and nothing else is read', async () => {
    const epoch = await epochOf('big');
    const { result, entries, bytes } = await cost('big', () => e.recover('big', { seq: 110, epoch }, BUDGET));
    assert.ok(result.recovered);
    const expected = await framesAfter('big', 110);
    assert.equal(expected.length, 20);
    assert.deepEqual(result.frames.map((f) => f.toString()), expected);
    assert.deepEqual(result.frames.map((f) => (JSON.parse(f.toString()) as { seq: number }).seq), Array.from({ length: 20 }, (_, i) => 111 + i));
    assert.equal(entries, 20);
    assert.equal(bytes, expected.reduce((n, f) => n + f.length, 0));

    const small = await epochOf('small');
    const all = await framesAfter('small', 0);
    const replay = await cost('small', () => e.recover('small', { seq: 0, epoch: small }, all.reduce((n, f) => n + f.length, 0)));
    assert.ok(replay.result.recovered, 'a replay of exactly the budget fits');
    assert.deepEqual(replay.result.frames.map((f) => f.toString()), all);
    assert.equal(replay.entries, 50);
  });

  it('answers what reading the whole history answered, for every position, budget and history', async () => {
    const now = Date.now();
    const cases: Array<{ chat: string; sinces: number[] }> = [
      { chat: 'big', sinces: [-1, 0, 29, 30, 31, 60, 96, 97, 100, 110, 129, 130, 131] },
      ...['small', 'aged', 'skewed', 'gappy', 'gone'].map((chat) => ({ chat, sinces: Array.from({ length: 53 }, (_, i) => i - 1) })),
    ];
    let compared = 0;
    const outcomes = new Set<string>();
    for (const { chat, sinces } of cases) {
      const epoch = await epochOf(chat);
      const run = (await client.hget(streamKey(chat), 'run'))!;
      for (const since of sinces) {
        for (const budget of [0, 2_000, 61_000, 1_000_000, BUDGET, 1e9]) {
          for (const oldest of [now - HISTORY_TTL_MS, 0]) {
            for (const [sinceEpoch, size] of [[epoch, 100], ...(budget === BUDGET && oldest === 0 ? [['other', 100], [epoch, 0]] : [])] as Array<[string, number]>) {
              const args = ['fresh', since, sinceEpoch, oldest, budget, size, 3_600_000, run];
              const before = await client.call('EVAL', WHOLE_READ_RECOVER, 2, streamKey(chat), historyKey(chat), ...args);
              const paged = await client.call('EVAL', scripts.RECOVER, 2, streamKey(chat), historyKey(chat), ...args);
              assert.deepEqual(paged, before, `${chat} since ${since} ${sinceEpoch} budget ${budget} oldest ${oldest} size ${size}`);
              outcomes.add(`${chat}:${(before as unknown[])[2]}`);
              compared++;
            }
          }
        }
      }
    }
    assert.ok(compared > 1000);
    // The cases reach every outcome and every history's own reason to refuse.
    for (const seen of ['big:ok', 'big:too_far_behind', 'big:position', 'big:epoch_changed', 'big:no_history', 'small:ok', 'aged:ok', 'aged:too_far_behind', 'skewed:ok', 'skewed:too_far_behind', 'gappy:ok', 'gappy:too_far_behind', 'gone:too_far_behind']) {
      assert.ok(outcomes.has(seen), `no case gave ${seen}`);
    }
  });

  it('a 409 look-up stops at the key: the newest entries, one page', async () => {
    for (const key of ['m130', 'm120']) {
      const { result, entries, reads } = await cost('big', () => e.contains('big', key));
      assert.equal(result, true, key);
      assert.ok(entries <= PAGE, `${key}: read ${entries} entries in ${JSON.stringify(reads)}`);
    }
    const { result, entries } = await cost('small', () => e.contains('small', 'm50'));
    assert.equal(result, true);
    assert.ok(entries <= PAGE);
  });

  it('a 409 look-up of a key it does not find stops at the byte cap; a broadcast further back counts as not in the history', async () => {
    for (const key of ['absent', 'm31']) {
      const { result, entries, bytes } = await cost('big', () => e.contains('big', key));
      assert.equal(result, false, `${key}: beyond ${CAP} bytes of history is not looked at`);
      assert.ok(bytes <= CAP + PAGE * (LARGE + 100), `${key}: read ${entries} entries, ${bytes} bytes, for a cap of ${CAP}`);
    }
    // Within the cap, the whole history is looked at.
    assert.equal(await e.contains('small', 'm1'), true);
    const { result, entries } = await cost('small', () => e.contains('small', 'absent'));
    assert.equal(result, false);
    assert.equal(entries, 50);
  });

  it('a 409 look-up reads at most HISTORY_SIZE entries', async () => {
    const ten = await engine(10);
    assert.equal(await ten.contains('small', 'm41'), true, 'the tenth newest');
    const { result, entries } = await cost('small', () => ten.contains('small', 'm40'));
    assert.equal(result, false, 'the eleventh newest is past HISTORY_SIZE');
    assert.ok(entries <= 10, `read ${entries} entries`);
  });
});
