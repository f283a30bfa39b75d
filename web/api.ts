/**
 * The development main API as the page sees it: same origin, under /api (the page server
 * forwards these few routes to the dev API). A real app would call its own backend here.
 */
import type { Recipient } from './crypto.js';

export interface StoredMessage {
  id: string;
  chat_id: string | number;
  sender_id: string | number;
  ciphertext: string;
  nonce?: string;
  envelopes?: Record<string, unknown>;
  created_at?: string;
  saved_at?: string;
  edited_at?: string;
}

export interface ChatDevice extends Recipient {
  user_id: string | number;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const TIMEOUT_MS = 5000;

/**
 * A user id as the main API spells it: a canonical positive integer that a JS number holds
 * exactly is a number; anything else (letters, or digits past 2^53, which Number() would round
 * to another user's id) stays a string.
 */
export function userIdValue(id: string): string | number {
  if (!/^[1-9][0-9]*$/.test(id)) return id;
  const n = Number(id);
  return Number.isSafeInteger(n) ? n : id;
}

export class Api {
  private token = '';
  /**
   * Called after every token minted but the first (`login` set it once its device was
   * published): a new token is what the page gets after the dev API restarted — it forgot every
   * device key then — so the device's key is published again.
   */
  onNewToken: (() => void) | null = null;

  constructor(
    readonly userId: string,
    private readonly base = '/api',
  ) {}

  /** Logs in: the dev API mints a token for any user id (there are no passwords here). */
  async login(): Promise<string> {
    const res = await this.call('POST', '/dev/token', { user_id: userIdValue(this.userId) }, false);
    this.token = (res as { token: string }).token;
    this.onNewToken?.();
    return this.token;
  }

  /** The current token, for the SDK's first register; `fresh` mints a new one (after a refusal). */
  async currentToken(fresh = false): Promise<string> {
    return fresh || this.token === '' ? this.login() : this.token;
  }

  async publishKey(deviceId: string, publicKey: string): Promise<void> {
    await this.call('PUT', `/devices/${encodeURIComponent(deviceId)}/key`, { public_key: publicKey });
  }

  async devices(chatId: string | number): Promise<ChatDevice[]> {
    return ((await this.call('GET', `/chats/${encodeURIComponent(String(chatId))}/devices`)) as { devices: ChatDevice[] }).devices;
  }

  /** The chat's newest `limit` stored messages, oldest first; `more`: it has older ones. */
  async messages(chatId: string | number, limit: number): Promise<{ messages: StoredMessage[]; more: boolean }> {
    const res = (await this.call('GET', `/chats/${encodeURIComponent(String(chatId))}/messages?limit=${limit}`)) as { messages: StoredMessage[]; more?: unknown };
    return { messages: res.messages, more: res.more === true };
  }

  /** One JSON call; a 401 (the token expired) logs in again and retries once. */
  private async call(method: string, path: string, body?: unknown, auth = true, retried = false): Promise<unknown> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (auth) headers.authorization = `Bearer ${await this.currentToken()}`;
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    if (res.status === 401 && auth && !retried) {
      await this.login();
      return this.call(method, path, body, auth, true);
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const reason = (json as { error?: unknown } | undefined)?.error;
      throw new ApiError(res.status, `${method} ${path}: ${res.status}${typeof reason === 'string' ? ` ${reason}` : ''}`);
    }
    return json;
  }
}
