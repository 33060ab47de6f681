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
  /** Bytes forwarded target → client since start. */
  readonly downstreamBytes: number;
  /** Cut every connection once `n` more bytes have come downstream (an answer cut mid-stream). */
  cutDownstreamAfter(n: number): void;
  /** Pace target → client traffic of every connection to this rate (null: full speed). */
  limitDownstream(bytesPerSecond: number | null): void;
  /** Cut every open connection now. */
  cutAll(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number, targetHost = "127.0.0.1"): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let upstream = 0;
  let cutAt = Number.POSITIVE_INFINITY;
  let cuts = 0;
  let downstream = 0;
  let downCutAt = Number.POSITIVE_INFINITY;
  let rate = 0;
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
    // Downstream (target → client), paced when a rate is set: a slow WAN link.
    target.on("data", (b: Buffer) => {
      downstream += b.length;
      if (downstream >= downCutAt) {
        // What came before this piece was delivered; the rest never arrives.
        downCutAt = Number.POSITIVE_INFINITY;
        cutAll();
        return;
      }
      const ok = client.write(b);
      const wait = rate ? (b.length / rate) * 1000 : 0;
      if (!ok || wait > 0) {
        target.pause();
        let pending = (ok ? 0 : 1) + (wait > 0 ? 1 : 0);
        const go = () => {
          if (--pending === 0) target.resume();
        };
        if (!ok) client.once("drain", go);
        if (wait > 0) setTimeout(go, wait);
      }
    });
    target.on("end", () => client.end());
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
    get downstreamBytes() {
      return downstream;
    },
    cutAfter(n: number) {
      cutAt = upstream + n;
    },
    cutDownstreamAfter(n: number) {
      downCutAt = downstream + n;
    },
    limitDownstream(bytesPerSecond: number | null) {
      rate = bytesPerSecond ?? 0;
    },
    cutAll,
    close: () =>
      new Promise<void>((resolve) => {
        cutAll();
        server.close(() => resolve());
      }),
  };
}
