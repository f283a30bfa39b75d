import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { describe, it } from 'node:test';
import { TestClient, presence } from '../support/client.js';
import { ENGINE_MODES, metric, uniqueChat, useHarness, waitFor, type Instance } from '../support/harness.js';

const SERIES = [
  'message_service_connections',
  'message_service_registrations',
  'message_service_ops_total',
  'message_service_upstream_request_duration_seconds',
  'message_service_deliveries_total',
  'message_service_engine_publish_duration_seconds',
  'message_service_slow_consumer_closes_total',
] as const;

async function get(inst: Instance, path: string, init: RequestInit = {}): Promise<{ status: number; type: string; body: string }> {
  const res = await fetch(`${inst.gateway.url}${path}`, { signal: AbortSignal.timeout(10_000), ...init });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

/** Sum of every sample of `name` whose labels include `labels` (histograms: use the _count name). */
async function total(inst: Instance, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = (await get(inst, '/metrics')).body;
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    const series = line.slice(0, space);
    if (series.split('{')[0] !== name) continue;
    if (want.every((w) => series.includes(w))) sum += Number(line.slice(space + 1));
  }
  return sum;
}

const WEBSOCKET_UPGRADE = { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' };

/** A plain request with upgrade headers on `path`: the status line the server answers with. */
async function rawUpgrade(inst: Instance, path: string): Promise<number> {
  return (await upgradeRequest(inst, path)).status;
}

/** A request with `headers` (a WebSocket upgrade unless told otherwise): its answer, or the 101's headers. */
function upgradeRequest(inst: Instance, path: string, headers: Record<string, string> = WEBSOCKET_UPGRADE, method = 'GET', body?: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: inst.gateway.port, path, method, headers });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
    });
    req.on('error', reject);
    req.end(body);
  });
}

for (const mode of ENGINE_MODES) {
  describe(`http endpoints [${mode}]`, () => {
    const h = useHarness(mode, { SHUTDOWN_TIMEOUT_MS: '3000' });
    const gw = () => h.instances[0]!;

    it('GET /healthz → 200', async () => {
      const res = await get(gw(), '/healthz');
      assert.equal(res.status, 200);
      assert.match(res.type, /json/);
    });

    it('GET /readyz → 200 when the engine is connected', async () => {
      const res = await get(gw(), '/readyz');
      assert.equal(res.status, 200);
    });

    it('GET /metrics is Prometheus text with every series the README lists', async () => {
      const res = await get(gw(), '/metrics');
      assert.equal(res.status, 200);
      assert.match(res.type, /^text\/plain/);
      for (const name of SERIES) assert.match(res.body, new RegExp(`^# TYPE ${name} `, 'm'), `series ${name} missing`);
      assert.match(res.body, /^# TYPE message_service_upstream_request_duration_seconds histogram$/m);
      assert.match(res.body, /^# TYPE message_service_engine_publish_duration_seconds histogram$/m);
      assert.match(res.body, /^# TYPE message_service_ops_total counter$/m);
      assert.match(res.body, /^# TYPE message_service_connections gauge$/m);
      assert.match(res.body, /^message_service_slow_consumer_closes_total \d+$/m);
    });

    it('metric values move with connections, registrations, messages, deliveries and errors', async () => {
      const inst = await h.gateway(); // its own registry: nothing else touches these numbers
      assert.equal(await metric(inst, 'message_service_connections'), 0);
      assert.equal(await metric(inst, 'message_service_registrations'), 0);

      const a = await TestClient.connect(inst.wsUrl);
      await waitFor(async () => (await metric(inst, 'message_service_connections')) === 1, 3000, 'connections gauge 1');
      const b = await TestClient.connect(inst.wsUrl);
      await waitFor(async () => (await metric(inst, 'message_service_connections')) === 2, 3000, 'connections gauge 2');

      const chat = uniqueChat();
      await a.register(await h.token(1), chat);
      await b.register(await h.token(2), chat);
      await waitFor(async () => (await metric(inst, 'message_service_registrations')) === 2, 3000, 'registrations gauge 2');
      assert.ok((await total(inst, 'message_service_ops_total', { type: 'register', result: 'ok' })) >= 2);
      assert.ok((await total(inst, 'message_service_upstream_request_duration_seconds_count', { op: 'verify' })) >= 1);
      // b's arrival is announced to a: one delivery at least, and at least one engine publish.
      await a.next(presence(2, 'online'));

      const okBefore = await total(inst, 'message_service_ops_total', { type: 'message', result: 'ok' });
      const deliveriesBefore = await total(inst, 'message_service_deliveries_total');
      const savesBefore = await total(inst, 'message_service_upstream_request_duration_seconds_count', { op: 'save' });
      const publishesBefore = await total(inst, 'message_service_engine_publish_duration_seconds_count');
      assert.ok(deliveriesBefore >= 1, `deliveries before the message: ${deliveriesBefore}`);
      assert.ok(publishesBefore >= 1, `publishes before the message: ${publishesBefore}`);

      await a.request({ type: 'message', data: { id: `m-${chat}`, ciphertext: 'x' } }, { type: 'ack' });
      await b.next({ type: 'message' });
      await waitFor(async () => (await total(inst, 'message_service_ops_total', { type: 'message', result: 'ok' })) === okBefore + 1, 3000, 'ops_total message ok +1');
      await waitFor(async () => (await total(inst, 'message_service_deliveries_total')) >= deliveriesBefore + 1, 3000, 'deliveries +1');
      assert.equal(await total(inst, 'message_service_upstream_request_duration_seconds_count', { op: 'save' }), savesBefore + 1);
      assert.ok((await total(inst, 'message_service_upstream_request_duration_seconds_sum', { op: 'save' })) > 0);
      assert.ok((await total(inst, 'message_service_engine_publish_duration_seconds_count')) >= publishesBefore + 1);
      const bucketLines = (await get(inst, '/metrics')).body.split('\n').filter((l) => l.startsWith('message_service_upstream_request_duration_seconds_bucket{') && l.includes('op="save"'));
      assert.ok(bucketLines.some((l) => l.includes('le="+Inf"')), 'histogram has a +Inf bucket');

      // Rejected requests are counted by their error code.
      const badBefore = await total(inst, 'message_service_ops_total', { result: 'bad_request' });
      await a.request({ type: 'message', data: { id: 'bad id', ciphertext: 'x' } }, { type: 'error' });
      assert.equal(await total(inst, 'message_service_ops_total', { result: 'bad_request' }), badBefore + 1);
      const unsupportedBefore = await total(inst, 'message_service_ops_total', { result: 'unsupported_type' });
      await a.request({ type: 'nope' }, { type: 'error' });
      assert.equal(await total(inst, 'message_service_ops_total', { result: 'unsupported_type' }), unsupportedBefore + 1);

      a.close();
      b.close();
      await waitFor(async () => (await metric(inst, 'message_service_connections')) === 0, 3000, 'connections gauge back to 0');
      await waitFor(async () => (await metric(inst, 'message_service_registrations')) === 0, 3000, 'registrations gauge back to 0');
    });

    it('unknown paths and methods → 404', async () => {
      for (const path of ['/', '/nope', '/healthz/extra', '/metricsx', '/ws/extra', '/READYZ']) {
        assert.equal((await get(gw(), path)).status, 404, path);
      }
      assert.equal((await get(gw(), '/healthz', { method: 'POST', body: '{}' })).status, 404, 'POST /healthz');
      assert.equal((await get(gw(), '/metrics', { method: 'DELETE' })).status, 404, 'DELETE /metrics');
      // The server API's error shape, on the same port.
      assert.deepEqual(JSON.parse((await get(gw(), '/nope')).body), { error: 'not_found', message: 'no such route' });
    });

    it('GET /ws without an upgrade → 426', async () => {
      const res = await get(gw(), '/ws');
      assert.equal(res.status, 426);
      assert.deepEqual(JSON.parse(res.body), { error: 'upgrade_required', message: 'WebSocket upgrade required' });
    });

    it('an upgrade on another path → 404; on /ws it is accepted (101)', async () => {
      for (const path of ['/', '/other', '/ws/', '/ws/extra', '/healthz']) {
        await assert.rejects(TestClient.connect(`ws://127.0.0.1:${gw().gateway.port}${path}`), (err: { status?: number }) => err.status === 404, path);
        assert.equal(await rawUpgrade(gw(), path), 404, `raw upgrade ${path}`);
      }
      assert.equal(await rawUpgrade(gw(), '/ws'), 101);
      const ok = await TestClient.connect(gw().wsUrl);
      assert.deepEqual(await ok.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
      ok.close();
    });

    it('a refused upgrade answers in the endpoints\' error shape; an offered subprotocol is never accepted', async () => {
      const refused = await upgradeRequest(gw(), '/other');
      assert.deepEqual([refused.status, refused.headers['content-type'], JSON.parse(refused.body).error], [404, 'application/json', 'not_found']);
      const offered = await upgradeRequest(gw(), '/ws', { ...WEBSOCKET_UPGRADE, 'Sec-WebSocket-Protocol': 'message-service.v2, mqtt' });
      assert.equal(offered.status, 101);
      assert.equal(offered.headers['sec-websocket-protocol'], undefined);
    });

    it('an Upgrade other than websocket (h2c, as curl --http2 sends) is ignored: GET /readyz, /healthz, /metrics answer as usual; a request with a body is 400', async () => {
      const h2c = { Connection: 'Upgrade, HTTP2-Settings', Upgrade: 'h2c', 'HTTP2-Settings': 'AAMAAABkAARAAAAAAAIAAAAA' };
      const ready = await upgradeRequest(gw(), '/readyz', h2c);
      assert.deepEqual([ready.status, JSON.parse(ready.body).status], [200, 'ready']);
      assert.equal((await upgradeRequest(gw(), '/healthz', h2c)).status, 200);
      assert.match((await upgradeRequest(gw(), '/metrics', h2c)).body, /message_service_connections/);
      assert.equal((await upgradeRequest(gw(), '/nope', h2c)).status, 404);
      const posted = await upgradeRequest(gw(), '/healthz', { ...h2c, 'Content-Type': 'application/json', 'Content-Length': '2' }, 'POST', '{}');
      assert.deepEqual([posted.status, JSON.parse(posted.body).error], [400, 'bad_request']);
      // The instance still serves WebSocket clients.
      const ok = await TestClient.connect(gw().wsUrl);
      assert.deepEqual(await ok.request({ type: 'ping' }, { type: 'pong' }), { type: 'pong' });
      ok.close();
    });

    it('/readyz turns 503 and upgrades are refused 503 once shutdown starts; /healthz stays 200 while running', async () => {
      const inst = await h.gateway({ SHUTDOWN_TIMEOUT_MS: '5000' });
      assert.equal((await get(inst, '/readyz')).status, 200);
      const chat = uniqueChat();
      const a = await TestClient.connect(inst.wsUrl);
      await a.register(await h.token(1), chat);
      // Keep one request in flight so the instance is still serving while it drains.
      h.api.addFault({ op: 'save', delayMs: 1500, times: 1 });
      const saves = h.api.requests.length;
      a.send({ type: 'message', data: { id: `drain-${chat}`, ciphertext: 'x' } });
      await h.api.waitForRequests(saves + 1, 3000);

      const shutdown = inst.gateway.shutdown();
      const ready = await get(inst, '/readyz');
      assert.equal(ready.status, 503);
      assert.equal((await get(inst, '/healthz')).status, 200);
      await assert.rejects(TestClient.connect(inst.wsUrl), (err: { status?: number }) => err.status === 503);
      // The instance on the other side is unaffected.
      assert.equal((await get(gw(), '/readyz')).status, 200);

      // The request in flight still completes, then the client is told to go away.
      await a.next({ type: 'ack', id: `drain-${chat}` }, 5000);
      assert.equal((await a.closed).code, 1001);
      await shutdown;
    });
  });
}
