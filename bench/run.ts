/**
 * npm run bench — the gateway side by side with what a team would use instead.
 *
 *   npm run bench -- --help       the options (USAGE below); an unknown option stops the run
 *
 * Systems (bench/lib/systems.ts, bench/peers/): hand-written `ws` rooms (the floor), the same
 * with pre-framed broadcasts, the same saving every message through the main API and acking it
 * (fan-out and saturation only), Socket.IO 4, two `ws` instances over Redis pub/sub, two Socket.IO
 * instances with @socket.io/redis-adapter (the `ws` pair also with the save and ack), this gateway with its memory engine (one process)
 * and with its Redis engine (two processes), the gateway and ws-save against bench/peers/mini-api.ts.
 * Servers and Redis are pinned to core 1, generators (bench/gen/worker.ts) and the main-API
 * stand-in to core 0. Every cell starts its system fresh; cells are repeated and interleaved
 * (repeat 1 of every system, then repeat 2), reported as min / median with the ratio of medians
 * to the `ws` floor of the same run.
 *
 * Writes bench/results/local/<quick|full|custom>.json and .md (git-ignored), or with --out=NAME
 * bench/results/NAME.json and .md (a run to keep and cite), and bench/results/local/latest.*.
 */
import { execSync } from 'node:child_process';
import { cpus } from 'node:os';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { GeneratorPool } from './lib/generators.js';
import { PAYLOAD_BYTES } from './lib/payload.js';
import { HAS_TASKSET, loadAverage, GENERATOR_CORE, setNice } from './lib/procs.js';
import { capacityPlan, console2, markdown, modelCheck, modelTable, table, type CellResult, type Results } from './lib/report.js';
import { RUNNING, SYSTEMS, GATEWAY_ENV, type SystemKey } from './lib/systems.js';
import { SCENARIOS, type Ctx } from './scenarios.js';

const USAGE = `usage: npm run bench -- [options]   (no options: every scenario and system, 2 repeats, ≈ 40–55 min)
  --quick            idle + fan-out, gateway (memory engine) and the ws floor (< 3 min)
  --scenarios=LIST   ${SCENARIOS.map((s) => s.key).join(',')}
  --systems=LIST     ${Object.keys(SYSTEMS).join(',')}
  --repeats=N        repeats of every cell (default 2)
  --merge=FILE       start from that run's results; the scenarios run now replace theirs
  --out=NAME         write bench/results/NAME.json / .md, a run to keep (default: bench/results/local/,
                     git-ignored, as quick, full or custom)
  --report           run nothing: recompute the tables, model and plan from --merge's file
  --only=TEXT        only the rows whose key contains TEXT
  --profile          sample the servers' CPU during fan-out (bench/results/profiles/)
  --nice=N           run every benchmark process at niceness N (root for N < 0)
  --help             this text`;

const args = process.argv.slice(2);
// A mistyped option must not start a 40-minute run of everything.
const FLAGS = new Set(['--quick', '--report', '--profile', '--help']);
const VALUED = new Set(['scenarios', 'systems', 'repeats', 'merge', 'out', 'only', 'nice']);
const unknown = args.filter((a) => !FLAGS.has(a) && !VALUED.has(/^--([a-z]+)=/.exec(a)?.[1] ?? ''));
if (args.includes('--help') || unknown.length > 0) {
  if (unknown.length > 0) process.stderr.write(`unknown option(s): ${unknown.join(' ')}\n${USAGE}\n`);
  else process.stdout.write(`${USAGE}\n`);
  process.exit(unknown.length > 0 ? 2 : 0);
}
const opt = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.split('=', 2)[1];
const quick = args.includes('--quick');
const reportOnly = args.includes('--report');
const scenarioKeys = reportOnly ? [] : (opt('scenarios') ?? (quick ? 'idle,fanout' : SCENARIOS.map((s) => s.key).join(','))).split(',');
const systemKeys = (opt('systems') ?? (quick ? 'ws,gateway' : Object.keys(SYSTEMS).join(','))).split(',') as SystemKey[];
const repeats = Number(opt('repeats') ?? 2);
const nice = Number(opt('nice') ?? 0);
setNice(nice);
const mergeFrom = opt('merge');
/** `--only=TEXT`: run only the variants (rows) whose key contains TEXT, e.g. `--only=relay`. */
const only = opt('only');
const mode0 = quick && !opt('scenarios') && !opt('systems') ? 'quick' : !opt('scenarios') && !opt('systems') ? 'full' : 'custom';

const mode = opt('out') ?? mode0;
for (const k of systemKeys) if (!(k in SYSTEMS)) throw new Error(`unknown system ${k}; known: ${Object.keys(SYSTEMS).join(', ')}`);
for (const k of scenarioKeys) if (!SCENARIOS.some((s) => s.key === k)) throw new Error(`unknown scenario ${k}`);

// This process only orchestrates and samples /proc; it shares the generator core.
if (HAS_TASKSET) execSync(`taskset -a -p -c ${GENERATOR_CORE} ${process.pid}`, { stdio: 'ignore' });
if (nice !== 0) execSync(`renice -n ${nice} -p ${process.pid}`, { stdio: 'ignore' });

const sh = (cmd: string) => {
  try {
    return execSync(cmd, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
};
const started = Date.now();
const machine = {
  cpus: cpus().length,
  cpu_model: cpus()[0]?.model ?? '?',
  node: process.version,
  redis: sh('redis-server --version'),
  taskset: HAS_TASKSET,
  nice,
  load_average_start: loadAverage(),
  git_head: sh('git rev-parse --short HEAD'),
  /** The gateway is measured as it is in the work tree, uncommitted changes included. */
  src_uncommitted: sh('git status --porcelain -- src') !== '',
  src_diff_sha1: sh('git diff HEAD -- src | sha1sum').split(' ')[0] ?? '',
};
const log = (line: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${line}`);
log(`bench ${mode}: scenarios ${scenarioKeys.join(',')}; systems ${systemKeys.join(',')}; ${repeats} repeat(s); payload ${PAYLOAD_BYTES} B; taskset ${HAS_TASKSET ? 'servers core 1, generators core 0' : 'missing: nothing pinned'}; load ${machine.load_average_start}`);

const pool = new GeneratorPool();
// Interrupted: stop what this run started (servers, Redis, generators), then exit.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.log(`\n${signal}: stopping the benchmark's processes`);
    void Promise.allSettled([...RUNNING].map((s) => s.stop()))
      .then(() => pool.stop())
      .finally(() => process.exit(130));
  });
}
const ctx: Ctx = { pool, log, profile: args.includes('--profile') };
const results: Results = {};
type Prior = { results: Results; machine: typeof machine & { load_average_end: string; minutes: number }; date: string; command: string; repeats: number };
let prior: Prior | null = null;
if (reportOnly && mergeFrom === undefined) throw new Error('--report needs --merge=FILE');
if (mergeFrom !== undefined) {
  prior = JSON.parse(readFileSync(mergeFrom, 'utf8')) as Prior;
  for (const [k, v] of Object.entries(prior.results)) if (!scenarioKeys.includes(k)) results[k] = v;
}
const labels: Record<string, string> = {};

try {
  for (const scenario of SCENARIOS.filter((s) => scenarioKeys.includes(s.key))) {
    const variants = scenario.variants(systemKeys).filter((v) => only === undefined || v.key.includes(only));
    delete results[scenario.key];
    if (variants.length === 0) continue;
    log(`${scenario.title}`);
    results[scenario.key] = {};
    for (const v of variants) {
      results[scenario.key]![v.key] = [];
      labels[`${scenario.key}/${v.key}`] = v.label ?? SYSTEMS[v.key as SystemKey]?.label ?? v.key;
    }
    for (let rep = 0; rep < repeats; rep++) {
      for (const v of variants) {
        const t0 = Date.now();
        const loadBefore = loadAverage();
        let result: CellResult;
        try {
          const cell = await scenario.run(v, ctx);
          result = { ok: true, cell, load_before: loadBefore, load_after: loadAverage(), seconds: (Date.now() - t0) / 1000 };
          const shown = Object.entries(cell.metrics)
            .filter(([, x]) => x !== null)
            .slice(0, 8)
            .map(([k, x]) => `${k}=${Number(x).toFixed(2)}`)
            .join(' ');
          log(`  ${scenario.key} #${rep + 1} ${v.key}: ${shown}`);
        } catch (err) {
          result = { ok: false, error: (err as Error).stack ?? String(err), load_before: loadBefore, load_after: loadAverage(), seconds: (Date.now() - t0) / 1000 };
          log(`  ${scenario.key} #${rep + 1} ${v.key}: FAILED ${(err as Error).message.slice(0, 500)}`);
          // A failed cell may leave connections open in the generators.
          await Promise.all((await pool.take(1)).map((g) => g.close().catch(() => undefined)));
        }
        results[scenario.key]![v.key]!.push(result);
      }
    }
  }
} finally {
  await pool.stop();
}

const titles = Object.fromEntries(SCENARIOS.map((s) => [s.key, s.title]));
for (const s of SCENARIOS) for (const v of s.variants(Object.keys(SYSTEMS) as SystemKey[])) labels[`${s.key}/${v.key}`] ??= v.label ?? SYSTEMS[v.key as SystemKey]?.label ?? v.key;
const md: string[] = [];
console.log('');
for (const key of SCENARIOS.map((s) => s.key).filter((k) => k in results)) {
  const rows = table(results, key, labels);
  console.log(`${titles[key]}\n${console2(rows)}\n`);
  md.push(`### ${titles[key]}\n\n${markdown(rows)}\n`);
}
const check = modelCheck(results);
if (check) {
  const rows = modelTable(check);
  console.log(`capacity model check (predicted / measured)\n${console2(rows)}\nparameters: ${JSON.stringify(check.params)}\n`);
  md.push(`### Capacity model check (predicted / measured)\n\n${markdown(rows)}\n\nParameters: \`${JSON.stringify(check.params)}\`\n`);
}
const mergedNote = (): string => {
  const m = reportOnly ? (prior as { merged_run?: { date: string; command: string; machine: typeof machine & { load_average_end: string; minutes: number } } } | null)?.merged_run : prior && { date: prior.date, command: prior.command, machine: prior.machine };
  if (!m) return '';
  const ran = reportOnly ? (prior?.command ?? '') : `npm run bench -- ${args.join(' ')}`;
  return `\nMerged: \`${ran}\` re-ran some scenarios on top of \`${m.command}\` (${m.date}, ${m.machine.minutes.toFixed(1)} min, load average ${m.machine.load_average_start} → ${m.machine.load_average_end}, gateway at ${m.machine.git_head}${m.machine.src_uncommitted ? ' + uncommitted src changes' : ''}), which gave the other tables.\n`;
};
const json0Date = () => (reportOnly && prior ? prior.date : new Date().toISOString());
const plan = check ? capacityPlan(results, check) : null;
if (plan) {
  const lines = Object.entries(plan.outputs).map(([k, v]) => `${k}: ${Number(v.toPrecision(4))}`);
  console.log(`capacity plan, 1 000 000 users in chats of 50, 1 message/user/minute (docs/capacity.md)\n${lines.join('\n')}\n`);
  md.push(`### Capacity plan (docs/capacity.md)\n\nInputs: \`${JSON.stringify(plan.inputs)}\`\n\n${lines.map((l) => `- ${l}`).join('\n')}\n`);
}
const finished = reportOnly && prior ? { load_average_end: prior.machine.load_average_end, minutes: prior.machine.minutes } : { load_average_end: loadAverage(), minutes: (Date.now() - started) / 60_000 };
if (reportOnly && prior) Object.assign(machine, prior.machine);
const header = `Run ${json0Date()} (${mode}, ${reportOnly && prior ? prior.repeats : repeats} repeat(s), ${finished.minutes.toFixed(1)} min): ${machine.cpus} × ${machine.cpu_model}, Node ${machine.node}, ${machine.redis.split(' ').slice(0, 3).join(' ')}, load average ${machine.load_average_start} → ${finished.load_average_end}; gateway at ${machine.git_head}${machine.src_uncommitted ? ` + uncommitted src changes (diff ${machine.src_diff_sha1.slice(0, 10)})` : ''}. Cells: min / median ×(median ÷ floor median).\n${mergedNote()}`;
const json = {
  date: reportOnly && prior ? prior.date : new Date().toISOString(),
  mode,
  command: reportOnly && prior ? prior.command : `npm run bench -- ${args.join(' ')}`.trim(),
  ...(reportOnly ? { report_recomputed: new Date().toISOString() } : {}),
  machine: { ...machine, ...finished },
  payload_bytes: PAYLOAD_BYTES,
  gateway_env: GATEWAY_ENV,
  repeats: reportOnly && prior ? prior.repeats : repeats,
  merged_from: mergeFrom ?? null,
  /** The run the merged scenarios came from (date, command, machine), when merging. */
  merged_run: reportOnly ? ((prior as { merged_run?: unknown } | null)?.merged_run ?? null) : prior ? { date: prior.date, command: prior.command, machine: prior.machine } : null,
  results,
  model: check,
  capacity: plan,
};
// An ordinary run does not touch the committed results (docs/benchmarks.md cites them by name).
const local = new URL('./results/local/', import.meta.url);
mkdirSync(local, { recursive: true });
const kept = opt('out') !== undefined;
const written = [`${kept ? '' : 'local/'}${mode}`, 'local/latest'];
for (const name of written) {
  writeFileSync(new URL(`./results/${name}.json`, import.meta.url), `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(new URL(`./results/${name}.md`, import.meta.url), `${header}\n${md.join('\n')}`);
}
log(`written to bench/results/${written[0]}.json and .md (and local/latest.*)`);
process.exit(0);
