import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig, readEnv, redactUrl } from '../../src/config/index.js';

describe('config', () => {
  it('defaults match the configuration table in the README', () => {
    const c = loadConfig({});
    assert.deepEqual(
      {
        port: c.appPort, auth: c.authHost, redis: c.redis, verify: c.authVerifyPath, save: c.messageSavePath, path: c.messagePath,
        timeout: c.upstreamTimeoutMs, conns: c.upstreamConnections, cache: c.authCacheTtlMs, max: c.maxMessageBytes,
        rate: c.rateLimitPerSec, burst: c.rateLimitBurst, reg: c.registerTimeoutMs, chats: c.maxChatsPerConnection,
        ping: c.pingIntervalMs, buf: c.maxBufferedBytes, origins: c.allowedOrigins, shutdown: c.shutdownTimeoutMs, ttl: c.presenceTtlMs, batch: c.presenceBatchMs, log: c.logLevel,
      },
      {
        port: 3000, auth: 'http://localhost:8000', redis: null, verify: '/auth/verify', save: '/chat/massage', path: '/chat/{chat_id}/messages/{message_id}',
        timeout: 5000, conns: 64, cache: 30000, max: 65536, rate: 20, burst: 50, reg: 10000, chats: 100,
        ping: 25000, buf: 4194304, origins: null, shutdown: 10000, ttl: 60000, batch: 200, log: 'info',
      },
    );
  });

  it('REDIS_HOST: URL, bare host:port, password kept, cluster seeds', () => {
    assert.deepEqual(loadConfig({ REDIS_HOST: 'redis://localhost:6379' }).redis, { urls: ['redis://localhost:6379'], cluster: false });
    assert.deepEqual(loadConfig({ REDIS_HOST: 'cache:6380' }).redis?.urls, ['redis://cache:6380']);
    assert.deepEqual(loadConfig({ REDIS_HOST: 'rediss://:pw@h:1' }).redis?.urls, ['rediss://:pw@h:1']);
    assert.deepEqual(loadConfig({ REDIS_HOST: 'a:1, b:2', REDIS_CLUSTER: 'true' }).redis, { urls: ['redis://a:1', 'redis://b:2'], cluster: true });
    assert.throws(() => loadConfig({ REDIS_HOST: 'a:1,b:2' }), /REDIS_HOST/);
    assert.throws(() => loadConfig({ REDIS_CLUSTER: 'true' }), /REDIS_CLUSTER/);
  });

  it('bad values name the variable', () => {
    for (const [name, value] of [['APP_PORT', '1.5'], ['RATE_LIMIT_PER_SEC', '0'], ['AUTH_HOST', 'http://x/path'], ['ALLOWED_ORIGINS', 'x'], ['AUTH_VERIFY_PATH', 'no-slash'], ['PRESENCE_BATCH_MS', '-1'], ['PRESENCE_BATCH_MS', '10001']]) {
      assert.throws(() => loadConfig({ [name!]: value }), (err: unknown) => err instanceof ConfigError && err.variable === name);
    }
  });

  it('ALLOWED_ORIGINS is a trimmed list', () => {
    assert.deepEqual(loadConfig({ ALLOWED_ORIGINS: 'https://a.example, http://b.example:8080' }).allowedOrigins, ['https://a.example', 'http://b.example:8080']);
  });

  it('.env is read; the real environment wins', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ms-cfg-'));
    const file = join(dir, '.env');
    writeFileSync(file, '# comment\nAPP_PORT=4000\nLOG_LEVEL="debug"\n');
    assert.equal(loadConfig(readEnv({}, file)).appPort, 4000);
    assert.equal(loadConfig(readEnv({}, file)).logLevel, 'debug');
    assert.equal(loadConfig(readEnv({ APP_PORT: '5000' }, file)).appPort, 5000);
    assert.equal(loadConfig(readEnv({}, join(dir, 'missing.env'))).appPort, 3000);
  });

  it('redactUrl hides the password', () => {
    assert.equal(redactUrl('redis://user:secret@h:1'), 'redis://user:***@h:1');
  });
});
