/** Worker thread for `check --read-data`: verifies whole packs (see pack-verify.ts). */
import { parentPort, workerData } from "node:worker_threads";
import type { PackId } from "@strata/core";
import type { IndexEntry } from "./catalog.js";
import { MasterKey } from "./crypto.js";
import { BlobCodec, verifyPackBytes, verifyPackLayout } from "./pack-verify.js";
import { serve } from "./thread-pool.js";

export interface VerifyRequest {
  seq: number;
  id: PackId;
  data: Uint8Array;
  size: number;
  /** The catalog's entries of the pack, or its compact layout (see verifyPackLayout). */
  entries?: Pick<IndexEntry, "id" | "packId" | "offset" | "length" | "rawLength" | "compressed">[];
  layout?: Uint8Array;
}

if (parentPort) {
  const key = new MasterKey(Buffer.from((workerData as { key: Uint8Array }).key));
  const codec = new BlobCodec(key, 1);
  serve(parentPort, (m: VerifyRequest) => {
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    if (m.layout) {
      const layout = Buffer.from(m.layout.buffer, m.layout.byteOffset, m.layout.byteLength);
      return verifyPackLayout(key, codec, m.id, data, layout);
    }
    return verifyPackBytes(key, codec, m.id, data, m.size, m.entries ?? []);
  });
}
