import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer, type RawData } from 'ws';

type Frame = Record<string, unknown> & { type: string };

/** One client connection through the proxy and its upstream connection to the gateway. */
export interface Link {
  client: WebSocket;
  upstream: WebSocket;
  /** Frames the gateway sent on this link (whether or not passed on yet). */
  fromGateway: Frame[];
  /** Frames the client sent on this link. */
  fromClient: Frame[];
  /** A stalled link forwards nothing either way and closes nothing: a dead network path. */
  stalled: boolean;
}

/**
 * A WebSocket relay between SDK clients and a gateway, so tests can do to a connection what
 * networks and servers do: cut it (1006), close it with a code, stall it silently, or hold
 * and reorder the gateway's frames. The target can change (the load balancer moving on).
 */
export class RelayProxy {
  readonly links: Link[] = [];
  private held: Array<{ link: Link; data: string }> = [];
  private holdMatch: ((f: Frame) => boolean) | null = null;
  /** While true, new connections are dropped at once (the network is down). */
  refusing = false;

  private constructor(
    private readonly server: WebSocketServer,
    public target: string,
  ) {
    server.on('connection', (client) => this.accept(client));
  }

  static async start(target: string): Promise<RelayProxy> {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((resolve) => server.once('listening', () => resolve()));
    return new RelayProxy(server, target);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/ws`;
  }

  /** Links whose client side is still open. */
  get open(): Link[] {
    return this.links.filter((l) => l.client.readyState === WebSocket.OPEN);
  }

  private accept(client: WebSocket): void {
    if (this.refusing) return client.terminate();
    const upstream = new WebSocket(this.target);
    const link: Link = { client, upstream, fromGateway: [], fromClient: [], stalled: false };
    this.links.push(link);
    const pending: string[] = [];
    upstream.on('open', () => {
      for (const text of pending.splice(0)) upstream.send(text);
    });
    client.on('message', (data: RawData) => {
      const text = data.toString();
      link.fromClient.push(parse(text));
      if (link.stalled) return;
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else pending.push(text);
    });
    upstream.on('message', (data: RawData) => {
      const text = data.toString();
      const frame = parse(text);
      link.fromGateway.push(frame);
      if (link.stalled) return;
      if (this.holdMatch?.(frame)) this.held.push({ link, data: text });
      else if (client.readyState === WebSocket.OPEN) client.send(text);
    });
    upstream.on('close', (code, reason) => {
      if (link.stalled) return;
      // 1005/1006 cannot be sent in a close frame: the client sees an abnormal closure too.
      if (code === 1005 || code === 1006) client.terminate();
      else client.close(code, reason.toString());
    });
    client.on('close', () => upstream.terminate());
    upstream.on('error', () => client.terminate());
    client.on('error', () => undefined);
  }

  /** Drops every open link without a close frame: the clients see 1006. */
  cut(): void {
    for (const link of this.links) {
      link.client.terminate();
      link.upstream.terminate();
    }
  }

  /** Closes every open link from the "gateway" side with `code`. */
  closeAll(code: number, reason = ''): void {
    for (const link of this.open) {
      link.client.close(code, reason);
      link.upstream.terminate();
    }
  }

  /** Every open link goes silent in both directions, without closing (new links work). */
  stall(): void {
    for (const link of this.open) link.stalled = true;
  }

  /** Holds back gateway → client frames that match, until `release()`. */
  hold(match: (f: Frame) => boolean): void {
    this.holdMatch = match;
  }

  /** Passes on the held frames, in the order they came. */
  release(): void {
    this.holdMatch = null;
    for (const { link, data } of this.held.splice(0)) if (link.client.readyState === WebSocket.OPEN) link.client.send(data);
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function parse(text: string): Frame {
  try {
    return JSON.parse(text) as Frame;
  } catch {
    return { type: '__unparseable', text };
  }
}
