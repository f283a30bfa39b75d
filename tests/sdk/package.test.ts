import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { WebSocket } from 'ws';
import { ROOT } from '../support/process.js';
import { uniqueChat, useHarness } from '../support/harness.js';

/**
 * The package as an app gets it: `tsc` output with declarations, importable as ESM, typed for
 * browsers without Node's types. Built into a temporary directory (the repo is left alone).
 */
const PKG = join(ROOT, 'packages/client');
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');
const out = mkdtempSync(join(tmpdir(), 'sdk-build-'));
after(() => rmSync(out, { recursive: true, force: true }));

function tsc(args: string[]): void {
  const run = spawnSync(process.execPath, [TSC, ...args], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(run.status, 0, `tsc ${args.join(' ')}\n${run.stdout}${run.stderr}`);
}

/** Type-checks one example against the built declarations, as `@message-service/client`. */
function checkExample(file: string, types: string[]): void {
  const config = join(out, `tsconfig.${file}.json`);
  writeFileSync(
    config,
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        lib: ['ES2022', 'DOM'],
        types,
        typeRoots: [join(ROOT, 'node_modules/@types')],
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        paths: { '@message-service/client': [join(out, 'dist/index.d.ts')] },
      },
      files: [join(PKG, 'examples', file)],
    }),
  );
  tsc(['-p', config]);
}

describe('the built package', () => {
  const h = useHarness('memory');

  it('builds with declarations; the examples type-check against them (the browser one without Node types)', () => {
    tsc(['-p', join(PKG, 'tsconfig.json'), '--outDir', join(out, 'dist')]);
    const manifest = JSON.parse(readFileSync(join(PKG, 'package.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(manifest.dependencies, undefined, 'no runtime dependency');
    assert.equal(manifest.type, 'module');
    checkExample('browser.ts', []);
    checkExample('node.ts', ['node']);
  });

  it('the emitted ESM talks to a real gateway', async () => {
    writeFileSync(join(out, 'dist/package.json'), '{"type":"module"}');
    const sdk = (await import(pathToFileURL(join(out, 'dist/index.js')).href)) as typeof import('../../packages/client/src/index.js');
    const chatId = uniqueChat();
    const client = sdk.createClient({ url: h.instances[0]!.wsUrl, token: await h.token(1), WebSocket });
    try {
      const chat = client.chat(chatId);
      assert.equal((await chat.ready()).userId, 1);
      const ack = await chat.send({ ciphertext: 'eA' });
      assert.equal(ack.duplicate, false);
      await assert.rejects(chat.edit('missing', { ciphertext: 'eA' }), (err: unknown) => err instanceof sdk.ClientError && err.code === 'not_found');
    } finally {
      client.close();
    }
  });
});
