/**
 * A TCP proxy between a test's clients and the host (or the host and RabbitMQ), to cut their
 * connections the way a network does (a Wi-Fi change, a load balancer idling out): every socket
 * through it is destroyed at once, without a Socket.IO or WebSocket close, and while it is `down`
 * new connections are dropped as they arrive — or to freeze them (`freeze()`: a half-open link).
 * Only loopback. `retarget` sends new connections to another host (a load balancer without sticky
 * sessions).
 */

import net from 'node:net';

import type { TestContext } from './harness.js';

export class TcpProxy {
  private readonly sockets = new Set<net.Socket>();
  private down = false;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private target: URL,
  ) {}

  /** Listens on an ephemeral loopback port and forwards to `targetUrl` (http://127.0.0.1:PORT). */
  static async start(ctx: TestContext, targetUrl: string): Promise<TcpProxy> {
    let proxy!: TcpProxy;
    const server = net.createServer((inbound) => {
      if (proxy.down) {
        inbound.destroy();
        return;
      }
      const outbound = net.connect(Number(proxy.target.port), proxy.target.hostname);
      inbound.setNoDelay(true);
      outbound.setNoDelay(true);
      for (const [a, b] of [
        [inbound, outbound],
        [outbound, inbound],
      ] as const) {
        proxy.sockets.add(a);
        a.on('error', () => b.destroy());
        a.on('close', () => {
          proxy.sockets.delete(a);
          b.destroy();
        });
        a.pipe(b);
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new TcpProxy(server, (server.address() as net.AddressInfo).port, new URL(targetUrl));
    ctx.onCleanup(() => proxy.close());
    return proxy;
  }

  /** The URL clients connect to instead of the host's. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Connections open through the proxy (each is two sockets). */
  get open(): number {
    return this.sockets.size / 2;
  }

  /** Cuts every connection and drops new ones until `restore()`. */
  cut(): void {
    this.down = true;
    for (const socket of this.sockets) socket.destroy();
  }

  /** New connections go to `targetUrl` from now on; open ones stay where they are. */
  retarget(targetUrl: string): void {
    this.target = new URL(targetUrl);
  }

  restore(): void {
    this.down = false;
  }

  /**
   * Freezes every connection open now, the way a half-open link does: nothing more is forwarded
   * either way, yet both sockets stay open (no FIN, no RST), so neither end learns of it except by
   * its own timeouts. Connections made afterwards are forwarded as usual.
   */
  freeze(): void {
    for (const socket of this.sockets) {
      socket.unpipe();
      socket.pause();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
