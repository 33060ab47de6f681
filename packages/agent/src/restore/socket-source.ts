/**
 * The user side of single-file restore: a RestoreSource that reads through
 * the agent's user socket (user-relay.ts). Every tree and chunk is
 * hash-checked here too, so a confused agent cannot make the user write
 * anything but the snapshot's bytes.
 */
import {
  type BlobId,
  type ChunkerParams,
  decodeTree,
  hashBytes,
  StrataError,
  type TreeId,
} from "@strata/core";
import { UserSocketClient } from "../user-socket.js";
import type { ChunkRequest, RestoreSource, SourceStats, SourceTree, TreeRef } from "./source.js";
import type { SnapshotSelector } from "./user-relay.js";

export interface OpenedUserRestore {
  source: RestoreSource;
  /** The path restored, normalized by the agent. */
  path: string;
  /** The endpoint root the agent protects (where "in place" is). */
  agentRoot: string;
}

class SocketRestoreSource implements RestoreSource {
  readonly stats: SourceStats = { bytesReceived: 0, chunksReceived: 0 };
  constructor(
    private readonly client: UserSocketClient,
    private readonly handle: string,
    readonly snapshot: { id: string; time: string; root: TreeRef },
    readonly chunker: ChunkerParams,
  ) {}

  async loadTree(ref: TreeRef): Promise<SourceTree> {
    const r = await this.client.request<{ treeB64: string; subtrees: (TreeRef | null)[] }>({
      cmd: "restore-tree",
      handle: this.handle,
      ref,
    });
    const bytes = Buffer.from(r.treeB64, "base64");
    this.stats.bytesReceived += bytes.length;
    if (hashBytes(bytes) !== ref.id)
      throw new StrataError(
        "DATA_CORRUPT",
        `tree ${ref.id.slice(0, 12)} from the agent does not match its id`,
      );
    const nodes = decodeTree(bytes, `tree ${ref.id.slice(0, 12)}`);
    return { nodes, subtrees: nodes.map((_, i) => r.subtrees[i] ?? undefined) };
  }

  async fetchChunks(
    requests: ChunkRequest[],
    onChunk: (id: BlobId, plain: Buffer) => void | Promise<void>,
  ): Promise<void> {
    let chain: Promise<void> = Promise.resolve();
    let bad: StrataError | null = null;
    await this.client.request({ cmd: "restore-chunks", handle: this.handle, requests }, (p) => {
      const { id, dataB64 } = p as { id: BlobId; dataB64: string };
      const plain = Buffer.from(dataB64, "base64");
      this.stats.bytesReceived += plain.length;
      this.stats.chunksReceived++;
      if (hashBytes(plain) !== id) {
        bad ??= new StrataError(
          "DATA_CORRUPT",
          `chunk ${id.slice(0, 12)} from the agent does not match its id`,
        );
        return;
      }
      chain = chain.then(() => onChunk(id, plain));
    });
    await chain;
    if (bad) throw bad;
  }

  async close(): Promise<void> {
    try {
      await this.client.request({ cmd: "restore-close", handle: this.handle });
    } catch {
      // the connection may already be gone
    }
    this.client.close();
  }
}

/** Ask the agent on `stateDir` to open PATH of this user's CVD for restore. */
export async function openUserRestore(
  stateDir: string,
  path: string,
  sel: SnapshotSelector = {},
): Promise<OpenedUserRestore> {
  const client = await UserSocketClient.connect(stateDir);
  try {
    const r = await client.request<{
      handle: string;
      snapshot: { id: string; time: string };
      chunker: ChunkerParams;
      root: { id: TreeId };
      path: string;
      agentRoot: string;
    }>({ cmd: "restore-open", path, ...sel });
    const source = new SocketRestoreSource(
      client,
      r.handle,
      { ...r.snapshot, root: { id: r.root.id } },
      r.chunker,
    );
    return { source, path: r.path, agentRoot: r.agentRoot };
  } catch (e) {
    client.close();
    throw e;
  }
}
