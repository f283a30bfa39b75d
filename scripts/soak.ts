/**
 * Soak: SDK apps send to shared chats for a while against real gateway processes while random
 * faults happen — links cut, an instance SIGKILLed and restarted, redis-server restarted, the
 * main API answering 503 — then every app's history is audited against what was sent.
 *
 *   npm run soak -- --seconds 60                      memory engine, one gateway process
 *   npm run soak -- --seconds 60 --redis --instances 2
 *   npm run soak -- --seconds 60 --cluster --instances 2   (3-master Redis Cluster)
 *
 * Options: --clients N (5), --chats N (2), --rate N messages/s per client and chat (5),
 * --seed N (the fault schedule; random unless given).
 *
 * Prints, per client, messages sent, delivered (live or replayed by the SDK), taken from the main
 * API after a `gap` (counted as delivered, shown apart), duplicated and lost. Lost is split in
 * two: `lost` (the app has it in no way, and nothing explains it) and `never-broadcast` (saved by
 * an instance SIGKILLed before it broadcast it, or acked without a seq because the gateway gave
 * up publishing it: no client got it, no gap can report it — gateway bugs, docs/client-sdk.md
 * "Soak").
 *
 * Exit status: 0 all good; 1 a message duplicated or lost, a send never settled, an own message
 * shown to its sender, or two clients saw a chat in different orders; 3 nothing of that, but
 * messages never broadcast by the gateway. Needs redis-server / redis-cli on PATH for --redis /
 * --cluster.
 */
import { parseArgs } from 'node:util';
import { Backend, ChatApp, converge, sleep, table, type AppReport, type EngineKind } from '../tests/sdk/fault-kit.js';

const USAGE = `usage: npm run soak -- [--seconds N] [--redis | --cluster] [--instances N] [--clients N] [--chats N] [--rate N] [--fault-every MIN-MAX] [--seed N]
  --seconds N     how long to send (60)
  --redis         two (--instances) gateway processes on one redis-server; --cluster: a 3-master Redis Cluster
  --instances N   gateway processes with --redis / --cluster (2)
  --clients N     SDK apps (5)        --chats N   shared chats (2)
  --rate N        messages/s per client and chat (5)
  --fault-every MIN-MAX   seconds between faults, drawn in that range (1-4)
  --seed N        the fault schedule (random unless given)
exit status: 0 all good; 1 a message duplicated or lost (or worse); 3 only messages never broadcast`;

function options() {
  return parseArgs({
    options: {
      seconds: { type: 'string', default: '60' },
      redis: { type: 'boolean', default: false },
      cluster: { type: 'boolean', default: false },
      instances: { type: 'string' },
      clients: { type: 'string', default: '5' },
      chats: { type: 'string', default: '2' },
      rate: { type: 'string', default: '5' },
      'fault-every': { type: 'string', default: '1-4' },
      seed: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }).values;
}
let values: ReturnType<typeof options>;
try {
  values = options();
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const engine: EngineKind = values.cluster ? 'cluster' : values.redis ? 'redis' : 'memory';
const seconds = Number(values.seconds);
const instances = engine === 'memory' ? 1 : Number(values.instances ?? 2);
const clientCount = Number(values.clients);
const chatCount = Number(values.chats);
const rate = Number(values.rate);
const seed = Number(values.seed ?? Math.floor(Math.random() * 2 ** 31));
const faultEvery = /^(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)$/.exec(values['fault-every']);
const [faultMinMs, faultMaxMs] = faultEvery === null ? [NaN, NaN] : [Number(faultEvery[1]) * 1000, Number(faultEvery[2]) * 1000];
if (!(faultMinMs > 0 && faultMaxMs >= faultMinMs)) {
  console.error('soak: --fault-every must be MIN-MAX seconds, 0 < MIN <= MAX (e.g. 0.5-2)');
  process.exit(2);
}
for (const [name, n] of Object.entries({ seconds, instances, clients: clientCount, chats: chatCount, rate, seed })) {
  if (!Number.isFinite(n) || n < (name === 'seed' ? 0 : 1)) {
    console.error(`soak: --${name} must be a positive number`);
    process.exit(2);
  }
}
if (values.instances !== undefined && engine === 'memory' && instances !== Number(values.instances)) {
  console.error('soak: the memory engine runs one instance; add --redis or --cluster for more');
  process.exit(2);
}

/** mulberry32: the fault schedule is reproducible with --seed. */
let state = seed >>> 0;
function random(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const between = (min: number, max: number) => Math.round(min + random() * (max - min));
const started = Date.now();
const log = (msg: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s] ${msg}`);

type FaultName = 'cut' | 'kill' | 'redis' | '5xx';
const faultNames: FaultName[] = engine === 'memory' ? ['cut', 'kill', '5xx'] : ['cut', 'kill', 'redis', '5xx'];
const counts: Record<FaultName, number> = { cut: 0, kill: 0, redis: 0, '5xx': 0 };

async function fault(b: Backend, name: FaultName): Promise<void> {
  counts[name]++;
  switch (name) {
    case 'cut': {
      const slot = random() < 0.5 ? undefined : between(0, b.slots.length - 1);
      const down = between(0, 1000);
      log(`fault: cut the links of ${slot === undefined ? 'every instance' : `instance ${slot}`}, network down ${down} ms`);
      for (const [i, s] of b.slots.entries()) if (slot === undefined || slot === i) s.proxy.refusing = true;
      b.cut(slot);
      await sleep(down);
      for (const s of b.slots) s.proxy.refusing = false;
      return;
    }
    case 'kill': {
      const slot = between(0, b.slots.length - 1);
      const down = between(200, 3000);
      log(`fault: SIGKILL instance ${slot} (${b.slots[slot]!.proxy.open.length} links), restarted after ${down} ms`);
      await b.kill(slot);
      await sleep(down);
      await b.restart(slot);
      log(`       instance ${slot} back`);
      return;
    }
    case 'redis': {
      const node = engine === 'cluster' ? between(0, b.nodes.length - 1) : 0;
      const down = between(200, 2000);
      log(`fault: ${engine === 'cluster' ? `Cluster master ${node}` : 'redis-server'} SIGKILLed, restarted after ${down} ms (its data is gone)`);
      await b.restartRedis(down, node);
      log(`       redis back`);
      return;
    }
    case '5xx': {
      const times = between(10, 80);
      log(`fault: the main API answers 503 to the next ${times} saves`);
      b.apiOutage(times);
      return;
    }
  }
}

async function main(): Promise<number> {
  log(`soak: ${engine} engine, ${instances} gateway process(es), ${clientCount} clients × ${chatCount} chats, ~${rate} msg/s per client and chat, ${seconds} s, seed ${seed}`);
  const b = await Backend.start({ engine, instances });
  const apps: ChatApp[] = [];
  // Interrupted: leave no gateway or redis-server behind.
  const interrupt = () => {
    log('interrupted; stopping the processes');
    for (const a of apps) a.close();
    void b.close().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  let failed = false;
  let gatewayLoss = false;
  try {
    const chats = Array.from({ length: chatCount }, (_, i) => 9_000_000 + (process.pid % 10_000) * 10 + i);
    for (let user = 1; user <= clientCount; user++) apps.push(new ChatApp(user, chats, await b.api.mintToken(user), b.urls(user), b.api));
    await Promise.all(apps.map((a) => a.ready()));
    log('all clients registered; sending');
    for (const a of apps) a.startSending(rate);
    const end = started + seconds * 1000;
    while (Date.now() < end - 2000) {
      await sleep(Math.min(between(faultMinMs, faultMaxMs), Math.max(0, end - Date.now())));
      if (Date.now() >= end - 2000) break;
      await fault(b, faultNames[between(0, faultNames.length - 1)]!);
    }
    await sleep(Math.max(0, end - Date.now()));
    await Promise.all(apps.map((a) => a.stopSending()));
    log('sending stopped; waiting for every send to settle');
    const settled = await Promise.all(apps.map((a) => a.settled(60_000)));
    if (!settled.every(Boolean)) log('some sends did not settle within 60 s');
    const reports = await converge(apps, 30_000, b.kills, b.api);
    print(reports);
    failed = reports.some((r) => r.duplicated > 0 || r.lost > 0 || r.unsettled > 0 || r.orderViolations.length > 0 || r.echoes > 0);
    gatewayLoss = reports.some((r) => r.neverBroadcast > 0);
    if (failed) {
      for (const r of reports) {
        if (r.lostIds.length > 0) console.log(`user ${r.user} lost ${r.lostIds.length}:\n  ${r.lostDetails.join('\n  ')}`);
        for (const v of r.orderViolations.slice(0, 5)) console.log(v);
      }
      console.log(b.logs());
    }
  } finally {
    for (const a of apps) a.close();
    await b.close();
  }
  return failed ? 1 : gatewayLoss ? 3 : 0;
}

function print(reports: AppReport[]): void {
  const sum = (f: (r: AppReport) => number) => reports.reduce((n, r) => n + f(r), 0);
  console.log('');
  console.log(table(reports));
  console.log('');
  console.log(`faults: ${Object.entries(counts).filter(([, n]) => n > 0).map(([k, n]) => `${k} ×${n}`).join(', ')}`);
  console.log(
    `total: sent ${sum((r) => r.sent)}, acked ${sum((r) => r.acked)}, rejected ${sum((r) => Object.values(r.rejected).reduce((a, b) => a + b, 0))}, ` +
      `unsettled ${sum((r) => r.unsettled)}; expected deliveries ${sum((r) => r.expected)}: delivered live/replayed ${sum((r) => r.delivered)}, ` +
      `filled from the main API after a gap ${sum((r) => r.filledFromGap)}; duplicated ${sum((r) => r.duplicated)}, lost ${sum((r) => r.lost)}, ` +
      `never broadcast by the gateway ${sum((r) => r.neverBroadcast)}, order violations ${sum((r) => r.orderViolations.length)}`,
  );
  if (sum((r) => r.neverBroadcast) > 0) {
    console.log(`never broadcast: ${[...new Set(reports.flatMap((r) => r.neverBroadcastIds))].join(' ')}`);
    console.log(
      '  saved by an instance SIGKILLed before it broadcast them (the resend was acked duplicate and not broadcast either), ' +
        'or acked without a seq because the gateway gave up publishing them; no client got them and no gap reported them ' +
        '(gateway bugs: docs/client-sdk.md, "Soak").',
    );
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
