/**
 * RemoteRestoreSource: a RestoreSource (source.ts) reading a snapshot from
 * the server over the restore protocol (docs/design/restore.md,
 * "Protocol"). The same class serves the agent (its endpoint credential,
 * its own CVD), the administrator's CLI and the recovery tool (a user's
 * token with `restore.run`): only the bearer secret differs.
 *
 * Nothing received is used before its hash is checked: every tree is
 * decompressed with a bound, hashed and compared with the id asked for;
 * every chunk likewise, and a chunk nobody asked for is refused.
 */
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import {
  type BlobId,
  type ChunkerParams,
  decodeTree,
  type ErrorCode,
  ErrorCodes,
  type FsNode,
  isStrataError,
  StrataError,
  type TreeId,
} from "@strata/core";
import {
  API_PREFIX,
  ApiError,
  MAX_TREES_PER_REQUEST,
  type OpenRestoreRequest,
  PROTOCOL_HEADER,
  PROTOCOL_VERSION,
  type RestoreSessionInfo,
} from "@strata/protocol";
import {
  ByteReader,
  boundedDecompress,
  FLAG_ZSTD,
  readChunkFrame,
  readJsonFrame,
  readTreeFrame,
} from "@strata/repo";
import { enrolledState, pinnedDispatcher, reachError, undici } from "../client.js";
import type { ChunkRequest, RestoreSource, SourceStats, SourceTree, TreeRef } from "./source.js";

/** How the source reaches the server: JSON requests, and requests answered with a frame stream. */
export interface RestoreTransport {
  json<T>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown): Promise<T>;
  /** The answer's body as it arrives; errors (4xx, 5xx) reject before any byte is yielded. */
  frames(
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    signal?: AbortSignal,
  ): Promise<AsyncIterable<Buffer>>;
}

/** Largest tree the source accepts (the upload protocol's limit). */
export const MAX_TREE_BYTES = 64 * 1024 * 1024;
/** Chunk ids per chunk request (the server's limit). */
export const MAX_IDS_PER_REQUEST = 8192;
/**
 * Attempts of one request whose connection fails (cut, reset, refused, a
 * body that ends early) or that a server node answers 502/503/504; the
 * waits between them (restore.md, "Transport failures").
 */
export const FETCH_RETRY_DELAYS_MS: readonly number[] = [250, 500, 1000, 2000, 4000];

/** Network-level failures worth a new request (never the caller's own errors, never 4xx answers). */
export function retryableFetchError(e: unknown): boolean {
  const err = e as { name?: string; code?: string; statusCode?: number; status?: number };
  if (!err || err.name === "AbortError") return false;
  if (e instanceof StrataError) {
    if (e.code === "IO_ERROR" && /^cannot reach /.test(e.message)) return true;
    return /^HTTP 50[234] /.test(e.message);
  }
  const status = err.statusCode ?? err.status;
  if (status === 502 || status === 503 || status === 504) return true;
  return (
    typeof err.code === "string" &&
    /^(UND_ERR_SOCKET|UND_ERR_CLOSED|UND_ERR_BODY_TIMEOUT|UND_ERR_HEADERS_TIMEOUT|ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|ECONNABORTED)$/.test(
      err.code,
    )
  );
}

/** An error of the caller's callback, carried through the retry loop untouched. */
class CallerError {
  constructor(readonly error: unknown) {}
}

const waitMs = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        reject(signal.reason);
      },
      { once: true },
    );
  });
/** A tree is first decompressed into this much; only a larger one pays for a larger buffer. */
const FIRST_TREE_BOUND = 1024 * 1024;

/** The server's error as a StrataError with the same code (the engine reasons on codes). */
export function asStrataError(e: unknown): unknown {
  if (!(e instanceof ApiError)) return e;
  const code = (Object.hasOwn(ErrorCodes, e.code) ? e.code : "INTERNAL") as ErrorCode;
  return new StrataError(code, e.message, {
    ...(e.hint ? { hint: e.hint } : {}),
    ...(e.subject ? { subject: e.subject } : {}),
  });
}

/**
 * The restore protocol over HTTPS with the server's certificate pinned,
 * with a bearer secret: an endpoint credential (`sep_…`) or a user's API
 * token (`stk_…`).
 */
export function httpRestoreTransport(url: string, fingerprint: string, secret: string): RestoreTransport {
  const dispatcher = pinnedDispatcher(fingerprint);
  const send = async (method: string, path: string, body: unknown, accept: string, signal?: AbortSignal) => {
    const target = url + API_PREFIX + path;
    try {
      return await undici().request(target, {
        method: method as "GET",
        dispatcher,
        ...(signal ? { signal } : {}),
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        headers: {
          authorization: `Bearer ${secret}`,
          accept,
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
          [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
        },
      });
    } catch (e) {
      if (signal?.aborted) throw e;
      throw reachError(target, e);
    }
  };
  const fail = async (res: Awaited<ReturnType<typeof send>>, path: string): Promise<never> => {
    const text = await res.body.text();
    let err: { code?: string; message?: string; hint?: string; subject?: string } | undefined;
    try {
      err = (JSON.parse(text) as { error?: typeof err }).error;
    } catch {
      err = undefined;
    }
    throw asStrataError(
      new ApiError(
        res.statusCode,
        err?.code
          ? (err as { code: string; message: string })
          : { code: "INTERNAL", message: `HTTP ${res.statusCode} from ${url}${path}: ${text.slice(0, 200)}` },
      ),
    );
  };
  return {
    async json<T>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown): Promise<T> {
      const res = await send(method, path, body, "application/json");
      if (res.statusCode >= 400) return fail(res, path);
      const text = await res.body.text();
      return (text ? JSON.parse(text) : undefined) as T;
    },
    async frames(method, path, body, signal) {
      const res = await send(method, path, body, "application/vnd.strata.frames", signal);
      if (res.statusCode >= 400) return fail(res, path);
      return res.body as AsyncIterable<Buffer>;
    },
  };
}

const treeRefOf = (id: string, grant: string | null | undefined): TreeRef =>
  grant ? { id: id as TreeId, grant } : { id: id as TreeId };

/** Where trees and chunks are first decompressed (then copied out): one buffer, reused. */
let scratch: Buffer | null = null;

/** Decompress with a bound, trying a small buffer first; a copy, so the large buffer is not kept. */
function decompressUpTo(payload: Buffer, first: number, max: number, what: string): Buffer {
  if (first < max) {
    try {
      scratch ??= Buffer.allocUnsafeSlow(FIRST_TREE_BOUND);
      return Buffer.from(
        boundedDecompress(payload, first, what, first <= scratch.length ? scratch : undefined),
      );
    } catch {
      // larger than `first` (or not zstd: the bounded retry says which)
    }
  }
  return Buffer.from(boundedDecompress(payload, max, what));
}

export class RemoteRestoreSource implements RestoreSource {
  readonly snapshot: { id: string; time: string; root: TreeRef };
  readonly chunker: ChunkerParams;
  readonly stats: SourceStats = { bytesReceived: 0, chunksReceived: 0, retries: 0 };
  /** Waits between attempts of a request (FETCH_RETRY_DELAYS_MS; shorter in tests). */
  retryDelaysMs: readonly number[] = FETCH_RETRY_DELAYS_MS;
  private closed = false;

  private constructor(
    private readonly t: RestoreTransport,
    /** The server's answer to the session's opening (root, node for a file path). */
    readonly info: RestoreSessionInfo,
  ) {
    this.snapshot = {
      id: info.snapshot.id,
      time: info.snapshot.time,
      root: treeRefOf(info.root.id, info.root.grant),
    };
    this.chunker = info.chunker as ChunkerParams;
  }

  /** Open a restore session on `cvd` (`req.snapshot` defaults to latest; `req.path` narrows it). */
  static async open(
    t: RestoreTransport,
    cvd: string,
    req: OpenRestoreRequest = {},
  ): Promise<RemoteRestoreSource> {
    const info = await t
      .json<RestoreSessionInfo>("POST", `/cvds/${encodeURIComponent(cvd)}/restores`, req)
      .catch((e: unknown) => {
        throw asStrataError(e);
      });
    return new RemoteRestoreSource(t, info);
  }

  /**
   * A source over a session the server opened already (a layer apply plan
   * carries the restore session of the endpoint's image), with the
   * endpoint's credential.
   */
  static forEndpointSession(stateDir: string, info: RestoreSessionInfo): RemoteRestoreSource {
    const { state, credential } = enrolledState(stateDir);
    return new RemoteRestoreSource(
      httpRestoreTransport(state.serverUrl, state.fingerprint, credential),
      info,
    );
  }

  /** The agent's source: its endpoint credential, its own CVD. */
  static forEndpoint(
    stateDir: string,
    cvd: string,
    req: OpenRestoreRequest = {},
  ): Promise<RemoteRestoreSource> {
    const { state, credential } = enrolledState(stateDir);
    return RemoteRestoreSource.open(
      httpRestoreTransport(state.serverUrl, state.fingerprint, credential),
      cvd,
      req,
    );
  }

  /** A user's source (the admin CLI, the recovery tool): their API token, pinned to the server's certificate. */
  static forUser(
    login: { url: string; fingerprint: string; token: string },
    cvd: string,
    req: OpenRestoreRequest = {},
  ): Promise<RemoteRestoreSource> {
    return RemoteRestoreSource.open(
      httpRestoreTransport(login.url, login.fingerprint, login.token),
      cvd,
      req,
    );
  }

  get session(): string {
    return this.info.session;
  }

  /** Counts what a ByteReader takes from a response body (`stats.bytesReceived`). */
  private readonly countBytes = (n: number): void => {
    this.stats.bytesReceived += n;
  };

  /**
   * Run `attempt` until it succeeds, a failure is not a network one, or
   * FETCH_RETRY_DELAYS_MS is used up. `attempt` must be safe to repeat: each
   * repeats only what the earlier ones did not deliver. Errors of the
   * caller's callbacks come wrapped in CallerError and are rethrown as they are.
   */
  private async withRetries(what: string, attempt: () => Promise<void>, signal?: AbortSignal): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        await attempt();
        return;
      } catch (e) {
        if (e instanceof CallerError) throw e.error;
        if (signal?.aborted || i >= this.retryDelaysMs.length || !retryableFetchError(e)) {
          const err = asStrataError(e);
          if (!retryableFetchError(e)) throw err;
          const se =
            err instanceof StrataError
              ? err
              : new StrataError(
                  "IO_ERROR",
                  `the connection to the server failed: ${(err as Error)?.message}`,
                );
          throw new StrataError(se.code, `${se.message} (${what}; ${i + 1} attempts)`, {
            subject: se.subject,
            hint:
              se.hint ?? "check the network and that `strata server` is running, then run the restore again",
            cause: e,
          });
        }
        this.stats.retries = (this.stats.retries ?? 0) + 1;
        await waitMs(this.retryDelaysMs[i]!, signal);
      }
    }
  }

  async loadTree(ref: TreeRef, signal?: AbortSignal): Promise<SourceTree> {
    if (!ref.grant) throw new StrataError("INVALID_ARGUMENT", `tree ${ref.id} comes without a grant`);
    const path = `/restores/${encodeURIComponent(this.session)}/trees/${ref.id}?grant=${encodeURIComponent(ref.grant)}`;
    let tree: SourceTree | undefined;
    await this.withRetries(
      `tree ${ref.id}`,
      async () => {
        const body = await this.t.frames("GET", path, undefined, signal);
        const r = new ByteReader(body, this.countBytes);
        const got = await this.readTree(r, ref, 0);
        if (!(await r.atEnd()))
          throw new StrataError("DATA_CORRUPT", `tree ${ref.id}: trailing bytes after the grants`, {
            subject: ref.id,
          });
        tree = got;
      },
      signal,
    );
    return tree!;
  }

  readonly maxTrees = MAX_TREES_PER_REQUEST;

  /**
   * `POST /restores/:session/trees`: the trees of `refs` in one request,
   * each checked as `loadTree` checks it. A server without the route (an
   * older one) is asked tree by tree instead.
   */
  async loadTrees(
    refs: TreeRef[],
    onTree: (i: number, tree: SourceTree) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    if (refs.length === 0) return;
    if (this.oneByOne || refs.length === 1) {
      for (const [i, ref] of refs.entries()) onTree(i, await this.loadTree(ref, signal));
      return;
    }
    if (refs.length > MAX_TREES_PER_REQUEST)
      throw new StrataError("INVALID_ARGUMENT", `at most ${MAX_TREES_PER_REQUEST} trees per request`);
    for (const ref of refs)
      if (!ref.grant) throw new StrataError("INVALID_ARGUMENT", `tree ${ref.id} comes without a grant`);
    // Trees arrive in order: a repeated request asks for those not delivered yet.
    let done = 0;
    await this.withRetries(
      `${refs.length} trees`,
      async () => {
        const rest = refs.slice(done);
        let body: AsyncIterable<Buffer>;
        try {
          body = await this.t.frames(
            "POST",
            `/restores/${encodeURIComponent(this.session)}/trees`,
            { trees: rest.map((ref) => ({ id: ref.id, grant: ref.grant! })) },
            signal,
          );
        } catch (e) {
          const err = asStrataError(e);
          if (isStrataError(err, "NOT_FOUND") && /^no route /.test(err.message)) {
            this.oneByOne = true;
            return;
          }
          throw err;
        }
        const r = new ByteReader(body, this.countBytes);
        for (const [j, ref] of rest.entries()) {
          const tree = await this.readTree(r, ref, j);
          try {
            onTree(done, tree);
          } catch (e) {
            throw new CallerError(e);
          }
          done++;
        }
        if (!(await r.atEnd()))
          throw new StrataError("DATA_CORRUPT", `trailing bytes after ${rest.length} trees`, {
            subject: rest[rest.length - 1]!.id,
          });
      },
      signal,
    );
    if (this.oneByOne && done < refs.length)
      for (let i = done; i < refs.length; i++) onTree(i, await this.loadTree(refs[i]!, signal));
  }

  /** The server has no batch route for trees: ask one by one. */
  private oneByOne = false;

  /** One tree's frames (tree frame, grants): hash-checked, decoded, with its subtrees' refs. */
  private async readTree(r: ByteReader, ref: TreeRef, index: number): Promise<SourceTree> {
    const what = `tree ${ref.id}`;
    const f = await readTreeFrame(r, MAX_TREE_BYTES, 4096, index);
    if (f.id.toString("hex") !== ref.id)
      throw new StrataError(
        "DATA_CORRUPT",
        `asked for ${what}, the server sent tree ${f.id.toString("hex")}`,
        {
          subject: ref.id,
        },
      );
    const plain =
      f.flags & FLAG_ZSTD ? decompressUpTo(f.payload, FIRST_TREE_BOUND, MAX_TREE_BYTES, what) : f.payload;
    if (createHash("sha256").update(plain).digest("hex") !== ref.id)
      throw new StrataError("DATA_CORRUPT", `${what} from the server does not match its hash`, {
        subject: ref.id,
      });
    let nodes: FsNode[];
    try {
      nodes = decodeTree(plain, what);
    } catch (e) {
      throw new StrataError("DATA_CORRUPT", `${what}: ${(e as Error).message}`, { subject: ref.id });
    }
    const meta = (await readJsonFrame(r, 16 * 1024 * 1024, `${what} grants`)) as { grants?: unknown };
    const grants = meta?.grants;
    if (!Array.isArray(grants) || grants.length !== nodes.length)
      throw new StrataError("DATA_CORRUPT", `${what}: the server's grants do not match its entries`, {
        subject: ref.id,
      });
    return {
      nodes,
      subtrees: nodes.map((n, i) =>
        n.type === "dir" && n.subtree ? treeRefOf(n.subtree, grants[i] as string | null) : undefined,
      ),
    };
  }

  async fetchChunks(
    requests: ChunkRequest[],
    onChunk: (id: BlobId, plain: Buffer) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void> {
    const maxSize = this.chunker.maxSize;
    const firstBound = Math.min(maxSize, Math.max(this.chunker.avgSize * 4, 64 * 1024));
    await this.fetchChunkFrames(
      requests,
      async (id, compressed, payload) => {
        const what = `chunk ${id}`;
        const plain = compressed ? decompressUpTo(payload, firstBound, maxSize, what) : payload;
        if (plain.length > maxSize || createHash("sha256").update(plain).digest("hex") !== id)
          throw new StrataError("DATA_CORRUPT", `${what} from the server does not match its hash`, {
            subject: id,
          });
        await onChunk(id, plain);
      },
      signal,
    );
  }

  async fetchChunkFrames(
    requests: ChunkRequest[],
    onFrame: (id: BlobId, compressed: boolean, payload: Buffer) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void> {
    const wanted = new Set<string>();
    // Batches of at most MAX_IDS_PER_REQUEST ids; each id asked once.
    const batches: { tree: string; grant: string; ids: string[] }[][] = [];
    let batch: { tree: string; grant: string; ids: string[] }[] = [];
    let inBatch = 0;
    for (const r of requests) {
      if (!r.tree.grant) throw new StrataError("INVALID_ARGUMENT", `tree ${r.tree.id} comes without a grant`);
      let ids: string[] = [];
      for (const id of r.ids) {
        if (wanted.has(id)) continue;
        wanted.add(id);
        ids.push(id);
        if (++inBatch >= MAX_IDS_PER_REQUEST) {
          batch.push({ tree: r.tree.id, grant: r.tree.grant, ids });
          batches.push(batch);
          batch = [];
          ids = [];
          inBatch = 0;
        }
      }
      if (ids.length) batch.push({ tree: r.tree.id, grant: r.tree.grant, ids });
    }
    if (batch.length) batches.push(batch);
    const maxSize = this.chunker.maxSize;
    const got = new Set<string>();
    for (const b of batches) {
      signal?.throwIfAborted();
      let n = 0;
      for (const r of b) n += r.ids.length;
      await this.withRetries(
        `${n} chunks`,
        async () => {
          // A repeated request asks only for the chunks not received yet.
          const rest = b
            .map((r) => ({ ...r, ids: r.ids.filter((id) => !got.has(id)) }))
            .filter((r) => r.ids.length > 0);
          if (rest.length === 0) return;
          const body = await this.t.frames(
            "POST",
            `/restores/${encodeURIComponent(this.session)}/chunks`,
            { requests: rest },
            signal,
          );
          const r = new ByteReader(body, this.countBytes);
          // Frames already received are read without waiting (no promise per frame and field).
          for (let i = 0; r.buffered > 0 || !(await r.atEnd()); i++) {
            const next = readChunkFrame(r, maxSize + 1024, i);
            const f = next instanceof Promise ? await next : next;
            const id = f.id.toString("hex");
            if (!wanted.has(id) || got.has(id))
              throw new StrataError("DATA_CORRUPT", `the server sent chunk ${id}, which was not asked for`, {
                subject: id,
              });
            got.add(id);
            this.stats.chunksReceived++;
            try {
              const done = onFrame(id as BlobId, (f.flags & FLAG_ZSTD) !== 0, f.payload);
              if (done) await done;
            } catch (e) {
              throw new CallerError(e);
            }
          }
        },
        signal,
      );
    }
    const missing = [...wanted].filter((id) => !got.has(id));
    if (missing.length)
      throw new StrataError(
        "NOT_FOUND",
        `the server did not deliver ${missing.length} chunk(s): ${missing.slice(0, 5).join(", ")}${missing.length > 5 ? ", …" : ""}`,
        {
          subject: missing[0],
          hint: "the repository may be damaged: run `strata repo check --read-data` on the server",
        },
      );
  }

  /** Close the session (idempotent; errors are ignored: it expires anyway). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.t.json("DELETE", `/restores/${encodeURIComponent(this.session)}`).catch(() => {});
  }
}

/** An async iterable of one buffer (a transport that has the whole body at once). */
export function oneBuffer(b: Buffer): AsyncIterable<Buffer> {
  return Readable.from([b], { objectMode: true });
}
