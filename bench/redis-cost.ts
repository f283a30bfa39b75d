/**
 * npm run bench:redis-cost — what one message costs Redis: a bare PUBLISH (the hand-written
 * peers), the gateway's append script (number, store in history, publish: src/engine/redis/
 * stream-scripts.ts), the same without history, the same when the identity of Redis is not known
 * (a Cluster: the script reads INFO each call), and an empty script that only publishes.
 *
 * Each is called BENCH_CALLS times (default 20,000), one at a time, on a private redis-server
 * with two subscribers, and Redis's CPU time is read from /proc before and after:
 *   hot   — back to back: Redis's code and data stay in the CPU caches (a busy Redis);
 *   cold  — one call every 4 ms (an eighth of the calls) while a process that sweeps 64 MiB of
 *           memory runs on Redis's core: the benchmark's fan-out, where Redis shares its core
 *           with the servers and is woken for every message with cold caches.
 * CPU time comes in 10 ms ticks: ±0.5 µs per call hot, ±4 µs cold. Each run is appended to
 * bench/results/redis-cost.json.
 */
import { execSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { Redis as Client } from 'ioredis';
import { APPEND } from '../src/engine/redis/stream-scripts.js';
import { HAS_TASKSET, ROOT, Redis, SERVER_CORE, cpuSeconds, pinned, sleep } from './lib/procs.js';

const CALLS = Number(process.env.BENCH_CALLS ?? 20_000);
const frame = `{"type":"message","chat_id":1,"data":${JSON.stringify({ id: 'm'.repeat(24), sender_id: 7, envelopes: { d1: 'x'.repeat(300) } })}}`;

const redis = await Redis.start(SERVER_CORE);
const client = new Client(redis.url, { protocol: 2 });
const subscribers = [new Client(redis.url, { protocol: 2 }), new Client(redis.url, { protocol: 2 })];
let received = 0;
for (const s of subscribers) {
  await s.subscribe('ch');
  s.on('message', () => received++);
}
const sha = {
  append: (await client.script('LOAD', APPEND)) as string,
  empty: (await client.script('LOAD', `redis.call(ARGV[5], ARGV[4], ARGV[3] .. ARGV[2]) return {1, ARGV[1]}`)) as string,
};
// As the Redis engine calls it: the message id as key, the operation's token, not a retry, and
// the identity of Redis the engine read when it connected ('' in a Cluster: the script then reads INFO).
const info = await client.info();
const runId = `${/run_id:([0-9a-f]+)/.exec(info)?.[1]}:${/master_replid:([0-9a-f]+)/.exec(info)?.[1]}`;
let op = 0;
const append = (script: string, chat: string, history: number, run = runId) => () =>
  client.evalsha(script, 2, `ms:stream:{${chat}}`, `ms:history:{${chat}}`, 'E1', frame, '', 'ch', 'PUBLISH', Date.now(), history, 300_000, 86_400_000, 'mmmmmmmmmmmmmmmmmmmmmmmm', `~bench${(++op).toString(36)}`, '', 0, run);
const variants: Array<[string, () => Promise<unknown>]> = [
  ['PUBLISH (hand-written peers)', () => client.publish('ch', frame)],
  ['append script, HISTORY_SIZE=100 (the gateway)', append(sha.append, 'a', 100)],
  ['append script, HISTORY_SIZE=0', append(sha.append, 'b', 0)],
  ['append script, identity unknown (Cluster)', append(sha.append, 'd', 100, '')],
  ['script that only publishes', append(sha.empty, 'c', 100)],
];

/** Redis CPU µs per call over `n` calls, `gapMs` apart. */
async function perCall(call: () => Promise<unknown>, n: number, gapMs: number): Promise<number> {
  for (let i = 0; i < 200; i++) await call();
  await sleep(200);
  received = 0;
  const before = cpuSeconds(redis.proc.pid);
  for (let i = 0; i < n; i++) {
    await call();
    if (gapMs > 0) await sleep(gapMs);
  }
  await sleep(200);
  if (received !== 2 * n) throw new Error(`subscribers got ${received} of ${2 * n} messages`);
  return ((cpuSeconds(redis.proc.pid) - before) * 1e6) / n;
}

const rows: Array<[string, number, number]> = [];
for (const [name, call] of variants) rows.push([name, await perCall(call, CALLS, 0), 0]);
const sweep = `const a = new Float64Array(8 << 20); let i = 0; for (;;) { i = (i + 4099) % a.length; a[i] += 1; }`;
const neighbour = spawn(...pinned(SERVER_CORE, process.execPath, ['-e', sweep]), { stdio: 'ignore' });
try {
  for (const [i, [, call]] of variants.entries()) rows[i]![2] = await perCall(call, Math.ceil(CALLS / 8), 4);
} finally {
  neighbour.kill('SIGKILL');
}
console.log(`Redis CPU per call, µs (${CALLS} calls hot, ${Math.ceil(CALLS / 8)} cold; Redis ${HAS_TASKSET ? `on core ${SERVER_CORE}` : 'unpinned'})`);
console.log(`${'call'.padEnd(48)}${'hot'.padStart(8)}${'cold'.padStart(8)}`);
for (const [name, hot, cold] of rows) console.log(`${name.padEnd(48)}${hot.toFixed(1).padStart(8)}${cold.toFixed(1).padStart(8)}`);
const file = join(ROOT, 'bench/results/redis-cost.json');
const runs: unknown[] = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as unknown[]) : [];
runs.push({
  date: new Date().toISOString(),
  git_head: execSync('git rev-parse --short HEAD', { cwd: ROOT, encoding: 'utf8' }).trim(),
  load_average: loadavg().map((x) => x.toFixed(2)).join(' '),
  calls: { hot: CALLS, cold: Math.ceil(CALLS / 8) },
  us_per_call: rows.map(([call, hot, cold]) => ({ call, hot, cold })),
});
writeFileSync(file, `${JSON.stringify(runs, null, 2)}\n`);
console.log(`appended to ${file}`);
await client.quit();
for (const s of subscribers) await s.quit();
await redis.close();
