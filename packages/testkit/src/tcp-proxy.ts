/**
 * A fault-injecting TCP proxy for tests: forwards loopback connections to a
 * target and can cut them — after a number of bytes sent upstream, or all
 * at once — so a client sees a connection reset mid-request, exactly as on
 * a flaky WAN link. TLS passes through untouched (the proxy never sees the
 * plaintext; certificate pinning still applies end to end).
 */
import { connect, createServer, type Server, type Socket } from "node:net";

export interface TcpProxy {
  /** The port clients connect to on 127.0.0.1. */
  readonly port: number;
  /** Bytes forwarded client → target since start. */
  readonly upstreamBytes: number;
  /** Connections cut so far. */
  readonly cuts: number;
  /** Cut every connection once `n` more bytes have gone upstream (counted across connections). */
  cutAfter(n: number): void;
  /** Cut every open connection now. */
  cutAll(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number, targetHost = "127.0.0.1"): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let upstream = 0;
  let cutAt = Number.POSITIVE_INFINITY;
  let cuts = 0;
  const cutAll = () => {
    for (const s of sockets) {
      s.resetAndDestroy();
      cuts++;
    }
    sockets.clear();
  };
  const server: Server = createServer((client) => {
    const target = connect(targetPort, targetHost);
    sockets.add(client);
    sockets.add(target);
    const drop = () => {
      sockets.delete(client);
      sockets.delete(target);
      client.destroy();
      target.destroy();
    };
    client.on("error", drop);
    target.on("error", drop);
    client.on("close", drop);
    target.on("close", drop);
    client.on("data", (b: Buffer) => {
      upstream += b.length;
      if (upstream >= cutAt) {
        cutAt = Number.POSITIVE_INFINITY;
        cutAll();
        return;
      }
      if (!target.write(b)) client.pause();
    });
    target.on("drain", () => client.resume());
    target.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    port,
    get upstreamBytes() {
      return upstream;
    },
    get cuts() {
      return cuts;
    },
    cutAfter(n: number) {
      cutAt = upstream + n;
    },
    cutAll,
    close: () =>
      new Promise<void>((resolve) => {
        cutAll();
        server.close(() => resolve());
      }),
  };
}
