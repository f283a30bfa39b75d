import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, loadConfig, normalizeOrigin, readEnv, redactUrl, unreadRedisVariables } from '../../src/config/index.js';
import { TestClient } from '../support/client.js';
import { Harness } from '../support/harness.js';

/** loadConfig(env) must fail naming `variable`, with a message that contains none of `secrets`. */
function refused(env: Record<string, string>, variable: string, secrets: string[] = []): void {
  assert.throws(
    () => loadConfig(env),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `${JSON.stringify(env)}: ${String(err)}`);
      assert.equal(err.variable, variable, err.message);
      assert.ok(!err.message.includes('\n'), 'one line');
      for (const secret of secrets) assert.ok(!err.message.includes(secret), `${err.message} shows ${secret}`);
      return true;
    },
    `${JSON.stringify(env)} is accepted`,
  );
}

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

  it('the README configuration table lists every variable the gateway reads, and each default it states is the one in force', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const table = readme.slice(readme.indexOf('| variable | meaning | default |')).split('\n\n')[0]!.split('\n').slice(2);
    const ticked = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    const documented = new Set<string>();
    const base = loadConfig({});
    for (const row of table) {
      const cells = row.split(' | ');
      const names = ticked(cells[0]!);
      const defaults = ticked(cells.at(-1)!);
      for (const name of names) documented.add(name);
      if (cells.at(-1)!.includes('unset')) continue;
      assert.equal(defaults.length, names.length, row);
      // Setting the stated default changes nothing.
      names.forEach((name, i) => assert.deepEqual(loadConfig({ [name]: defaults[i]! }), base, `${name}=${defaults[i]}`));
    }
    const source = readFileSync(new URL('../../src/config/index.ts', import.meta.url), 'utf8');
    const read = new Set([...source.matchAll(/\('([A-Z][A-Z0-9_]+)'/g)].map((m) => m[1]!));
    assert.ok(read.size > 20, 'the variables are found in the source');
    assert.deepEqual([...read].filter((name) => !documented.has(name)), [], 'read but not in the README');
    assert.deepEqual([...documented].filter((name) => !read.has(name)), [], 'in the README but not read');
  });

  it('Redis variables the gateway does not read are listed for a warning; what Kubernetes sets for a Service named redis is not', () => {
    const kubernetes = { REDIS_PORT: 'tcp://10.0.0.5:6379', REDIS_SERVICE_HOST: '10.0.0.5', REDIS_SERVICE_PORT: '6379', REDIS_PORT_6379_TCP_ADDR: '10.0.0.5' };
    assert.deepEqual(unreadRedisVariables({ ...kubernetes, REDIS_HOST: 'redis://r:6379', REDIS_CLUSTER: 'false' }), []);
    assert.deepEqual(unreadRedisVariables({ ...kubernetes, REDIS_URL: 'redis://r:6379', REDIS_PASSWORD: '', REDIS_DB: '1' }), ['REDIS_DB', 'REDIS_URL']);
    assert.deepEqual(unreadRedisVariables({ REDIS_PORT: '6379' }), ['REDIS_PORT'], 'a port number is someone\'s setting');
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
    for (const [name, value] of [
      ['APP_PORT', '1.5'],
      ['APP_PORT', 'abc'],
      ['RATE_LIMIT_PER_SEC', '0'],
      ['RATE_LIMIT_BURST', '0'],
      ['AUTH_HOST', 'http://x/path'],
      ['AUTH_HOST', 'ftp://x'],
      ['REDIS_CLUSTER', 'maybe'],
      ['MESSAGE_PATH', '/chat/{chat_id}'],
      ['ALLOWED_ORIGINS', 'x'],
      ['AUTH_VERIFY_PATH', 'no-slash'],
      ['PRESENCE_BATCH_MS', '-1'],
      ['PRESENCE_BATCH_MS', '10001'],
    ]) {
      assert.throws(() => loadConfig({ [name!]: value }), (err: unknown) => err instanceof ConfigError && err.variable === name, `${name}=${value}`);
    }
    // A value that is not an integer at all is told the accepted range too.
    assert.throws(() => loadConfig({ MAX_BUFFERED_BYTES: 'lots' }), /MAX_BUFFERED_BYTES: must be an integer at least 1024/);
    // Too large: the bound it broke, and the value as written (not rounded).
    assert.throws(() => loadConfig({ MAX_BUFFERED_BYTES: '99999999999999999999' }), /MAX_BUFFERED_BYTES: must be between 1024 and 9007199254740991, got 99999999999999999999$/);
    assert.throws(() => loadConfig({ MAX_BUFFERED_BYTES: '9007199254740993' }), /got 9007199254740993$/);
    assert.throws(() => loadConfig({ HISTORY_SIZE: '-1' }), /HISTORY_SIZE: must be an integer between 0 and 10000/);
  });

  it('*_PATH: a URL path with each placeholder once — a space, a fragment, a dot segment or a repeated placeholder is refused at start-up', () => {
    for (const [name, value] of [
      ['AUTH_VERIFY_PATH', '/auth/verify x'],
      ['AUTH_VERIFY_PATH', '/auth/verify#frag'],
      ['MESSAGE_SAVE_PATH', '/chat/../massage'],
      ['AUTH_VERIFY_PATH', '/api/%2e%2e/admin/verify'],
      ['AUTH_VERIFY_PATH', '/api/.%2E/verify'],
      ['AUTH_VERIFY_PATH', '/api/%2e/verify'],
      ['MESSAGE_SAVE_PATH', '/chat/{chat_id}'],
      ['MESSAGE_PATH', '/chat/{chat_id}/messages/{message_id}/{chat_id}'],
      ['MESSAGE_PATH', '/chat/{chat_id}/messages'],
      ['MESSAGE_PATH', '/chat/{chat_id}/./{message_id}'],
      ['MESSAGE_PATH', '/chat/{chat_id}/{message_id}/%zz'],
    ]) {
      assert.throws(() => loadConfig({ [name!]: value! }), (err: unknown) => err instanceof ConfigError && err.variable === name, `${name}=${value}`);
    }
    const c = loadConfig({ AUTH_VERIFY_PATH: '/v2/auth/verify?scope=chat', MESSAGE_PATH: '/m/{message_id}?chat={chat_id}', MESSAGE_SAVE_PATH: '/api/chat%20messages' });
    assert.equal(c.authVerifyPath, '/v2/auth/verify?scope=chat');
    assert.equal(c.messagePath, '/m/{message_id}?chat={chat_id}');
    assert.equal(c.messageSavePath, '/api/chat%20messages');
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

  it('a malformed .env line never lets the lines after it through unchecked', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ms-cfg-'));
    const file = join(dir, '.env');
    writeFileSync(file, 'APP_PORT=4000\nBROKEN LINE "unterminated\nLOG_LEVEL=nope\n');
    // The same on every Node version (Node 20's parseEnv swallows the next line into one odd name,
    // Node 24's skips the broken line): the line is named.
    assert.throws(() => loadConfig(readEnv({}, file)), (err: unknown) => err instanceof ConfigError && /^\.env: line 2 cannot be parsed/.test(err.message));
    // A line without `=` may hold a secret: the error names its line, never its text.
    writeFileSync(file, 'APP_PORT=4000\nREDIS_HOST: redis://:hunter2-SECRET@redis:6379\nAPI_KEY opkey-SECRET-0123456789\nAPP_PORT=4002\nLOG_LEVEL=nope\n');
    assert.throws(() => loadConfig(readEnv({}, file)), (err: unknown) => err instanceof ConfigError && !err.message.includes('SECRET') && /^\.env: line 2 cannot be parsed/.test(err.message));
    // Node 24 alone would start with the server API off: the key's line lacks `=`.
    writeFileSync(file, 'API_KEY opkey-SECRET-0123456789\n');
    assert.throws(() => loadConfig(readEnv({}, file)), /\.env: line 1 cannot be parsed/);
    // A quote never closed (both versions took it into the value, or dropped the rest), and a malformed last line.
    writeFileSync(file, 'APP_PORT=4000\nAPI_KEY="opkey-SECRET-0123456789\nLOG_LEVEL=info\n');
    assert.throws(() => loadConfig(readEnv({}, file)), (err: unknown) => err instanceof ConfigError && !err.message.includes('SECRET') && /^\.env: line 2 cannot be parsed/.test(err.message));
    // A quote "closed" only by the next assignment's own quotes: the opening line is named.
    writeFileSync(file, "NOTE='deploy notes\nREDIS_HOST='redis://redis:6379'\nAPP_PORT=3000\n");
    assert.throws(() => loadConfig(readEnv({}, file)), /\.env: line 1 cannot be parsed/);
    writeFileSync(file, 'APP_PORT=4000\nLOG_LEVEL debug');
    assert.throws(() => loadConfig(readEnv({}, file)), /\.env: line 2 cannot be parsed/);
    // A quoted value that spans lines, a quote inside an unquoted value, comments and blank lines are fine.
    writeFileSync(file, '# a comment\n\nNOTES="first-line\nsecond-line"\nWS_PATH=/ws # trailing\nDEV_NOTE=it\'s "fine"\nAPP_PORT=4003\n');
    assert.equal(loadConfig(readEnv({}, file)).appPort, 4003);
    // The line that set the odd name, not an earlier one inside a quoted value that spans lines.
    writeFileSync(file, 'NOTE="see\nMY-VAR=x is wrong\n"\nPORT=8080\nMY-VAR=1\n');
    assert.throws(() => loadConfig(readEnv({}, file)), /\.env: line 5 cannot be parsed/);
    // `export NAME=…` and spaces around `=` are fine.
    writeFileSync(file, 'export APP_PORT=4001\n  LOG_LEVEL = debug\n');
    assert.equal(loadConfig(readEnv({}, file)).appPort, 4001);
  });

  it('redactUrl hides everything between :// and the last @ (a password may contain @)', () => {
    assert.equal(redactUrl('redis://user:secret@h:1'), 'redis://***@h:1');
    assert.equal(redactUrl('redis://:hunter2@secret@redis host:6379'), 'redis://***@redis host:6379');
    assert.equal(redactUrl(':hunter2@secret@h:1'), '***@h:1');
    assert.equal(redactUrl('redis://h:1'), 'redis://h:1');
    // The same through a config error: the value cannot be parsed, and is shown without the password.
    refused({ REDIS_HOST: 'redis://:hunter2@secret@redis host:6379' }, 'REDIS_HOST', ['hunter2', 'secret']);
    refused({ REDIS_HOST: ':hunter2@secret@redis host:6379' }, 'REDIS_HOST', ['hunter2', 'secret']);
  });

  it('REDIS_HOST with a database number, path, query or fragment is refused (pub/sub ignores databases)', () => {
    for (const value of ['redis://127.0.0.1:6379/1', 'redis://127.0.0.1:6379/0', '127.0.0.1:6379/1', 'redis://h:1/99', 'redis://h:1/abc', '/abc', 'redis://h:1?db=2', 'redis://h:1/?db=2', 'redis://h:1?', 'redis://h:1#x', 'rediss://:pw@h:1/2']) {
      refused({ REDIS_HOST: value }, 'REDIS_HOST', ['pw@']);
    }
    refused({ REDIS_HOST: 'redis://a:1/1, redis://b:2', REDIS_CLUSTER: 'true' }, 'REDIS_HOST');
    assert.deepEqual(loadConfig({ REDIS_HOST: 'redis://h:1/' }).redis?.urls, ['redis://h:1/']);
    assert.deepEqual(loadConfig({ REDIS_HOST: 'rediss://user:p%40ss@h:1' }).redis?.urls, ['rediss://user:p%40ss@h:1']);
  });

  it('ALLOWED_ORIGINS is normalised as browsers send Origin: lower-case host, no default port', () => {
    assert.deepEqual(loadConfig({ ALLOWED_ORIGINS: 'https://Chat.Example.com' }).allowedOrigins, ['https://chat.example.com']);
    assert.deepEqual(loadConfig({ ALLOWED_ORIGINS: 'https://chat.example.com:443' }).allowedOrigins, ['https://chat.example.com']);
    assert.deepEqual(
      loadConfig({ ALLOWED_ORIGINS: 'HTTPS://A.example:443/, http://b.example:80, http://b.example:8080, https://a.example, http://[::1]:3000' }).allowedOrigins,
      ['https://a.example', 'http://b.example', 'http://b.example:8080', 'http://[::1]:3000'],
    );
    assert.equal(normalizeOrigin('https://Chat.Example.com:443'), 'https://chat.example.com');
    for (const header of ['null', 'garbage', 'https://a.example/path', 'https://u:p@a.example', 'https://a.example:99999', '']) {
      assert.equal(normalizeOrigin(header), null, header);
    }
  });

  it('ALLOWED_ORIGINS refuses entries that are not an http(s) origin, and a value that lists none', () => {
    for (const value of [',', ' , ,', '*', 'https://*.example.com', 'null', 'https://a.example/app', 'https://a.example?x=1', 'https://a.example#x', 'ftp://a.example', 'a.example', 'https://a.example:99999', 'https://a.example, garbage']) {
      refused({ ALLOWED_ORIGINS: value }, 'ALLOWED_ORIGINS');
    }
    refused({ ALLOWED_ORIGINS: 'https://admin:hunter2@a.example' }, 'ALLOWED_ORIGINS', ['hunter2']);
  });

  it('AUTH_HOST with credentials is refused without showing them', () => {
    refused({ AUTH_HOST: 'http://user:s3cr3t@host:8000' }, 'AUTH_HOST', ['s3cr3t']);
    refused({ AUTH_HOST: 'http://:hunter2@host:8000' }, 'AUTH_HOST', ['hunter2']);
    refused({ AUTH_HOST: 'http://user@host:8000' }, 'AUTH_HOST');
    refused({ AUTH_HOST: 'http://user:hunter2@ho st:8000' }, 'AUTH_HOST', ['hunter2']);
  });

  it('MAX_BUFFERED_BYTES must hold one maximal broadcast: at least 5 × MAX_MESSAGE_BYTES + 1024', () => {
    refused({ MAX_BUFFERED_BYTES: '65536' }, 'MAX_BUFFERED_BYTES');
    refused({ MAX_MESSAGE_BYTES: '1048576' }, 'MAX_BUFFERED_BYTES'); // the default 4 MiB is too small for it
    refused({ MAX_MESSAGE_BYTES: '131072', MAX_BUFFERED_BYTES: '131086' }, 'MAX_BUFFERED_BYTES'); // + the frame header is not enough
    refused({ MAX_MESSAGE_BYTES: '256', MAX_BUFFERED_BYTES: '2303' }, 'MAX_BUFFERED_BYTES');
    assert.equal(loadConfig({ MAX_MESSAGE_BYTES: '256', MAX_BUFFERED_BYTES: '2304' }).maxBufferedBytes, 2304);
    assert.equal(loadConfig({ MAX_MESSAGE_BYTES: '838656' }).maxMessageBytes, 838656); // the largest the default allows
  });
});

describe('config at the gateway', () => {
  const h = new Harness('memory');
  before(() => h.start());
  after(() => h.close());

  it('ALLOWED_ORIGINS: the Origin header is compared normalised; no Origin is let in; garbage is refused', async () => {
    const inst = await h.gateway({ ALLOWED_ORIGINS: 'https://Chat.Example.com:443' });
    const open = async (origin?: string) => (await TestClient.connect(inst.wsUrl, origin === undefined ? {} : { origin })).close();
    await open('https://chat.example.com');
    await open('https://CHAT.example.com:443');
    await open();
    for (const origin of ['https://evil.example.com', 'http://chat.example.com', 'https://chat.example.com:8443', 'null', 'garbage']) {
      await assert.rejects(open(origin), (err: { status?: number }) => err.status === 403, origin);
    }
  });

  it('one maximal message fits MAX_BUFFERED_BYTES at its minimum, though its broadcast is ~3.4 times its frame', async () => {
    // 5 × 1024 + 1024: the smallest MAX_BUFFERED_BYTES allowed with MAX_MESSAGE_BYTES=1024 (which a register with a JWT fits).
    const inst = await h.gateway({ MAX_MESSAGE_BYTES: '1024', MAX_BUFFERED_BYTES: '6144' });
    // The longest ids make the added fields (chat_id twice, sender_id) as large as they get.
    const chat = 'c'.repeat(64);
    const [sender, receiver] = [await TestClient.connect(inst.wsUrl), await TestClient.connect(inst.wsUrl)];
    await sender.register(await h.token('a'.repeat(64)), chat);
    await receiver.register(await h.token('b'.repeat(64)), chat);
    // `1e15` is 4 bytes in the frame and its 16 digits in the broadcast, which re-serialises the
    // JSON (the largest growth: a whole number past 2^53 − 1, like `1e20`, is refused).
    const head = '{"type":"message","data":{"id":"m","ciphertext":"x","k":[';
    const frame = `${head}${Array(Math.floor((1024 - head.length - 3 + 1) / 5)).fill('1e15').join(',')}]}}`;
    assert.ok(frame.length <= 1024 && frame.length > 1018, String(frame.length));
    sender.sendRaw(frame);
    await sender.next({ type: 'ack' });
    const got = await receiver.next({ type: 'message' });
    assert.ok(JSON.stringify(got).length > 3 * frame.length, 'the broadcast grew');
    assert.ok(receiver.isOpen, 'the receiver is not a slow consumer');
    sender.close();
    receiver.close();
  });
});
