/**
 * The control socket: how `strata agent status|sync-now|snooze|resume`
 * talk to the running agent. A Unix domain socket `control.sock` in the
 * agent's state directory, mode 0600 (root only, like the state it
 * controls), carrying JSON lines: one request object per line, answered by
 * one response object per line, in order. The protocol is specified in
 * docs/design/agent.md ("Control socket").
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import * as path from "node:path";
import { type ErrorCode, ErrorCodes, StrataError } from "@strata/core";

export const CONTROL_SOCKET = "control.sock";
/** A request or response line longer than this closes the connection. */
export const MAX_LINE_BYTES = 64 * 1024;

export type ControlRequest =
  | { cmd: "status" }
  | { cmd: "sync-now" }
  | { cmd: "snooze"; ms: number }
  | { cmd: "resume" };

export type ControlResponse<T = unknown> =
  | { ok: true; result: T }
  | { ok: false; error: { code: ErrorCode; message: string; hint?: string } };

export type ControlHandler = (req: ControlRequest) => Promise<unknown> | unknown;

export const NOT_RUNNING_HINT = "is `strata agent run` running? check `systemctl status strata-agent`";

export function controlSocketPath(stateDir: string): string {
  return path.join(stateDir, CONTROL_SOCKET);
}

/** Check a decoded request line; throws INVALID_ARGUMENT naming what is wrong. */
export function parseControlRequest(v: unknown): ControlRequest {
  const o = (typeof v === "object" && v !== null ? v : {}) as Record<string, unknown>;
  switch (o.cmd) {
    case "status":
    case "sync-now":
    case "resume":
      return { cmd: o.cmd };
    case "snooze":
      if (typeof o.ms !== "number" || !Number.isFinite(o.ms) || o.ms <= 0)
        throw new StrataError("INVALID_ARGUMENT", "snooze needs a positive duration in ms");
      return { cmd: "snooze", ms: o.ms };
    default:
      throw new StrataError("INVALID_ARGUMENT", `unknown control command ${JSON.stringify(o.cmd)}`, {
        hint: "commands: status, sync-now, snooze {ms}, resume",
      });
  }
}

export function errorBody(e: unknown): ControlResponse & { ok: false } {
  const se = e instanceof StrataError ? e : new StrataError("INTERNAL", (e as Error)?.message ?? String(e));
  return {
    ok: false,
    error: { code: se.code, message: se.message, ...(se.hint ? { hint: se.hint } : {}) },
  };
}

/** Split a socket's data into lines; a line longer than `max` bytes ends the connection. */
export function lineReader(sock: Socket, onLine: (line: string) => void, max = MAX_LINE_BYTES): void {
  let buf = "";
  sock.setEncoding("utf8");
  sock.on("data", (chunk: string) => {
    buf += chunk;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) onLine(line);
    }
    if (Buffer.byteLength(buf) > max) sock.destroy();
  });
}

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

export function probe(file: string): Promise<"live" | "dead"> {
  return new Promise((resolve) => {
    const s = connect(file);
    s.once("connect", () => {
      s.destroy();
      resolve("live");
    });
    s.once("error", () => resolve("dead"));
  });
}

/**
 * Listen on `stateDir`/control.sock. A socket left by an agent that died is
 * replaced; one that answers means another agent runs on this state
 * directory, and is refused (LOCKED).
 */
export async function startControlServer(stateDir: string, handle: ControlHandler): Promise<ControlServer> {
  const file = controlSocketPath(stateDir);
  await replaceStaleSocket(file, stateDir, "control");

  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => {});
    // One request at a time per connection, so answers keep request order.
    let queue = Promise.resolve();
    lineReader(sock, (line) => {
      queue = queue.then(async () => {
        let res: ControlResponse;
        try {
          res = { ok: true, result: await handle(parseControlRequest(JSON.parse(line))) };
        } catch (e) {
          res = errorBody(
            e instanceof SyntaxError ? new StrataError("INVALID_ARGUMENT", `not JSON: ${e.message}`) : e,
          );
        }
        if (!sock.destroyed) sock.write(`${JSON.stringify(res)}\n`);
      });
    });
  });
  // Created 0600 from the start: no moment where another user could connect.
  return listenSocket(server, sockets, file, 0o600);
}

/**
 * Make way for a Unix socket at `file`: nothing there is the usual case; a
 * socket nobody answers on was left by an agent that died and is removed;
 * one that answers means another agent runs on `stateDir` (LOCKED); any
 * other file is refused.
 */
export async function replaceStaleSocket(file: string, stateDir: string, role: string): Promise<void> {
  const st = lstatSync(file, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isSocket())
    throw new StrataError("ALREADY_EXISTS", `${file} exists and is not a socket`, {
      subject: file,
      hint: `remove it; the agent creates its ${role} socket there`,
    });
  if ((await probe(file)) === "live")
    throw new StrataError("LOCKED", `another strata agent is running on ${stateDir}`, {
      subject: file,
      hint: "stop it first (`systemctl stop strata-agent`), or give this one another --state",
    });
  unlinkSync(file);
}

/**
 * Listen on `file` with `mode`; the umask keeps the socket at most that
 * open while it is created. `close` ends every connection, then the server.
 */
export async function listenSocket(
  server: Server,
  sockets: Set<Socket>,
  file: string,
  mode: number,
): Promise<{ path: string; close(): Promise<void> }> {
  const umask = process.umask(~mode & 0o777);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(file, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } finally {
    process.umask(umask);
  }
  chmodSync(file, mode);
  return {
    path: file,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface ControlRequestOptions {
  /** Give up when the agent does not answer in time. Default 10 s. */
  timeoutMs?: number;
}

/**
 * Send one request to the agent running on `stateDir` and return its
 * result; an error answer is thrown as the StrataError it carries.
 */
export function controlRequest<T = unknown>(
  stateDir: string,
  req: ControlRequest,
  opts: ControlRequestOptions = {},
): Promise<T> {
  const file = controlSocketPath(stateDir);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise<T>((resolve, reject) => {
    const sock = connect(file);
    const fail = (e: StrataError) => {
      sock.destroy();
      reject(e);
    };
    sock.setTimeout(timeoutMs, () =>
      fail(
        new StrataError("IO_ERROR", `the strata agent did not answer within ${timeoutMs / 1000} s`, {
          subject: file,
          hint: "check its log: `journalctl -u strata-agent`",
        }),
      ),
    );
    sock.once("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT" || e.code === "ECONNREFUSED")
        fail(
          new StrataError("NOT_FOUND", `the strata agent is not running (nothing listens on ${file})`, {
            subject: file,
            hint: NOT_RUNNING_HINT,
          }),
        );
      else if (e.code === "EACCES" || e.code === "EPERM")
        fail(
          new StrataError("PERMISSION_DENIED", `cannot open the agent's control socket ${file}`, {
            subject: file,
            hint: "it is root's only (mode 0600): run the command as root, e.g. with sudo",
          }),
        );
      else fail(new StrataError("IO_ERROR", `cannot talk to the strata agent on ${file}: ${e.message}`));
    });
    sock.once("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    let answered = false;
    lineReader(sock, (line) => {
      if (answered) return;
      answered = true;
      sock.end();
      let res: ControlResponse<T>;
      try {
        res = JSON.parse(line) as ControlResponse<T>;
      } catch {
        return reject(new StrataError("IO_ERROR", "the strata agent sent an answer that is not JSON"));
      }
      if (res.ok) resolve(res.result);
      else {
        const code = res.error.code in ErrorCodes ? res.error.code : "INTERNAL";
        reject(new StrataError(code, res.error.message, res.error.hint ? { hint: res.error.hint } : {}));
      }
    });
    sock.once("close", () => {
      if (!answered)
        fail(new StrataError("IO_ERROR", "the strata agent closed the control connection without answering"));
    });
  });
}
