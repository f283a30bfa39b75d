// Runs every tests/**/*.test.ts with node's test runner (Node 20 has no --test glob).
// Usage: node scripts/run-tests.mjs [--typecheck] [filter...] — a filter keeps files whose path
// contains it; TEST_EXCLUDE=part,part leaves out files whose path contains one of them.
// --typecheck (npm test) runs `tsc --noEmit` beside the tests instead of before them — it keeps
// one core busy for ~20 s that the tests, mostly waiting, do not fill — and fails the run if it fails.
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function find(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? find(p) : p.endsWith('.test.ts') ? [p] : [];
  });
}

const args = process.argv.slice(2);
const typecheck = args.includes('--typecheck');
const filters = args.filter((a) => a !== '--typecheck');
// TEST_EXCLUDE: comma-separated path parts of files to leave out (.ci/run's second Node version).
const excluded = (process.env.TEST_EXCLUDE ?? '').split(',').filter(Boolean);
const sorted = find('tests')
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .filter((f) => !excluded.some((x) => f.includes(x)))
  .sort();
// Longest first, so the run does not end on one long file while the others sit idle (a
// fresh-clone CI run ended at 598 s of its 600 with the files in alphabetical order). Seconds
// each took in CI on Node 20 (2026-12-02), roughly; a file not listed counts as short.
const SECONDS = {
  'browser/chat-page-faults': 150, 'browser/chat-page-edges': 140, 'browser/chat-page-devices': 107, 'browser/chat-page.test': 78,
  'sdk/faults': 60, 'sdk/bucket': 25, 'capabilities/hardening': 60, 'sdk/edges': 60, 'capabilities/limits': 55, 'capabilities/redis-faults': 55,
  'capabilities/redis-outages': 50, 'capabilities/redis-commands': 30, 'capabilities/credentials': 47, 'sdk/backend': 47, 'capabilities/scale-out': 32,
  'capabilities/server-api': 29, 'sdk/package': 28, 'capabilities/process': 25, 'capabilities/redis-cluster': 25,
  'capabilities/recovery': 22, 'capabilities/redis-script-cost': 20, 'capabilities/presence': 20, 'capabilities/redis-subscriptions': 19,
  'browser/crypto': 16, 'sdk/reconnect': 16, 'engine/contract': 15,
};
const weight = (f) => Object.entries(SECONDS).find(([part]) => f.includes(part))?.[1] ?? 5;
const byWeight = (list) => [...list].sort((a, b) => weight(b) - weight(a));
// The chat page's Chromium files are also the most CPU-hungry: four of them at once on two cores
// slowed each down. Two start first, the others after the next few files, so the rest of the
// suite (mostly waiting on timers and processes) fills the cores beside them.
const browser = byWeight(sorted.filter((f) => f.includes('chat-page') && f.startsWith(join('tests', 'browser'))));
const others = byWeight(sorted.filter((f) => !browser.includes(f)));
const files = [...browser.slice(0, 2), ...others.slice(0, 6), ...browser.slice(2), ...others.slice(6)];
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const concurrency = Math.max(1, Number(process.env.TEST_CONCURRENCY ?? '2') || 2);
// The runner starts the files itself, in the order above, `concurrency` at a time, each in its
// own `node --test` — node's runner, given them all, starts them in alphabetical order whatever
// order they are passed in (so the order above once had no effect: in CI the four Chromium files
// ran together first, and the longest SDK files started last, at 4.5 minutes). Each file's
// output is printed whole when it ends, so files never interleave; the totals come last.
// The timeout bounds each test and each file as a whole: a browser file of a dozen Chromium
// tests takes ~100 s alone, more beside three other files on two cores.
const exited = (child) => new Promise((resolve) => child.once('close', (code) => resolve(code ?? 1)));
let tscOutput = '';
const tsc = typecheck ? spawn(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json', '--noEmit'], { stdio: ['ignore', 'pipe', 'pipe'] }) : null;
tsc?.stdout.on('data', (d) => (tscOutput += d));
tsc?.stderr.on('data', (d) => (tscOutput += d));
// Listened for now: it ends long before the tests (a 'close' missed leaves the await below unsettled, exit 13).
const tscDone = tsc === null ? Promise.resolve(0) : exited(tsc);

const reporter = process.stdout.isTTY ? 'spec' : 'tap';
const COUNTS = ['tests', 'pass', 'fail', 'cancelled', 'skipped', 'todo'];
const totals = Object.fromEntries(COUNTS.map((k) => [k, 0]));
const times = [];
const failedFiles = [];
const t0 = Date.now();

async function runFile(file) {
  const startedAt = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', '--test', `--test-reporter=${reporter}`, '--test-timeout=180000', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks = [];
  child.stdout.on('data', (d) => chunks.push(d));
  child.stderr.on('data', (d) => chunks.push(d));
  const code = await exited(child);
  const output = Buffer.concat(chunks).toString('utf8');
  process.stdout.write(`# file: ${file}\n${output}${output.endsWith('\n') ? '' : '\n'}`);
  for (const key of COUNTS) {
    // The summary's last lines: "# pass 12" (TAP) or "ℹ pass 12" (spec).
    const m = [...output.matchAll(new RegExp(`^[#ℹ] ${key} (\\d+)$`, 'gm'))].at(-1);
    if (m) totals[key] += Number(m[1]);
  }
  if (code !== 0) failedFiles.push(file);
  times.push({ file, s: (Date.now() - startedAt) / 1000, at: (startedAt - t0) / 1000 });
}

const queue = [...files];
await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, async () => {
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) await runFile(file);
}));
const tscCode = await tscDone;

process.stdout.write(`${COUNTS.map((k) => `# ${k} ${totals[k]}`).join('\n')}\n# duration_ms ${Date.now() - t0}\n`);
times.sort((a, b) => b.s - a.s);
process.stderr.write(`\nfile times (s, started at s):\n${times.map((r) => `${r.s.toFixed(0).padStart(5)} ${r.at.toFixed(0).padStart(5)}  ${r.file}`).join('\n')}\n`);
if (failedFiles.length > 0) process.stderr.write(`\nfiles that failed:\n${failedFiles.map((f) => `  ${f}`).join('\n')}\n`);
if (tscCode !== 0) {
  process.stderr.write(`\ntypecheck (tsc -p tsconfig.json --noEmit) failed:\n${tscOutput}\n`);
  process.exit(1);
}
process.exit(failedFiles.length > 0 ? 1 : 0);
