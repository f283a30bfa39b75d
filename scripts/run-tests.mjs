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
// Node's runner starts the files in alphabetical order whatever order they are passed in, so the
// Chromium files (tests/browser/chat-page*, ~1 core each) would all start together, first, and
// hold the two cores at 100 % while the rest of the suite, mostly waiting on timers, leaves them
// idle later. They run in a lane of their own instead, one at a time (TEST_BROWSER_CONCURRENCY),
// beside the other files (TEST_CONCURRENCY at a time). Their times are printed at the end (test-times.mjs).
const BROWSER = 'tests/browser/chat-page';
const browserFiles = sorted.filter((f) => f.includes(BROWSER));
const otherFiles = sorted.filter((f) => !f.includes(BROWSER));
if (sorted.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const concurrency = process.env.TEST_CONCURRENCY ?? '2';
const browserConcurrency = process.env.TEST_BROWSER_CONCURRENCY ?? '1';
const exited = (child) => new Promise((resolve) => child.once('close', (code) => resolve(code ?? 1)));
let tscOutput = '';
const tsc = typecheck ? spawn(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json', '--noEmit'], { stdio: ['ignore', 'pipe', 'pipe'] }) : null;
tsc?.stdout.on('data', (d) => (tscOutput += d));
tsc?.stderr.on('data', (d) => (tscOutput += d));
// As node's default (spec on a terminal, TAP otherwise) on stdout; each file's time on stderr at the end (scripts/test-times.mjs).
const reporters = [`--test-reporter=${process.stdout.isTTY ? 'spec' : 'tap'}`, '--test-reporter-destination=stdout', '--test-reporter=./scripts/test-times.mjs', '--test-reporter-destination=stderr'];
// The timeout bounds each test and each file as a whole: a browser file of a dozen Chromium
// tests takes ~100 s alone.
const run = (files, width, stdio) => spawn(process.execPath, ['--import', 'tsx', '--test', ...reporters, `--test-concurrency=${width}`, '--test-timeout=180000', ...files], { stdio });
// The main lane reports as it goes; the browser lane's report is held and printed after it, whole.
const main = otherFiles.length > 0 ? run(otherFiles, concurrency, 'inherit') : null;
const browser = browserFiles.length > 0 ? run(browserFiles, browserConcurrency, main === null ? 'inherit' : ['ignore', 'pipe', 'pipe']) : null;
const held = [];
browser?.stdout?.on('data', (d) => held.push(['stdout', d]));
browser?.stderr?.on('data', (d) => held.push(['stderr', d]));
const [tscCode, mainCode] = await Promise.all([tsc === null ? 0 : exited(tsc), main === null ? 0 : exited(main)]);
const browserCode = browser === null ? 0 : await exited(browser);
if (main !== null && browser !== null) {
  process.stdout.write(`\n# the Chromium files (${browserFiles.length}), run in their own lane:\n`);
  for (const [stream, chunk] of held) process[stream].write(chunk);
}
if (tscCode !== 0) {
  process.stderr.write(`\ntypecheck (tsc -p tsconfig.json --noEmit) failed:\n${tscOutput}\n`);
  process.exit(1);
}
process.exit(mainCode !== 0 ? mainCode : browserCode);
