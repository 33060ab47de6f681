/** Worker thread for `check --read-data`: verifies whole packs (see pack-verify.ts). */
import { closeSync, openSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import type { PackId } from "@strata/core";
import { readRangeSync } from "./blob-store.js";
import type { IndexEntry } from "./catalog.js";
import { MasterKey } from "./crypto.js";
import { BlobCodec, readFromBuffer, verifyPackBytes, verifyPackLayout } from "./pack-verify.js";
import { serve } from "./thread-pool.js";

export interface VerifyRequest {
  seq: number;
  id: PackId;
  /** The whole pack, or (with a layout) the path of its file (see `BlobStore.localPath`), read here. */
  data?: Uint8Array;
  path?: string;
  size: number;
  /** The catalog's entries of the pack, or its compact layout (see verifyPackLayout). */
  entries?: Pick<IndexEntry, "id" | "packId" | "offset" | "length" | "rawLength" | "compressed" | "type">[];
  layout?: Uint8Array;
}

if (parentPort) {
  const key = new MasterKey(Buffer.from((workerData as { key: Uint8Array }).key));
  const codec = new BlobCodec(key, 1);
  serve(parentPort, async (m: VerifyRequest) => {
    if (m.path !== undefined && m.layout) {
      const layout = Buffer.from(m.layout.buffer, m.layout.byteOffset, m.layout.byteLength);
      const fd = openSync(m.path, "r");
      try {
        return await verifyPackLayout(key, codec, m.id, m.size, readFromFile(fd, m.path), layout);
      } finally {
        closeSync(fd);
      }
    }
    const data = Buffer.from(m.data!.buffer, m.data!.byteOffset, m.data!.byteLength);
    if (m.layout) {
      const layout = Buffer.from(m.layout.buffer, m.layout.byteOffset, m.layout.byteLength);
      return verifyPackLayout(key, codec, m.id, data.length, readFromBuffer(data), layout);
    }
    return verifyPackBytes(key, codec, m.id, data, m.size, m.entries ?? []);
  });
}

/** Segments are read into one buffer, reused: verifyPackLayout is done with a read's bytes before the next. */
let scratch: Buffer = Buffer.alloc(0);
function readFromFile(fd: number, path: string): (offset: number, length: number) => Buffer {
  return (offset, length) => {
    if (scratch.length < length && length <= 8 << 20)
      scratch = Buffer.allocUnsafeSlow(Math.max(length, 4 << 20));
    return readRangeSync(fd, path, offset, length, scratch);
  };
}
