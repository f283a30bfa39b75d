/**
 * The chat page's server forwards /api to three development-main-API routes and nothing else,
 * whatever spelling of a path it is sent (raw HTTP: fetch would normalize the path itself), and
 * answers only requests addressed to a loopback name. And `npm run demo`, which serves it: what
 * the demo's gateway lets in.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import WebSocket from 'ws';
import { DEFAULT_SECRET, startDevApi, type DevApi } from '../../dev-api/app.js';
import { startChatPage, type ChatPage } from '../../web/server.js';
import { ROOT } from '../support/process.js';

let api: DevApi;
let page: ChatPage;

before(async () => {
  api = await startDevApi({ port: 0 });
  page = await startChatPage({ gatewayUrl: 'ws://127.0.0.1:1/ws', apiUrl: api.url, port: 0 });
});

after(async () => {
  await page.close();
  await api.close();
});

/** One request with `path` sent exactly as written, with these headers (a `host` as a browser would send it). */
function raw(method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: page.port, method, path, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('chat page server: /api reaches only the page\'s routes', () => {
  it('paths that normalize to another route of the main API are 404, and reach nothing', async () => {
    api.setMembers(1, null);
    const before = api.requests.length;
    assert.equal(await raw('GET', '/api/chats/..\\..\\__faults#/messages'), 404);
    assert.equal(await raw('GET', '/api/chats/../../__requests#/messages'), 404);
    assert.equal(await raw('GET', '/api/chats/%2e%2e/%2e%2e/__messages#/messages'), 404);
    assert.equal(await raw('PUT', '/api/devices/..\\..\\__chats\\1\\members#/key', '{"user_ids":[99]}'), 404);
    assert.equal(await raw('GET', '/api//evil.example/chats/1/messages'), 404);
    assert.equal(api.requests.length, before, 'a request reached the main API');
  });

  it('the page\'s own routes still work', async () => {
    assert.equal(await raw('POST', '/api/dev/token', '{"user_id":1}'), 200);
  });

  it('a main-API answer past the page server\'s limit is 502, not passed on (nor held whole in memory)', async () => {
    const small = await startChatPage({ gatewayUrl: 'ws://127.0.0.1:1/ws', apiUrl: api.url, port: 0, answerLimit: 40 });
    try {
      const res = await fetch(`${small.url}api/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user_id":1}' });
      assert.equal(res.status, 502);
      assert.match(await res.text(), /answered too much/);
    } finally {
      await small.close();
    }
  });

  it('every chat id the gateway accepts reaches its routes (dots, and colons sent as %3A); other spellings do not', async () => {
    const authorization = `Bearer ${await api.mintToken(1)}`;
    for (const id of ['a.b', 'a%3Ab', 'team_1-x', '...a']) {
      assert.notEqual(await raw('GET', `/api/chats/${id}/devices`, undefined, { authorization }), 404, id);
      assert.notEqual(await raw('GET', `/api/chats/${id}/messages`, undefined, { authorization }), 404, id);
    }
    // Only dots, an encoded slash or other character the gateway refuses, bad percent-encoding,
    // too long: refused by the page server itself (its "no route" answer), never forwarded.
    for (const id of ['...', '%2e%2e%2e', 'a%2Fb', 'a%20b', '%ZZ', 'x'.repeat(65)]) {
      const res = await fetch(`http://127.0.0.1:${page.port}/api/chats/${id}/devices`, { headers: { authorization } });
      assert.equal(res.status, 404, id);
      assert.match(((await res.json()) as { error: string }).error, /^no route for GET/, id);
    }
  });
});

describe('chat page server: DNS rebinding', () => {
  it('a request addressed to another name than localhost, 127.0.0.1 or [::1] is 421, and reaches nothing', async () => {
    const rebound = { host: `rebind.example:${page.port}` };
    assert.equal(await raw('GET', '/', undefined, rebound), 421);
    assert.equal(await raw('POST', '/api/dev/token', '{"user_id":1}', rebound), 421);
    assert.equal(await raw('GET', '/api/chats/1/messages', undefined, rebound), 421);
    assert.equal(await raw('GET', '/', undefined, { host: `127.0.0.2:${page.port}` }), 421);
    // With a real token and key, the key is published only when the Host is a loopback name.
    const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const key = JSON.stringify({ public_key: Buffer.from(await crypto.subtle.exportKey('raw', pair.publicKey)).toString('base64') });
    const authorization = `Bearer ${await api.mintToken(1)}`;
    assert.equal(await raw('PUT', '/api/devices/rebound-1/key', key, { ...rebound, authorization }), 421);
    assert.equal(api.devices.has('rebound-1'), false, 'the key did not reach the dev API');
    for (const name of ['localhost', '127.0.0.1', '[::1]']) assert.equal(await raw('GET', '/', undefined, { host: `${name}:${page.port}` }), 200, name);
    assert.equal(await raw('PUT', '/api/devices/rebound-1/key', key, { host: `localhost:${page.port}`, authorization }), 200);
    assert.equal(api.devices.has('rebound-1'), true);
  });
});

/** Opens a WebSocket to `url` (with `origin`, as a browser sends it), registers `token` to chat 1: the first answer, or the refused upgrade. */
function registerOver(url: string, token: string, origin?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, origin === undefined ? {} : { headers: { origin } });
    ws.once('unexpected-response', (_req, res) => resolve(`http ${res.statusCode ?? 0}`));
    ws.once('error', reject);
    ws.once('open', () => ws.send(JSON.stringify({ type: 'register', token, chat_id: 1 })));
    ws.once('message', (data: Buffer) => {
      const frame = JSON.parse(data.toString()) as { type: string; code?: string };
      resolve(frame.code ? `${frame.type} ${frame.code}` : frame.type);
      ws.close();
    });
  });
}

describe('npm run demo: neither a website nor the network can use it', () => {
  it('tokens signed with the published default secret are refused, browsers only from the chat page, the CLI path still works', async () => {
    const demo = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), `${ROOT}/scripts/demo.ts`], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', APP_PORT: '0', DEV_API_PORT: '0', CHAT_PAGE_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    demo.stdout.on('data', (d: Buffer) => (output += d.toString()));
    demo.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((resolve) => demo.once('exit', resolve));
    try {
      const until = Date.now() + 30_000;
      while (!/Ctrl-C stops/.test(output)) {
        if (Date.now() > until) throw new Error(`the demo did not start: ${output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const gateway = /gateway +(ws:\S+)/.exec(output)![1]!;
      const devApi = /dev API +(http:\S+)/.exec(output)![1]!;
      const page = new URL(/chat page +(http:\S+)/.exec(output)![1]!);

      // What a website's script or a LAN host could do with the dev API's published default secret.
      const forged = await new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject('1').setIssuedAt().setExpirationTime('1h').sign(new TextEncoder().encode(DEFAULT_SECRET));
      assert.equal(await registerOver(gateway, forged), 'error unauthorized', 'a token signed with the default secret');

      // The CLI client's way: a token minted by the dev API (on loopback), no Origin.
      const minted = ((await (await fetch(`${devApi}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user_id":1}' })).json()) as { token: string }).token;
      assert.equal(await registerOver(gateway, minted), 'registered', 'no Origin (the CLI client)');
      assert.equal(await registerOver(gateway, minted, 'http://evil.example'), 'http 403', 'another website');
      assert.equal(await registerOver(gateway, minted, `http://localhost:${Number(page.port) + 1}`), 'http 403', 'another port of localhost');
      for (const host of ['localhost', '127.0.0.1']) assert.equal(await registerOver(gateway, minted, `http://${host}:${page.port}`), 'registered', `the chat page at ${host}`);
      demo.kill('SIGTERM');
      assert.equal(await exited, 0, output);
    } finally {
      demo.kill('SIGKILL');
    }
  });
});

describe('chat page state', () => {
  it('the ids a chat remembers as deleted are bounded (a member deleting by the thousand does not grow every page): the oldest go', async () => {
    const { ChatView, DELETED_KEPT } = await import('../../web/state.js');
    const view = new ChatView({ id: 1 } as unknown as ConstructorParameters<typeof ChatView>[0], 'chat');
    for (let i = 0; i < DELETED_KEPT + 500; i++) view.remove(`gone-${i}`);
    assert.equal(view.deleted.size, DELETED_KEPT);
    assert.equal(view.deleted.has('gone-0'), false);
    assert.equal(view.deleted.has(`gone-${DELETED_KEPT + 499}`), true);
  });
});
