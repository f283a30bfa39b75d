import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

/** One proxied connection: what the client sent first (to tell connections apart), and the pair. */
interface Link {
  client: Socket;
  upstream: Socket;
  /** The first bytes the client sent (e.g. ioredis's CLIENT SETNAME). */
  hello: string;
  silent: boolean;
}

/**
 * A TCP proxy to `target` whose links can be made silent: nothing more is forwarded either way
 * and nothing is closed — what a half-open connection (a NAT that forgot it, a node gone without
 * a FIN) looks like to both ends. New connections go through as usual.
 */
export class TcpProxy {
  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly links: Link[],
  ) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    const links: Link[] = [];
    const server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      const link: Link = { client, upstream, hello: '', silent: false };
      links.push(link);
      client.on('data', (d: Buffer) => {
        if (link.hello.length < 256) link.hello += d.toString('latin1');
        if (!link.silent) upstream.write(d);
      });
      upstream.on('data', (d: Buffer) => void (link.silent || client.write(d)));
      const end = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new TcpProxy(server, (server.address() as AddressInfo).port, links);
  }

  /** Silences the open links whose first bytes match (all when no match is given); returns how many. */
  silence(match?: (hello: string) => boolean): number {
    let n = 0;
    for (const link of this.links) {
      if (link.client.destroyed || link.silent || (match && !match(link.hello))) continue;
      link.silent = true;
      n++;
    }
    return n;
  }

  async close(): Promise<void> {
    for (const link of this.links) {
      link.client.destroy();
      link.upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
