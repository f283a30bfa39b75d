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
const concurrency = process.env.TEST_CONCURRENCY ?? '2';
// The timeout bounds each test and each file as a whole: a browser file of a dozen Chromium
// tests takes ~100 s alone, more beside three other files on two cores.
const exited = (child) => new Promise((resolve) => child.once('close', (code) => resolve(code ?? 1)));
let tscOutput = '';
const tsc = typecheck ? spawn(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json', '--noEmit'], { stdio: ['ignore', 'pipe', 'pipe'] }) : null;
tsc?.stdout.on('data', (d) => (tscOutput += d));
tsc?.stderr.on('data', (d) => (tscOutput += d));
// As node's default (spec on a terminal, TAP otherwise) on stdout; each file's time on stderr at the end (scripts/test-times.mjs).
const reporters = [`--test-reporter=${process.stdout.isTTY ? 'spec' : 'tap'}`, '--test-reporter-destination=stdout', '--test-reporter=./scripts/test-times.mjs', '--test-reporter-destination=stderr'];
const tests = spawn(process.execPath, ['--import', 'tsx', '--test', ...reporters, `--test-concurrency=${concurrency}`, '--test-timeout=180000', ...files], { stdio: 'inherit' });
const [tscCode, testCode] = await Promise.all([tsc === null ? 0 : exited(tsc), exited(tests)]);
if (tscCode !== 0) {
  process.stderr.write(`\ntypecheck (tsc -p tsconfig.json --noEmit) failed:\n${tscOutput}\n`);
  process.exit(1);
}
process.exit(testCode);
