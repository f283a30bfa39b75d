/**
 * The chat page's TypeScript (web/app.ts and what it imports, the SDK's source included)
 * type-checks with browser globals only (web/tsconfig.json: DOM, no Node types). esbuild, which
 * bundles it for the demo, strips types without checking them, and the root tsconfig sees only
 * web/server.ts and web/crypto.ts (through the demo and the tests).
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { ROOT } from '../support/process.js';

it('web/ type-checks against the DOM without Node types', () => {
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const run = spawnSync(process.execPath, [tsc, '-p', 'web/tsconfig.json'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(run.status, 0, `tsc -p web/tsconfig.json failed:\n${run.stdout}${run.stderr}`);
});
