/**
 * The user socket: how an endpoint's unprivileged users reach the running
 * agent (`strata agent restore-file`, `strata agent fetch`). A Unix socket
 * `user.sock` (see userSocketDir), mode 0666 — unlike the root-only
 * `control.sock` — so any local user may connect, and the agent
 * learns who did from the kernel (SO_PEERCRED), never from the request.
 * docs/design/restore.md, "Single files".
 *
 * JSON lines. A request carries an `id`; the answer is zero or more partial
 * lines `{ id, part }` (for streams: restored chunks) and one final line
 * `{ id, ok: true, result }` or `{ id, ok: false, error }`. Requests on one
 * connection are answered in order. State a handler keeps (open restore
 * sessions) belongs to the connection and ends with it.
 */
import { chmodSync, lstatSync, mkdirSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import * as path from "node:path";
import { ErrorCodes, StrataError } from "@strata/core";
import { native } from "@strata/fs";
import { errorBody, lineReader, listenSocket, replaceStaleSocket } from "./control.js";
import { DEFAULT_STATE_DIR } from "./state.js";

export const USER_SOCKET = "user.sock";
/** Requests are small; answers may carry a chunk of up to 512 KiB in base64. */
export const USER_REQUEST_MAX = 256 * 1024;
export const USER_ANSWER_MAX = 4 * 1024 * 1024;

export interface Peer {
  pid: number;
  uid: number;
  gid: number;
}

export type UserRequest = { cmd: string } & Record<string, unknown>;

/** One connection's view for a handler: who is there, and a way to stream partial answers. */
export interface UserConnection {
  readonly peer: Peer;
  /** Per-connection state a handler may keep (cleared when the connection closes). */
  readonly state: Map<string, unknown>;
  /** Called once when the connection closes. */
  onClose(fn: () => void): void;
}

export type UserHandler = (
  req: UserRequest,
  conn: UserConnection,
  part: (p: unknown) => Promise<void>,
) => Promise<unknown> | unknown;

/**
 * Where the user socket lives. Not in the state directory: that is 0700
 * (it holds the credential and the file cache, whose rows name every file
 * of the machine), so users could not reach a socket inside it. For the
 * default state directory it is /run/strata-agent/user.sock; for another
 * one (chroots, tests) the directory `STATE.run` beside it.
 */
export function userSocketDir(stateDir: string): string {
  const s = path.resolve(stateDir);
  return s === DEFAULT_STATE_DIR ? "/run/strata-agent" : `${s}.run`;
}

export function userSocketPath(stateDir: string): string {
  return path.join(userSocketDir(stateDir), USER_SOCKET);
}

/** SO_PEERCRED of an accepted connection. */
function peerOf(sock: Socket): Peer {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0)
    throw new StrataError("INTERNAL", "cannot read the peer of a user socket connection (no fd)");
  return native.peerCred(fd);
}

export interface UserServer {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Listen on the user socket (userSocketPath, mode 0666). A socket file
 * left by an agent that died is replaced.
 */
export async function startUserServer(stateDir: string, handle: UserHandler): Promise<UserServer> {
  const file = userSocketPath(stateDir);
  const dir = userSocketDir(stateDir);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const dst = lstatSync(dir);
  if (!dst.isDirectory() || dst.uid !== process.getuid?.())
    throw new StrataError("UNSAFE_PATH", `${dir} is not a directory of the agent's user`, {
      subject: dir,
      hint: "remove it; the agent creates it for its user socket",
    });
  chmodSync(dir, 0o755);
  await replaceStaleSocket(file, stateDir, "user");
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on("error", () => {});
    let peer: Peer;
    try {
      peer = peerOf(sock);
    } catch {
      sock.destroy();
      return;
    }
    const closers: (() => void)[] = [];
    const conn: UserConnection = { peer, state: new Map(), onClose: (fn) => closers.push(fn) };
    sock.on("close", () => {
      sockets.delete(sock);
      for (const fn of closers.splice(0)) {
        try {
          fn();
        } catch {
          // a closer's failure must not stop the others
        }
      }
    });
    const write = (obj: unknown): Promise<void> =>
      new Promise((resolve) => {
        if (sock.destroyed) return resolve();
        if (sock.write(`${JSON.stringify(obj)}\n`)) resolve();
        else sock.once("drain", () => resolve());
      });
    let queue = Promise.resolve();
    lineReader(
      sock,
      (line) => {
        queue = queue.then(async () => {
          let id: unknown = null;
          try {
            const req = JSON.parse(line) as UserRequest & { id?: unknown };
            id = req.id ?? null;
            if (typeof req !== "object" || req === null || typeof req.cmd !== "string")
              throw new StrataError("INVALID_ARGUMENT", "a request is a JSON object with a cmd");
            const result = await handle(req, conn, (p) => write({ id, part: p }));
            await write({ id, ok: true, result: result ?? null });
          } catch (e) {
            const body = errorBody(
              e instanceof SyntaxError ? new StrataError("INVALID_ARGUMENT", `not JSON: ${e.message}`) : e,
            );
            await write({ id, ...body });
          }
        });
      },
      USER_REQUEST_MAX,
    );
  });
  // Anyone may connect; who they are is read from the kernel per connection.
  return listenSocket(server, sockets, file, 0o666);
}

/** A client connection to the user socket; requests are sent one after another. */
export class UserSocketClient {
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; part?: (p: unknown) => void }
  >();
  private closedError: StrataError | null = null;

  private constructor(private readonly sock: Socket) {
    lineReader(
      sock,
      (line) => {
        let msg: { id: number; part?: unknown; ok?: boolean; result?: unknown; error?: never };
        try {
          msg = JSON.parse(line);
        } catch {
          this.fail(new StrataError("IO_ERROR", "the strata agent sent an answer that is not JSON"));
          return;
        }
        const w = this.waiting.get(msg.id);
        if (!w) return;
        if ("part" in msg) {
          w.part?.(msg.part);
          return;
        }
        this.waiting.delete(msg.id);
        if (msg.ok) w.resolve(msg.result);
        else {
          const err = (msg as unknown as { error: { code: string; message: string; hint?: string } }).error;
          const code = (err.code in ErrorCodes ? err.code : "INTERNAL") as keyof typeof ErrorCodes;
          w.reject(new StrataError(code, err.message, err.hint ? { hint: err.hint } : {}));
        }
      },
      USER_ANSWER_MAX,
    );
    sock.on("close", () =>
      this.fail(new StrataError("IO_ERROR", "the strata agent closed the user socket connection")),
    );
  }

  static connect(stateDir: string): Promise<UserSocketClient> {
    const file = userSocketPath(stateDir);
    return new Promise((resolve, reject) => {
      const sock = connect(file);
      sock.once("error", (e: NodeJS.ErrnoException) => {
        if (e.code === "ENOENT" || e.code === "ECONNREFUSED")
          reject(
            new StrataError("NOT_FOUND", `the strata agent is not running (nothing listens on ${file})`, {
              subject: file,
              hint: "is `strata agent run` running? ask your administrator, or check `systemctl status strata-agent`",
            }),
          );
        else reject(new StrataError("IO_ERROR", `cannot talk to the strata agent on ${file}: ${e.message}`));
      });
      sock.once("connect", () => {
        sock.removeAllListeners("error");
        sock.on("error", () => {});
        resolve(new UserSocketClient(sock));
      });
    });
  }

  private fail(e: StrataError): void {
    this.closedError ??= e;
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }

  request<T = unknown>(req: UserRequest, part?: (p: unknown) => void): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, ...(part ? { part } : {}) });
      this.sock.write(`${JSON.stringify({ ...req, id })}\n`);
    });
  }

  close(): void {
    this.sock.end();
    this.sock.destroy();
  }
}
