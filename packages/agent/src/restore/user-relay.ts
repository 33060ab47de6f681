/**
 * Single-file restore for an endpoint's users (docs/design/restore.md,
 * "Single files"), agent side. A user's `strata agent restore-file PATH`
 * connects to the user socket; the agent checks that PATH is in the
 * caller's own user area, opens a restore of the CVD for PATH's folder,
 * and hands the caller one synthetic tree holding PATH's entry alone. From
 * there the caller can only follow grants the server issued for trees
 * below PATH: the folder's own grant (which would open PATH's siblings)
 * stays in the agent, which checks every chunk asked under the synthetic
 * tree against PATH's entry. The caller writes the files itself, as
 * itself.
 */
import { readFileSync } from "node:fs";
import * as nodePath from "node:path";
import {
  type BlobId,
  type CompiledPolicy,
  chunkIdsOf,
  encodeTree,
  type FsNode,
  hashBytes,
  StrataError,
  type TreeId,
} from "@strata/core";
import type { UserConnection, UserHandler } from "../user-socket.js";
import type { ChunkRequest, RestoreSource, TreeRef } from "./source.js";

export interface SnapshotSelector {
  /** A snapshot id or unique prefix. */
  snapshot?: string;
  /** The newest snapshot taken at or before this time (RFC 3339 or anything Date parses). */
  at?: string;
}

export interface UserRestoreDeps {
  /** The endpoint's root directory. */
  root: string;
  /** The CVD's upload policy, compiled for this endpoint; null when the endpoint has none (not active). */
  policy(): CompiledPolicy | null;
  /** A source for the chosen snapshot whose `root` is the tree of folder `dir` (absolute). */
  open(sel: SnapshotSelector, dir: string): Promise<RestoreSource>;
}

interface OpenRestore {
  source: RestoreSource;
  synthetic: TreeId;
  syntheticTree: Buffer;
  /** The folder's ref: kept here, never given to the caller. */
  folder: TreeRef;
  subtree: TreeRef | undefined;
  allowed: Set<BlobId>;
}

/** uid → home directory, from the endpoint's own /etc/passwd. */
export function homeOf(root: string, uid: number): string | null {
  let text: string;
  try {
    text = readFileSync(nodePath.join(root, "etc/passwd"), "utf8");
  } catch {
    return null;
  }
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length >= 7 && Number(f[2]) === uid && f[5]?.startsWith("/")) return nodePath.posix.normalize(f[5]);
  }
  return null;
}

/**
 * Throw PERMISSION_DENIED unless `uid` may restore `path`: root may restore
 * anything; another user only paths in their own home that the policy
 * classifies as user area.
 */
export function checkUserPath(deps: UserRestoreDeps, uid: number, path: string): string {
  if (!path.startsWith("/"))
    throw new StrataError("INVALID_ARGUMENT", `give an absolute path, not ${JSON.stringify(path)}`);
  const p = nodePath.posix.normalize(path).replace(/\/+$/, "") || "/";
  if (uid === 0) return p;
  const home = homeOf(deps.root, uid);
  const policy = deps.policy();
  if (!policy)
    throw new StrataError("UNSUPPORTED", "this endpoint has no CVD to restore from yet", {
      hint: "ask your administrator to approve the endpoint",
    });
  const inHome = home !== null && home !== "/" && (p === home || p.startsWith(`${home}/`));
  if (!inHome || policy.classify(p) !== "user")
    throw new StrataError(
      "PERMISSION_DENIED",
      `${p} is outside your user area${home ? ` (${home})` : ""}: you may restore only your own files`,
      { subject: p, hint: "ask your help desk to restore files of other areas" },
    );
  return p;
}

const b64 = (b: Buffer) => b.toString("base64");

function opened(conn: UserConnection, handle: unknown): OpenRestore {
  const o = typeof handle === "string" ? conn.state.get(`restore:${handle}`) : undefined;
  if (!o)
    throw new StrataError("NOT_FOUND", "no such restore on this connection; open one with restore-open");
  return o as OpenRestore;
}

function treeRef(v: unknown): TreeRef {
  const o = (v ?? {}) as { id?: unknown; grant?: unknown };
  if (typeof o.id !== "string" || !/^[0-9a-f]{64}$/.test(o.id))
    throw new StrataError("INVALID_ARGUMENT", "a tree ref needs a 64-hex id");
  return { id: o.id as TreeId, ...(typeof o.grant === "string" ? { grant: o.grant } : {}) };
}

/** The user socket's restore commands: restore-open, restore-tree, restore-chunks, restore-close. */
export function userRestoreHandler(deps: UserRestoreDeps): UserHandler {
  let seq = 0;
  return async (req, conn, part) => {
    switch (req.cmd) {
      case "restore-open": {
        if (typeof req.path !== "string")
          throw new StrataError("INVALID_ARGUMENT", "restore-open needs a path");
        const path = checkUserPath(deps, conn.peer.uid, req.path);
        if (path === "/")
          throw new StrataError("INVALID_ARGUMENT", "restore-file restores files and folders, not /");
        const sel: SnapshotSelector = {
          ...(typeof req.snapshot === "string" ? { snapshot: req.snapshot } : {}),
          ...(typeof req.at === "string" ? { at: req.at } : {}),
        };
        const source = await deps.open(sel, nodePath.posix.dirname(path));
        try {
          const folder = await source.loadTree(source.snapshot.root);
          const name = Buffer.from(nodePath.posix.basename(path));
          const i = folder.nodes.findIndex((n) => n.name.equals(name));
          if (i < 0)
            throw new StrataError(
              "NOT_FOUND",
              `${path} is not in snapshot ${source.snapshot.id.slice(0, 8)}`,
              {
                subject: path,
                hint: "list the folder's history with `strata agent history FOLDER` or pick another --at",
              },
            );
          const node = folder.nodes[i] as FsNode;
          const syntheticTree = encodeTree([node]);
          const synthetic = hashBytes(syntheticTree) as TreeId;
          const handle = String(++seq);
          const o: OpenRestore = {
            source,
            synthetic,
            syntheticTree,
            folder: source.snapshot.root,
            subtree: folder.subtrees[i],
            allowed: new Set(chunkIdsOf(node)),
          };
          conn.state.set(`restore:${handle}`, o);
          conn.onClose(() => void source.close?.());
          return {
            handle,
            snapshot: { id: source.snapshot.id, time: source.snapshot.time },
            chunker: source.chunker,
            root: { id: synthetic },
            path,
            agentRoot: deps.root,
          };
        } catch (e) {
          await source.close?.();
          throw e;
        }
      }
      case "restore-tree": {
        const o = opened(conn, req.handle);
        const ref = treeRef(req.ref);
        if (ref.id === o.synthetic) return { treeB64: b64(o.syntheticTree), subtrees: [o.subtree ?? null] };
        const t = await o.source.loadTree(ref);
        return { treeB64: b64(encodeTree(t.nodes)), subtrees: t.subtrees.map((s) => s ?? null) };
      }
      case "restore-chunks": {
        const o = opened(conn, req.handle);
        if (!Array.isArray(req.requests))
          throw new StrataError("INVALID_ARGUMENT", "restore-chunks needs requests");
        const requests: ChunkRequest[] = (req.requests as { tree?: unknown; ids?: unknown }[]).map((r) => {
          const tree = treeRef(r.tree);
          const ids = Array.isArray(r.ids) ? (r.ids as unknown[]) : [];
          if (!ids.every((x) => typeof x === "string" && /^[0-9a-f]{64}$/.test(x)))
            throw new StrataError("INVALID_ARGUMENT", "chunk ids are 64-hex strings");
          if (tree.id !== o.synthetic) return { tree, ids: ids as BlobId[] };
          for (const id of ids as BlobId[])
            if (!o.allowed.has(id))
              throw new StrataError(
                "PERMISSION_DENIED",
                `chunk ${String(id).slice(0, 12)} is not part of this restore`,
              );
          return { tree: o.folder, ids: ids as BlobId[] };
        });
        let n = 0;
        await o.source.fetchChunks(requests, async (id, plain) => {
          n++;
          await part({ id, dataB64: b64(plain) });
        });
        return { chunks: n };
      }
      case "restore-close": {
        const o = opened(conn, req.handle);
        conn.state.delete(`restore:${req.handle}`);
        await o.source.close?.();
        return { closed: true };
      }
      default:
        throw new StrataError("INVALID_ARGUMENT", `unknown user command ${JSON.stringify(req.cmd)}`, {
          hint: "commands: restore-open, restore-tree, restore-chunks, restore-close, fetch, status",
        });
    }
  };
}
