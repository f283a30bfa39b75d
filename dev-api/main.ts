/**
 * CLI entry of the development main API (`npm run dev-api`).
 *
 *   PORT            listen port                          (default 8000, the gateway's AUTH_HOST default)
 *   HOST            bind address; 0.0.0.0 inside docker  (default 127.0.0.1 — not reachable from outside)
 *   DEV_API_SECRET  HS256 secret for the dev tokens      (default: a random one per run; set it to keep
 *                   tokens valid across restarts)
 *
 * stdout gets one JSON line per request (method, path, status, ms) — never a header or a token.
 * Human help goes to stderr so stdout stays machine-readable.
 */
import { randomBytes } from 'node:crypto';
import { startDevApi, type DevApi } from './app.js';

interface Config {
  port: number;
  host: string;
  secret: string;
  /** Made for this run (DEV_API_SECRET unset or empty): no published secret anyone could sign tokens with. */
  randomSecret: boolean;
}

/** Same convention as the gateway: a bad value stops the process with exit code 2 and one line. */
function fail(message: string): never {
  process.stderr.write(`dev-api: ${message}\n`);
  process.exit(2);
}

function readConfig(env: NodeJS.ProcessEnv): Config {
  const rawPort = env.PORT ?? '8000';
  const port = Number(rawPort);
  if (!/^[0-9]+$/.test(rawPort) || !Number.isInteger(port) || port > 65535) {
    fail(`PORT must be an integer 0-65535, got "${rawPort}"`);
  }
  const host = env.HOST ?? '127.0.0.1';
  if (host.trim() === '') fail('HOST must not be empty');
  // Empty counts as unset: compose passes `${DEV_API_SECRET:-}` through.
  const chosen = env.DEV_API_SECRET ?? '';
  const randomSecret = chosen === '';
  return { port, host, secret: randomSecret ? randomBytes(32).toString('base64url') : chosen, randomSecret };
}

function writeLine(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function printHelp(api: DevApi, randomSecret: boolean): void {
  const help = [
    `dev-api listening on ${api.url}`,
    '',
    'Mint a token for user 1 (valid one hour):',
    `  curl -s -X POST ${api.url}/dev/token -H 'content-type: application/json' -d '{"user_id":1,"expires_in":3600}'`,
    '',
    'Point the gateway at it:  AUTH_HOST=' + api.url + ' npm run dev',
    'Fault knobs: POST/DELETE /__faults, GET/DELETE /__requests, PUT /__chats/{chat_id}/members (see docs/dev-api.md)',
    randomSecret ? 'Tokens are signed with a secret made for this run: they end with it (DEV_API_SECRET keeps one).' : '',
  ];
  process.stderr.write(`${help.join('\n')}\n`);
}

function handleSignals(api: DevApi): void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) process.exit(1); // a second signal: the operator wants out now
    stopping = true;
    writeLine({ time: new Date().toISOString(), msg: 'dev-api stopping', signal });
    api.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function main(): Promise<void> {
  const config = readConfig(process.env);
  let api: DevApi;
  try {
    api = await startDevApi({ port: config.port, host: config.host, secret: config.secret, log: writeLine });
  } catch (err) {
    process.stderr.write(`dev-api: cannot listen on ${config.host}:${config.port}: ${String(err)}\n`);
    process.exit(1);
  }
  handleSignals(api);
  writeLine({
    time: new Date().toISOString(),
    msg: 'dev-api listening',
    url: api.url,
    host: config.host,
    port: api.port,
    secret: config.randomSecret ? 'random' : 'custom', // never the secret itself
  });
  printHelp(api, config.randomSecret);
}

void main();
