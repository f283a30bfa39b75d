import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startDevApi, type DevApi } from '../../dev-api/app.js';
import { TestClient } from '../support/client.js';
import { reaped } from '../support/children.js';
import { GatewayProcess, ROOT } from '../support/process.js';

describe('configuration errors exit 2 with one line naming the variable', { concurrency: 4 }, () => {
  // One of each kind of check, as a process (exit 2, one line); every variable's checks are in
  // tests/unit/config.test.ts, in-process (the same code path, without a process start each).
  const bad: Array<[Record<string, string>, string, RegExp?]> = [
    [{ APP_PORT: '70000' }, 'APP_PORT'],
    [{ REDIS_HOST: 'http://x:1' }, 'REDIS_HOST'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ ALLOWED_ORIGINS: 'not an origin' }, 'ALLOWED_ORIGINS'],
    // Not an integer at all: the message still gives the accepted range.
    [{ UPSTREAM_TIMEOUT_MS: '-5' }, 'UPSTREAM_TIMEOUT_MS', /between 1 and 86400000/],
  ];
  for (const [env, variable, says] of bad) {
    it(`${JSON.stringify(env)}`, async () => {
      const gw = GatewayProcess.spawn(env);
      const { code } = await gw.exited;
      assert.equal(code, 2);
      const lines = gw.output.trim().split('\n');
      assert.equal(lines.length, 1, gw.output);
      assert.match(lines[0]!, new RegExp(`\\b${variable}\\b`));
      if (says !== undefined) assert.match(lines[0]!, says);
    });
  }

  it('.env is read from the working directory and real env wins over it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ms-env-'));
    writeFileSync(join(dir, '.env'), 'APP_PORT=0\nRATE_LIMIT_PER_SEC=nope\n');
    const fromFile = GatewayProcess.spawn({}, dir);
    assert.equal((await fromFile.exited).code, 2);
    assert.match(fromFile.output, /RATE_LIMIT_PER_SEC/);
    const overridden = GatewayProcess.spawn({ RATE_LIMIT_PER_SEC: '7' }, dir);
    await overridden.listening();
    overridden.kill('SIGTERM');
    assert.equal((await overridden.exited).code, 0);
  });
});

describe('graceful shutdown and logs (real process, real signals)', () => {
  let api: DevApi;
  before(async () => {
    api = await startDevApi({ port: 0 });
  });
  after(() => api.close());

  // SIGHUP (a terminal hangup, a supervisor's reload) drains like SIGTERM: Node's default kills at once.
  for (const [signal, chat] of [['SIGTERM', 77], ['SIGHUP', 76]] as const) it(`${signal} with a save in flight: the message is acked and broadcast, clients get 1001, exit 0`, async () => {
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url, SHUTDOWN_TIMEOUT_MS: '5000' });
    await gw.listening();
    const a = await TestClient.connect(gw.wsUrl);
    const b = await TestClient.connect(gw.wsUrl);
    await a.register(await api.mintToken(1), chat);
    await b.register(await api.mintToken(2), chat);
    api.addFault({ op: 'save', delayMs: 700, times: 1 });
    const before = api.requests.length;
    a.send({ type: 'message', data: { id: `inflight-${chat}`, ciphertext: 'x' } });
    await api.waitForRequests(before + 1);
    gw.kill(signal);
    // Readiness flips and new upgrades are refused while draining.
    await new Promise((r) => setTimeout(r, 150));
    const ready = await fetch(`${gw.httpUrl}/readyz`);
    assert.equal(ready.status, 503);
    await assert.rejects(TestClient.connect(gw.wsUrl), (err: { status?: number }) => err.status === 503);
    const ack = await a.next({ type: 'ack', id: `inflight-${chat}` }, 5000);
    assert.equal(ack.duplicate, false);
    await b.next({ type: 'message' }, 5000);
    assert.equal((await a.closed).code, 1001);
    assert.equal((await b.closed).code, 1001);
    assert.equal((await gw.exited).code, 0);
    // Closing the engine on purpose is not an outage: no line an alert on "lost" would fire on.
    assert.match(gw.output, /"engine closed"/);
    assert.doesNotMatch(gw.output, /connection lost/);
  });

  // Node as PID 1 (a container without an init) ignores a signal nobody handles: the handler must
  // be there from the first moment, not once the gateway has started (~1 s of module loading and
  // start-up). Not PID 1 here, but the same handler decides: without it the default kills the process.
  it('a SIGTERM during start-up is caught and acted on once started: the gateway drains and exits 0', async () => {
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url });
    const pid = gw.proc.pid!;
    // SigCgt: the signals the process has handlers for. Node itself catches SIGTERM and SIGINT
    // from its start (to restore the terminal, then die), but not SIGHUP (1: bit 0), which the
    // gateway catches with them (its logs are not a terminal here): its bit tells the handlers are in.
    const catchesSighup = () => {
      const mask = /^SigCgt:\s*([0-9a-f]+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '0';
      return (BigInt(`0x${mask}`) & 1n) !== 0n;
    };
    const until = Date.now() + 10_000;
    while (!catchesSighup() && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    assert.ok(catchesSighup(), 'stop signals caught');
    assert.doesNotMatch(gw.output, /gateway listening/, 'caught before the gateway started');
    gw.kill('SIGTERM');
    assert.deepEqual(await gw.exited, { code: 0, signal: null });
    assert.match(gw.output, /"signal":"SIGTERM"[^\n]*"msg":"shutting down"/);
  });

  // npm runs a script as `sh -c '<script>'` and passes a SIGTERM or SIGINT it gets to that child
  // only: without `exec`, sh dies and the gateway keeps running as an orphan (port held, no drain)
  // while npm exits 143. `npm run dev` is tested as a real process (`npm start` is the same line
  // with `node dist/…`, which would need a build first); every long-running script must exec.
  it('`npm run dev`: a SIGTERM to npm\'s own pid (not its group) reaches the gateway, which drains and exits 0 with npm; nothing is left listening', async () => {
    const scripts = (JSON.parse(readFileSync(`${ROOT}/package.json`, 'utf8')) as { scripts: Record<string, string> }).scripts;
    for (const name of ['start', 'dev', 'dev-api', 'demo']) assert.match(scripts[name] ?? '', /^exec /, `npm run ${name} does not exec its process`);
    // Its own process group, so the finally below can end whatever an orphan would be.
    const npm = reaped(spawn('npm', ['run', 'dev'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', npm_config_update_notifier: 'false', APP_PORT: '0', AUTH_HOST: api.url },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    }));
    let output = '';
    npm.stdout.on('data', (d: Buffer) => (output += d.toString()));
    npm.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
    try {
      let port = 0;
      for (const until = Date.now() + 30_000; port === 0 && Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
        port = Number(/"port":(\d+)[^\n]*"msg":"gateway listening"/.exec(output)?.[1] ?? 0);
      }
      assert.ok(port > 0, `the gateway did not start:\n${output}`);
      npm.kill('SIGTERM');
      assert.equal(await exited, 0, output);
      for (const until = Date.now() + 2000; !output.includes('"msg":"shutdown complete"') && Date.now() < until; ) await new Promise((r) => setTimeout(r, 25));
      assert.match(output, /"msg":"shutdown complete"/);
      const refused = await new Promise<boolean>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        socket.once('connect', () => (socket.destroy(), resolve(false)));
        socket.once('error', () => resolve(true));
      });
      assert.ok(refused, `port ${port} is still held: the gateway outlived npm`);
    } finally {
      try {
        process.kill(-npm.pid!, 'SIGKILL');
      } catch {
        // the group is gone already
      }
    }
  });

  it('a second signal exits at once with 1', async () => {
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url, SHUTDOWN_TIMEOUT_MS: '10000' });
    await gw.listening();
    const a = await TestClient.connect(gw.wsUrl);
    await a.register(await api.mintToken(1), 78);
    api.addFault({ op: 'save', hang: true, times: 1 });
    const before = api.requests.length;
    a.send({ type: 'message', data: { id: 'stuck', ciphertext: 'x' } });
    await api.waitForRequests(before + 1);
    gw.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    gw.kill('SIGINT');
    assert.equal((await gw.exited).code, 1);
    api.clearFaults();
  });

  it('no token ever appears in the logs, even at trace level and on failures', async () => {
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url, LOG_LEVEL: 'trace' });
    await gw.listening();
    const good = await api.mintToken(5);
    const expired = await api.mintToken(6, { expired: true });
    const c = await TestClient.connect(gw.wsUrl);
    await c.register(good, 79);
    await c.request({ type: 'register', token: expired, chat_id: 80 }, { type: 'error' });
    await c.request({ type: 'register', token: 'plain-secret-token-value', chat_id: 81 }, { type: 'error' });
    api.addFault({ op: 'save', status: 500, times: 1 });
    await c.request({ type: 'message', data: { id: 'log-1', ciphertext: 'x' } }, { type: 'error' });
    api.addFault({ op: 'verify', body: {}, times: 1 });
    await c.request({ type: 'register', token: good, chat_id: 82 }, { type: 'error' });
    c.sendRaw(`{"type":"register","token":"${good}"`); // malformed frame carrying a token
    // A token where an id goes: not a valid id, so not logged (a debug line names the chat).
    await c.request({ type: 'unregister', chat_id: good }, { type: 'error' });
    await c.request({ type: 'ping' }, { type: 'pong' });
    c.close();
    gw.kill('SIGTERM');
    await gw.exited;
    assert.ok(gw.output.length > 0);
    for (const secret of [good, good.slice(0, 64), expired, 'plain-secret-token-value', good.split('.')[2]!]) {
      assert.ok(!gw.output.includes(secret), 'a token leaked into the logs');
    }
    for (const line of gw.output.trim().split('\n')) assert.doesNotThrow(() => JSON.parse(line), `not JSON: ${line}`);
    // At debug and trace, the connection's life is there line by line (ids and outcomes).
    const said = gw.output.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; code?: string | number; chat?: string });
    for (const msg of ['connection opened', 'registered', 'request refused', 'connection ended', 'connection closed']) {
      assert.ok(said.some((l) => l.msg === msg), `no "${msg}" line at trace level`);
    }
    assert.ok(said.some((l) => l.msg === 'request refused' && l.code === 'upstream_unavailable'), 'the refused save is logged with its code');
  });

  it('start-up log names the embedded engine and how to scale out', async () => {
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url });
    await gw.listening();
    assert.match(gw.output, /in-memory engine[^\n]*REDIS_HOST/);
    assert.doesNotMatch(gw.output, /not read/);
    gw.kill('SIGINT');
    assert.equal((await gw.exited).code, 0);
    // Without ALLOWED_ORIGINS any web page may connect: said, and warned about.
    const lines = gw.output.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; origins?: unknown });
    assert.equal(lines.find((l) => l.msg === 'gateway listening')?.origins, 'any');
    assert.equal(lines.find((l) => l.msg.startsWith('ALLOWED_ORIGINS is unset'))?.level, 40, gw.output);
  });

  it('a Redis variable the gateway does not read (REDIS_URL for REDIS_HOST) is a warning: the instance would run alone on the memory engine', async () => {
    const gw = GatewayProcess.spawn({ APP_PORT: '0', AUTH_HOST: api.url, REDIS_URL: 'redis://10.0.0.1:6379', REDIS_PASSWORD: 'pw', ALLOWED_ORIGINS: 'https://Chat.Example.com:443' });
    await gw.listening();
    const warning = gw.output.split('\n').map((l) => (l.startsWith('{') ? (JSON.parse(l) as { level: number; msg: string; variables?: string[] }) : null)).find((l) => l?.msg.startsWith('not read'));
    assert.ok(warning, gw.output);
    assert.deepEqual([warning.level, warning.variables], [40, ['REDIS_PASSWORD', 'REDIS_URL']]);
    assert.match(warning.msg, /memory engine/);
    assert.doesNotMatch(gw.output, /10\.0\.0\.1|"pw"/, 'values are not logged');
    gw.kill('SIGINT');
    assert.equal((await gw.exited).code, 0);
    assert.match(gw.output, /"origins":\["https:\/\/chat\.example\.com"\][^\n]*"msg":"gateway listening"/);
    assert.doesNotMatch(gw.output, /ALLOWED_ORIGINS is unset/);
  });
});
