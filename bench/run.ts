/**
 * npm run bench — what one delivery and one connection cost the gateway.
 *
 * The gateway runs as its own process (so its CPU and memory are its own, read from its
 * /metrics); the dev main API and the WebSocket clients run in this process. For each engine:
 *   - fan-out: one chat, R receivers, M messages from one sender → R×M deliveries;
 *     reports deliveries/s and gateway CPU µs per delivery;
 *   - connections: C connections each registered to a chat; reports gateway RSS and heap per
 *     connection.
 * Prints a table and writes bench/results/latest.json. Numbers from a shared 2-core machine
 * are indicative: compare runs on the same machine.
 */
import { writeFileSync } from 'node:fs';
import { startDevApi } from '../dev-api/app.js';
import { TestClient } from '../tests/support/client.js';
import { GatewayProcess } from '../tests/support/process.js';
import { RedisServer } from '../tests/support/redis.js';

const RECEIVERS = Number(process.env.BENCH_RECEIVERS ?? 500);
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 200);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 2000);
const PAYLOAD = 'x'.repeat(Number(process.env.BENCH_PAYLOAD ?? 256));

async function scrape(gw: GatewayProcess): Promise<Record<string, number>> {
  const text = await (await fetch(`${gw.httpUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(message_service_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
  }
  return out;
}

async function connectMany(gw: GatewayProcess, n: number, token: (i: number) => Promise<string>, chat: (i: number) => number): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (let i = 0; i < n; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, async (_, k) => {
        const c = await TestClient.connect(gw.wsUrl);
        await c.register(await token(i + k), chat(i + k), 20_000);
        return c;
      }),
    );
    clients.push(...batch);
  }
  return clients;
}

/** Counts raw `message` frames without parsing them (the bench client must not be the bottleneck). */
function untilMessages(client: TestClient, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let count = client.frames.filter((f) => f.type === 'message').length;
    if (count >= n) return resolve();
    const timer = setTimeout(() => reject(new Error(`receiver got ${count}/${n} messages; open=${client.isOpen}`)), 120_000);
    client.ws.on('message', (data: Buffer) => {
      if (data.includes('"type":"message"') && ++count >= n) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function benchEngine(engine: 'memory' | 'redis') {
  const api = await startDevApi({ port: 0 });
  const redis = engine === 'redis' ? await RedisServer.start() : null;
  const gw = GatewayProcess.spawn({
    APP_PORT: '0',
    AUTH_HOST: api.url,
    LOG_LEVEL: 'info',
    RATE_LIMIT_PER_SEC: '100000',
    RATE_LIMIT_BURST: '100000',
    MAX_CHATS_PER_CONNECTION: '100',
    ...(redis ? { REDIS_HOST: redis.url } : {}),
  });
  try {
    await gw.listening();
    for (let i = 0; i < 100 && (await fetch(`${gw.httpUrl}/readyz`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 50));
    const tokens = new Map<number, string>();
    const token = async (user: number) => tokens.get(user) ?? tokens.set(user, await api.mintToken(user)).get(user)!;

    // Fan-out.
    const chat = 1;
    const receivers = await connectMany(gw, RECEIVERS, (i) => token(1000 + i), () => chat);
    const sender = await TestClient.connect(gw.wsUrl);
    await sender.register(await token(1), chat);
    const before = await scrape(gw);
    const t0 = performance.now();
    for (let i = 0; i < MESSAGES; i++) sender.send({ type: 'message', data: { id: `b-${i}`, ciphertext: PAYLOAD } });
    await Promise.all(receivers.map((r) => untilMessages(r, MESSAGES)));
    const seconds = (performance.now() - t0) / 1000;
    const after = await scrape(gw);
    // Counted by the receivers themselves: the gateway's deliveries metric also counts presence.
    const deliveries = RECEIVERS * MESSAGES;
    const cpu = after.message_service_process_cpu_seconds_total! - before.message_service_process_cpu_seconds_total!;
    for (const c of [...receivers, sender]) c.close();
    await new Promise((r) => setTimeout(r, 500));

    // Memory per connection.
    if (global.gc) global.gc();
    const idle = await scrape(gw);
    const conns = await connectMany(gw, CONNECTIONS, (i) => token(5000 + i), (i) => 100 + (i % 50));
    await new Promise((r) => setTimeout(r, 1000));
    const loaded = await scrape(gw);
    const rssPerConn = (loaded.message_service_process_resident_memory_bytes! - idle.message_service_process_resident_memory_bytes!) / CONNECTIONS;
    const heapPerConn = (loaded.message_service_nodejs_heap_size_used_bytes! - idle.message_service_nodejs_heap_size_used_bytes!) / CONNECTIONS;
    for (const c of conns) c.close();

    return {
      engine,
      receivers: RECEIVERS,
      messages: MESSAGES,
      deliveries,
      deliveries_per_sec: Math.round(deliveries / seconds),
      cpu_us_per_delivery: Number(((cpu * 1e6) / deliveries).toFixed(2)),
      connections: CONNECTIONS,
      rss_kib_per_connection: Number((rssPerConn / 1024).toFixed(1)),
      heap_kib_per_connection: Number((heapPerConn / 1024).toFixed(1)),
    };
  } finally {
    await gw.stop();
    await api.close();
    await redis?.close();
  }
}

const results = [];
for (const engine of ['memory', 'redis'] as const) results.push(await benchEngine(engine));
console.table(results);
writeFileSync(
  new URL('./results/latest.json', import.meta.url),
  `${JSON.stringify({ date: new Date().toISOString(), node: process.version, payload_bytes: PAYLOAD.length, results }, null, 2)}\n`,
);
console.log('written to bench/results/latest.json');
process.exit(0);
