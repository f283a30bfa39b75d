/**
 * The chat page's server forwards /api to three development-main-API routes and nothing else,
 * whatever spelling of a path it is sent (raw HTTP: fetch would normalize the path itself).
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startDevApi, type DevApi } from '../../dev-api/app.js';
import { startChatPage, type ChatPage } from '../../web/server.js';

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
