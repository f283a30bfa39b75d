/**
 * A tiny interactive chat client for the gateway — a development tool (`npm run client`),
 * built on the client SDK (packages/client): it reconnects, re-registers its chats, resends
 * unacked messages and replays what it missed, like any app on the SDK would.
 * It does NOT encrypt: `ciphertext` is just base64 of the typed text. See HELP below.
 */
import { randomBytes } from 'node:crypto';
import { clearLine, createInterface, cursorTo, type Interface } from 'node:readline';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import { ClientError, createClient, type Ack, type Chat, type ChatId } from '../packages/client/src/index.js';

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
If the connection drops, the client reconnects and resends what was not acked yet.
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

/** An SDK error as the gateway's `error` frame would read. */
function describeError(chat: ChatId | undefined, err: unknown): string {
  if (!(err instanceof ClientError)) return `error: ${show(String(err))}`;
  const { op, id, chatId = chat } = err.details;
  return describe({ type: 'error', code: err.code, message: err.message, op, id, chat_id: chatId, retryable: err.retryable });
}

// --- the session ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const token = opts.token ?? (await mintToken(opts.api, opts.user ?? usage('--user is required without --token')));
  const client = createClient({ url: opts.url, token, WebSocket });

  const interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY);
  let rl: Interface | undefined;
  /** Registered chats; messages go to the last one joined. */
  const chats = new Map<string, Chat>();
  let current: Chat | undefined;
  let quitting = false;
  /** Requests still waiting for their answer. */
  const pending = new Set<Promise<unknown>>();

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
  const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
  const track = <T>(request: Promise<T>): Promise<T | undefined> => {
    const settled = request.then(
      (value) => value,
      () => undefined,
    );
    pending.add(settled);
    void settled.then(() => pending.delete(settled));
    return settled;
  };

  client.on('registered', (e) => out(describe({ type: 'registered', chat_id: e.chatId, user_id: e.userId, online: e.online })));
  client.on('message', (e) => out(describe({ type: 'message', chat_id: e.chatId, data: e.message })));
  client.on('edit', (e) => out(describe({ type: 'edit_message', chat_id: e.chatId, data: e.edit })));
  client.on('delete', (e) => out(describe({ type: 'delete_message', chat_id: e.chatId, data: { id: e.id, deleted_by: e.deletedBy } })));
  client.on('presence', (e) => out(describe({ type: 'presence', chat_id: e.chatId, user_id: e.userId, status: e.status })));
  client.on('typing', (e) => out(describe({ type: 'typing', chat_id: e.chatId, user_id: e.userId })));
  // A system event the backend published through the server API.
  client.on('event', (e) => out(`[chat ${show(e.chatId)}] event ${JSON.stringify(e.data)}`));
  client.on('gap', (e) => out(`[chat ${show(e.chatId)}] missed broadcasts after ${e.from.seq} up to ${e.to.seq} (${show(e.reason)}); they are in the main API's history`));
  // A chat the gateway took away (a refused join is reported by /join itself).
  client.on('unregistered', (e) => {
    if (!chats.has(String(e.chatId))) return;
    out(`[chat ${show(e.chatId)}] unregistered (${show(e.error.code)})`);
    forget(e.chatId);
  });
  // Answers the SDK has no use for, e.g. to frames sent with /raw.
  client.on('unhandled', (frame) => out(isObject(frame) ? describe(frame) : show(frame)));

  let registeredOnce = false;
  /** Why the connection is down, for the first registration's error message. */
  let connectProblem: ((why: string) => void) | undefined;
  client.on('state', (e) => {
    if (e.state !== 'disconnected' || quitting) return;
    const why = `${e.code ?? ''}${e.reason ? ` ${e.reason}` : ''}`.trim() || 'closed';
    if (!registeredOnce) {
      // Not when the SDK closed an idle connection after the chat was refused: join reports that.
      if (e.retryInMs != null || e.error) connectProblem?.(why);
      return;
    }
    if (e.error) {
      process.stderr.write(`client: connection closed by the gateway (${why}): ${e.error.message}\n`);
      process.exit(1);
    }
    if (e.retryInMs == null) out('no chat left: /join <chat> or /quit');
    else process.stderr.write(`client: connection lost (${why}); reconnecting in ${e.retryInMs} ms\n`);
  });

  const forget = (id: ChatId): void => {
    chats.delete(String(id));
    // Left the current chat, or failed to join it: fall back to the last chat joined.
    if (current !== undefined && String(current.id) === String(id)) current = [...chats.values()].at(-1) ?? current;
  };

  /** Registers a chat (it becomes current); null once registered, else what went wrong. */
  const join = async (id: ChatId): Promise<string | null> => {
    let chat: Chat;
    try {
      chat = client.chat(id);
    } catch (err) {
      return describeError(id, err);
    }
    current = chat;
    const problem = await Promise.race([
      chat.ready().then(
        () => null,
        (err: unknown) => describeError(id, err),
      ),
      sleep(REGISTER_TIMEOUT_MS).then(() => `no answer to register within ${REGISTER_TIMEOUT_MS} ms`),
    ]);
    if (problem === null) chats.set(String(id), chat);
    else forget(id);
    return problem;
  };

  // The first registration decides the exit code: 1 if refused, unanswered, or the gateway cannot be reached.
  const unreachable = new Promise<string>((resolve) => (connectProblem = (why) => resolve(`cannot connect to ${opts.url}: ${why}`)));
  const problem = await Promise.race([join(opts.chat).then((p) => p && `register failed: ${p}`), unreachable]);
  if (problem !== null) {
    client.close();
    fail(problem);
  }
  registeredOnce = true;

  const quit = async (): Promise<void> => {
    if (quitting) return;
    quitting = true;
    rl?.close();
    const deadline = Date.now() + GRACE_MS;
    while (pending.size > 0 && Date.now() < deadline) await sleep(50);
    if (pending.size > 0) process.stderr.write(`client: exiting with ${pending.size} request(s) unanswered\n`);
    client.close();
    setTimeout(() => process.exit(0), 100).unref();
  };

  /** Sends a write and prints its answer as the gateway's `ack` or `error` would read. */
  const write = (chat: Chat, request: Promise<Ack>): void => {
    void track(
      request.then(
        (ack) => out(describe({ type: 'ack', op: ack.op, id: ack.id, chat_id: ack.chatId, duplicate: ack.duplicate })),
        (err: unknown) => out(describeError(chat.id, err)),
      ),
    );
  };
  const nonce = () => randomBytes(12).toString('base64');
  const content = (text: string) => ({ ciphertext: Buffer.from(text).toString('base64'), nonce: nonce(), envelopes: {} }); // NOT encryption: a dev tool

  const message = (text: string): void => {
    if (current === undefined) return out('no chat: /join <chat> first');
    write(current, current.send({ ...content(text), message_type: 'text', created_at: new Date().toISOString() }));
  };

  /** Runs one command line; /join is awaited, so the next lines go to the right chat. */
  const command = async (line: string): Promise<void> => {
    const [, name = '', rest = ''] = /^\/(\S*)\s*(.*)$/.exec(line) ?? [];
    const [arg = '', ...words] = rest.split(/\s+/);
    switch (name) {
      case 'edit':
        if (!arg || words.length === 0) return out('usage: /edit <id> <text>');
        if (current) write(current, current.edit(arg, content(rest.slice(arg.length).trim())));
        return;
      case 'delete':
        if (!arg) return out('usage: /delete <id>');
        if (current) write(current, current.delete(arg));
        return;
      case 'typing':
        return current?.typing();
      case 'ping':
        void track(client.ping().then(() => out('pong'), (err: unknown) => out(describeError(undefined, err))));
        return;
      case 'join': {
        if (!arg) return out('usage: /join <chat>');
        const problem = await join(toId(arg));
        if (problem !== null) out(problem);
        return;
      }
      case 'leave': {
        if (!arg) return out('usage: /leave <chat>');
        const chat = chats.get(String(toId(arg)));
        if (chat === undefined) return out(describe({ type: 'error', code: 'not_registered', message: 'not registered to this chat', op: 'unregister', chat_id: toId(arg) }));
        chat.leave();
        forget(chat.id);
        return out(describe({ type: 'unregistered', chat_id: chat.id }));
      }
      case 'raw':
        try {
          JSON.parse(rest);
        } catch {
          out('note: not valid JSON; sent anyway');
        }
        if (!client.sendRaw(rest)) out('not connected; not sent');
        return;
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
