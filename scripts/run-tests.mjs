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
// Node's runner starts the files in alphabetical order whatever order they are passed in (a
// longest-first order here once had no effect; tried by starting each file in its own process,
// it made the run no shorter — the two cores are the limit — and its long, heavy files, all at
// once, failed on timing under the load). Their times are printed at the end (test-times.mjs).
const files = sorted;
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
