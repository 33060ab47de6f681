import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { generate } from "selfsigned";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const clientJs = fileURLToPath(new URL("../dist/client.js", import.meta.url));

/** A real HTTPS server on loopback with a fresh self-signed certificate; it echoes the request. */
async function echoServer(): Promise<{ server: Server; url: string; fingerprint: string }> {
  const pems = await generate([{ name: "commonName", value: "strata-test" }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
  });
  const server = createServer({ key: pems.private, cert: pems.cert }, (req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d: string) => {
      body += d;
    });
    req.on("end", () => {
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ method: req.method, url: req.url, auth: req.headers.authorization, body }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    url: `https://127.0.0.1:${port}`,
    fingerprint: new X509Certificate(pems.cert).fingerprint256,
  };
}

/**
 * In a fresh process (its own module cache): a pinned request, a request
 * with the wrong pin, and which of undici's modules were loaded.
 */
const probe = `
import { createRequire } from "node:module";
import { pinnedFetch } from ${JSON.stringify(clientJs)};
const [url, pin] = process.argv.slice(1);
const out = {};
const res = await pinnedFetch(pin)(url + "/a/b?c=1", { method: "POST", headers: { authorization: "Bearer x" }, body: "hello" });
out.status = res.status;
out.echo = JSON.parse(await res.text());
try {
  await pinnedFetch("00:11")(url + "/", { method: "GET", headers: {} });
} catch (e) {
  out.wrongPin = { code: e.code, message: e.message };
}
out.undici = Object.keys(createRequire(${JSON.stringify(clientJs)}).cache).filter((k) => k.includes("/undici/"));
console.log(JSON.stringify(out));
`;

describe("the HTTPS client", () => {
  let s: Awaited<ReturnType<typeof echoServer>>;
  beforeAll(async () => {
    s = await echoServer();
  });
  afterAll(() => new Promise<void>((r) => s.server.close(() => r())));

  it("speaks to the pinned server, refuses another certificate, and loads only the parts of undici it uses", async () => {
    const { stdout } = await run(process.execPath, [
      "--input-type=module",
      "-e",
      probe,
      s.url,
      s.fingerprint,
    ]);
    const out = JSON.parse(stdout) as {
      status: number;
      echo: { method: string; url: string; auth: string; body: string };
      wrongPin?: { code: string; message: string };
      undici: string[];
    };
    expect(out.status).toBe(201);
    expect(out.echo).toEqual({ method: "POST", url: "/a/b?c=1", auth: "Bearer x", body: "hello" });
    expect(out.wrongPin?.code).toBe("PERMISSION_DENIED");
    expect(out.wrongPin?.message).toContain(
      `the server's certificate (SHA256 ${s.fingerprint}) is not the pinned one`,
    );
    // The parts were found (undici 6's layout) and its index, with fetch and the rest, was not loaded.
    expect(out.undici.some((k) => k.endsWith("/undici/lib/dispatcher/agent.js"))).toBe(true);
    expect(out.undici.some((k) => k.endsWith("/undici/index.js"))).toBe(false);
    expect(out.undici.some((k) => k.includes("/undici/lib/web/"))).toBe(false);
  });
});
