/**
 * A tiny interactive chat client for the gateway — a development tool (`npm run client`).
 * It does NOT encrypt: `ciphertext` is just base64 of the typed text. See HELP below.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { clearLine, createInterface, cursorTo, type Interface } from 'node:readline';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';

const HELP = `Usage: npm run client -- --user <id> --chat <id> [options]

A tiny chat client for the message-service gateway (development tool).

Options:
  --user <id>    user to mint a dev token for (needed unless --token is given)
  --chat <id>    chat to register to
  --url <url>    gateway WebSocket URL           (default ws://localhost:3000/ws)
  --api <url>    dev API that mints tokens       (default http://localhost:8000)
  --token <jwt>  use this token instead of minting one from POST <api>/dev/token
  --help         show this help

Each line you type is sent as a message to the current chat (the last one joined).
NOTE: this tool does not encrypt. Its "ciphertext" is plain base64 of the text, and it
decodes base64 for display. Real clients encrypt end to end; the gateway never decrypts.

Commands:
  /edit <id> <text>   edit one of your messages (ids are shown in the acks)
  /delete <id>        delete one of your messages
  /typing             send a typing notification
  /ping               ping the gateway
  /join <chat>        register another chat with the same token (it becomes current)
  /leave <chat>       unregister a chat
  /raw <json>         send any frame verbatim
  /help               show the commands
  /quit               leave (so does the end of stdin or Ctrl-C)

Example: printf 'hi\\n/quit\\n' | npm run client -- --user 1 --chat 1`;

/** Longest wait for outstanding acks before exiting on /quit or end of input. */
const GRACE_MS = 3000;
const REGISTER_TIMEOUT_MS = 10_000;

type Id = string | number;
type Frame = Record<string, unknown>;

interface Options {
  user: Id | undefined;
  chat: Id;
  url: string;
  api: string;
  token: string | undefined;
}

function fail(message: string): never {
  process.stderr.write(`client: ${message}\n`);
  process.exit(1);
}

/** "42" → 42 (the gateway's integer ids), anything else stays a string. */
function toId(value: string): Id {
  return /^[1-9][0-9]{0,14}$/.test(value) ? Number(value) : value;
}

function usage(problem: string): never {
  process.stderr.write(`client: ${problem}\n\n${HELP}\n`);
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const parse = () =>
    parseArgs({
      args: argv,
      options: {
        user: { type: 'string' },
        chat: { type: 'string' },
        url: { type: 'string', default: 'ws://localhost:3000/ws' },
        api: { type: 'string', default: 'http://localhost:8000' },
        token: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  let values: ReturnType<typeof parse>;
  try {
    values = parse();
  } catch (err) {
    usage((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    process.exit(0);
  }
  if (values.chat === undefined || (values.user === undefined && values.token === undefined)) {
    usage('--chat and one of --user / --token are required');
  }
  return {
    user: values.user === undefined ? undefined : toId(values.user),
    chat: toId(values.chat),
    url: values.url,
    api: values.api,
    token: values.token,
  };
}

function isObject(v: unknown): v is Frame {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function mintToken(api: string, user: Id): Promise<string> {
  let res: Response;
  try {
    res = await fetch(new URL('/dev/token', api), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: user }),
      signal: AbortSignal.timeout(5000),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    fail(`cannot reach the dev API at ${api} (${cause}); start "npm run demo" or "npm run dev-api", or pass --token`);
  }
  const body: unknown = await res.json().catch(() => null);
  if (!res.ok || !isObject(body) || typeof body.token !== 'string') {
    fail(`the dev API at ${api} did not mint a token: HTTP ${res.status} ${JSON.stringify(body)}`);
  }
  return body.token;
}

function connect(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once('open', () => {
      ws.off('error', reject);
      resolve(ws);
    });
    ws.once('error', reject);
  });
}

// --- display -------------------------------------------------------------------------------

/** An id or other scalar for display; control characters escaped so a line stays one line. */
function show(v: unknown): string {
  const text = typeof v === 'string' ? v : v === undefined ? '?' : JSON.stringify(v);
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Our "ciphertext" is base64 of UTF-8 text; anything else (a real client's) is shown as such. */
function decodeText(ciphertext: unknown): string {
  if (typeof ciphertext !== 'string') return '<no ciphertext>';
  const bytes = Buffer.from(ciphertext, 'base64');
  const canonical = bytes.toString('base64').replace(/=+$/, '') === ciphertext.replace(/=+$/, '');
  try {
    if (canonical) return show(utf8.decode(bytes));
  } catch {
    // not UTF-8: fall through
  }
  return `<ciphertext ${show(ciphertext.length > 24 ? `${ciphertext.slice(0, 24)}...` : ciphertext)}>`;
}

function describe(f: Frame): string {
  const chat = f.chat_id === undefined ? '' : `[chat ${show(f.chat_id)}] `;
  const data = isObject(f.data) ? f.data : {};
  switch (f.type) {
    case 'registered':
      return `${chat}registered as user ${show(f.user_id)}; online: ${Array.isArray(f.online) ? f.online.map(show).join(', ') : '?'}`;
    case 'message':
      return `${chat}user ${show(data.sender_id)}: ${decodeText(data.ciphertext)}`;
    case 'edit_message':
      return `${chat}user ${show(data.sender_id)} edited ${show(data.id)}: ${decodeText(data.ciphertext)}`;
    case 'delete_message':
      return `${chat}user ${show(data.deleted_by)} deleted ${show(data.id)}`;
    case 'presence':
      return `${chat}user ${show(f.user_id)} is ${show(f.status)}`;
    case 'typing':
      return `${chat}user ${show(f.user_id)} is typing...`;
    case 'ack':
      return `${chat}ack ${show(f.op)} ${show(f.id)}${f.duplicate === true ? ' (duplicate)' : ''}`;
    case 'unregistered':
      return `${chat}unregistered`;
    case 'pong':
      return 'pong';
    case 'error': {
      const context = [
        f.op === undefined ? '' : `op ${show(f.op)}`,
        f.id === undefined ? '' : `id ${show(f.id)}`,
        f.retryable === true ? 'retryable' : '',
      ].filter(Boolean);
      return `${chat}error ${show(f.code)}: ${show(f.message)}${context.length ? ` (${context.join(', ')})` : ''}`;
    }
    default:
      return show(JSON.stringify(f));
  }
}

/** What the gateway's answer to a request will carry: the message id, or op:chat. */
function replyKey(f: Frame): string | undefined {
  const data = isObject(f.data) ? f.data : {};
  switch (f.type) {
    case 'message':
    case 'edit_message':
    case 'delete_message':
      return data.id === undefined ? undefined : String(data.id);
    case 'register':
    case 'unregister':
      return `${f.type}:${String(f.chat_id)}`;
    case 'ping':
      return 'ping';
    default:
      return undefined;
  }
}

// --- the session ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const token = opts.token ?? (await mintToken(opts.api, opts.user ?? usage('--user is required without --token')));
  const ws = await connect(opts.url).catch((err: Error) => fail(`cannot connect to ${opts.url}: ${err.message}`));

  const interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY);
  let rl: Interface | undefined;
  /** Registered chats; messages go to the last one joined. */
  let chats: Id[] = [];
  let current: Id = opts.chat;
  let quitting = false;
  /** Requests waiting for their ack / registered / unregistered / pong, keyed by id or op:chat. */
  const pending = new Map<string, () => void>();

  const out = (line: string): void => {
    if (rl && interactive) {
      clearLine(process.stdout, 0);
      cursorTo(process.stdout, 0);
      process.stdout.write(`${line}\n`);
      rl.prompt(true);
    } else {
      process.stdout.write(`${line}\n`);
    }
  };

  /** Sends a frame (as `text` if given); resolves when the gateway answers it (at once if it never does). */
  const send = (frame: Frame, text = JSON.stringify(frame)): Promise<void> =>
    new Promise((resolve) => {
      const key = replyKey(frame);
      if (key === undefined) resolve();
      else pending.set(key, resolve);
      ws.send(text);
    });
  const answered = (key: string): void => {
    pending.get(key)?.();
    pending.delete(key);
  };
  const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

  let lastError = '';

  ws.on('message', (raw, isBinary) => {
    let frame: unknown;
    try {
      frame = isBinary ? null : JSON.parse(raw.toString());
    } catch {
      frame = null;
    }
    if (!isObject(frame)) {
      out(`unparseable frame: ${show(raw.toString())}`);
      return;
    }
    out(describe(frame));
    if (frame.type === 'error') lastError = describe(frame);
    const chat = String(frame.chat_id);
    if (frame.type === 'ack' || (frame.type === 'error' && frame.id !== undefined)) answered(String(frame.id));
    if (frame.type === 'registered' || (frame.type === 'error' && frame.op === 'register')) answered(`register:${chat}`);
    if (frame.type === 'unregistered' || (frame.type === 'error' && frame.op === 'unregister')) answered(`unregister:${chat}`);
    if (frame.type === 'pong') answered('ping');
    if (frame.type === 'registered' && (typeof frame.chat_id === 'number' || typeof frame.chat_id === 'string')) {
      if (!chats.some((c) => String(c) === chat)) chats.push(frame.chat_id);
    }
    if (frame.type === 'unregistered') chats = chats.filter((c) => String(c) !== chat);
    // Left the current chat, or failed to join it: fall back to the last chat joined.
    const lost = frame.type === 'unregistered' || (frame.type === 'error' && frame.op === 'register');
    if (lost && chat === String(current)) current = chats.at(-1) ?? current;
  });
  ws.on('error', (err) => process.stderr.write(`client: websocket error: ${err.message}\n`));
  ws.on('close', (code, reason) => {
    const why = `connection closed by the gateway (${code}${reason.length ? ` ${reason.toString()}` : ''})`;
    if (quitting) process.exit(0);
    process.stderr.write(`client: ${why}\n`);
    process.exit(1);
  });

  // The first registration decides the exit code: 1 if refused, unanswered, or the socket closes.
  await Promise.race([send({ type: 'register', token, chat_id: opts.chat }), sleep(REGISTER_TIMEOUT_MS)]);
  if (chats.length === 0) fail(lastError ? `register failed: ${lastError}` : `no answer to register within ${REGISTER_TIMEOUT_MS} ms`);

  const quit = async (): Promise<void> => {
    if (quitting) return;
    quitting = true;
    rl?.close();
    const deadline = Date.now() + GRACE_MS;
    while (pending.size > 0 && Date.now() < deadline) await sleep(50);
    if (pending.size > 0) process.stderr.write(`client: exiting with ${pending.size} request(s) unanswered\n`);
    ws.close(1000, 'bye');
    setTimeout(() => process.exit(0), 1000).unref();
  };

  const message = (text: string): void => {
    const data = {
      id: randomUUID(),
      message_type: 'text',
      ciphertext: Buffer.from(text).toString('base64'), // NOT encryption: a dev tool
      nonce: randomBytes(12).toString('base64'),
      envelopes: {},
      created_at: new Date().toISOString(),
    };
    void send({ type: 'message', chat_id: current, data });
  };

  /** Runs one command line; /join and /leave are awaited, so the next lines go to the right chat. */
  const command = async (line: string): Promise<void> => {
    const [, name = '', rest = ''] = /^\/(\S*)\s*(.*)$/.exec(line) ?? [];
    const [arg = '', ...words] = rest.split(/\s+/);
    const nonce = () => randomBytes(12).toString('base64');
    switch (name) {
      case 'edit': {
        if (!arg || words.length === 0) return out('usage: /edit <id> <text>');
        const ciphertext = Buffer.from(rest.slice(arg.length).trim()).toString('base64');
        const data = { id: arg, ciphertext, nonce: nonce(), envelopes: {} };
        return void send({ type: 'edit_message', chat_id: current, data });
      }
      case 'delete':
        if (!arg) return out('usage: /delete <id>');
        return void send({ type: 'delete_message', chat_id: current, data: { id: arg } });
      case 'typing':
        return void send({ type: 'typing', chat_id: current });
      case 'ping':
        return void send({ type: 'ping' });
      case 'join':
        if (!arg) return out('usage: /join <chat>');
        current = toId(arg);
        return Promise.race([send({ type: 'register', token, chat_id: current }), sleep(REGISTER_TIMEOUT_MS)]);
      case 'leave':
        if (!arg) return out('usage: /leave <chat>');
        return Promise.race([send({ type: 'unregister', chat_id: toId(arg) }), sleep(REGISTER_TIMEOUT_MS)]);
      case 'raw': {
        let frame: unknown = null;
        try {
          frame = JSON.parse(rest);
        } catch {
          out('note: not valid JSON; sent anyway');
        }
        return void send(isObject(frame) ? frame : {}, rest);
      }
      case 'help':
        return out(HELP.slice(HELP.indexOf('Commands:')));
      case 'quit':
        return quit();
      default:
        return out(`unknown command /${name}; /help lists them`);
    }
  };

  // Created only now, so lines piped in early wait (buffered) until the chat is registered.
  rl = createInterface({ input: process.stdin, output: interactive ? process.stdout : undefined, terminal: interactive });
  process.on('SIGINT', () => void quit());
  process.on('SIGTERM', () => void quit());
  if (interactive) {
    rl.setPrompt('> ');
    out(`connected to ${opts.url}; type a message, /help for commands`);
  }
  for await (const line of rl) {
    if (quitting) break;
    if (line.startsWith('/')) await command(line);
    else if (line.trim() !== '') message(line);
    if (interactive && !quitting) rl.prompt();
  }
  await quit(); // end of input (or Ctrl-D / Ctrl-C on a terminal)
}

void main();
