import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { ROOT } from '../support/process.js';

const TSX = import.meta.resolve('tsx');

function start(script: string, args: string[], env: Record<string, string>, stdin?: string) {
  const proc = spawn(process.execPath, ['--import', TSX, `${ROOT}/scripts/${script}`, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  if (stdin === undefined) proc.stdin.end();
  return { proc, exited, output: () => output };
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('quick start: the demo and the CLI client, as the README tells a newcomer', () => {
  it('two clients chat through `npm run demo`; SIGTERM stops it with exit 0', async () => {
    const demo = start('demo.ts', [], { APP_PORT: '0', DEV_API_PORT: '0' });
    try {
      await until(() => /npm run client -- --user 2 --chat 1 --url (\S+) --api (\S+)/.test(demo.output()), 20_000, 'demo guide');
      const [, url, api] = /--url (\S+) --api (\S+)/.exec(demo.output())!;
      const listener = start('client.ts', ['--user', '2', '--chat', '1', '--url', url!, '--api', api!], {}, 'keep-open');
      await until(() => /registered/i.test(listener.output()), 20_000, 'listener registered');
      const talker = start('client.ts', ['--user', '1', '--chat', '1', '--url', url!, '--api', api!], {}, 'piped');
      talker.proc.stdin.end('hello from the quick start\n/quit\n');
      assert.equal(await talker.exited, 0, talker.output());
      await until(() => listener.output().includes('hello from the quick start'), 10_000, 'message at the listener');
      listener.proc.stdin.end('/quit\n');
      assert.equal(await listener.exited, 0, listener.output());
      demo.proc.kill('SIGTERM');
      assert.equal(await demo.exited, 0, demo.output());
    } finally {
      demo.proc.kill('SIGKILL');
    }
  });

  it('with the chat page\'s port taken by something else, the demo runs without the page and lets no browser in (not the origin of whatever holds the port)', async () => {
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    const pagePort = (squatter.address() as { port: number }).port;
    const demo = start('demo.ts', [], { APP_PORT: '0', DEV_API_PORT: '0', CHAT_PAGE_PORT: String(pagePort) });
    try {
      await until(() => /npm run client -- --user 2 --chat 1 --url (\S+)/.test(demo.output()), 20_000, 'demo guide');
      assert.match(demo.output(), /chat page did not start/);
      assert.match(demo.output(), /no browser may connect/);
      const [, url] = /--url (\S+)/.exec(demo.output())!;
      const status = (origin?: string) =>
        new Promise<number>((resolve, reject) => {
          const ws = new WebSocket(url!, origin === undefined ? {} : { origin });
          ws.once('open', () => (ws.close(), resolve(101)));
          ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
          ws.once('error', reject);
        });
      assert.equal(await status(`http://localhost:${pagePort}`), 403);
      assert.equal(await status(`http://127.0.0.1:${pagePort}`), 403);
      assert.equal(await status(), 101, 'the CLI client, which sends no Origin, still connects');
      demo.proc.kill('SIGTERM');
      assert.equal(await demo.exited, 0, demo.output());
    } finally {
      demo.proc.kill('SIGKILL');
      squatter.close();
    }
  });
});
