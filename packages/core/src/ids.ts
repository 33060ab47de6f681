/**
 * Branded identifiers. Every id is 32 raw bytes (SHA-256) rendered as 64
 * lowercase hex characters. Brands stop a pack id being passed where a chunk
 * id is expected; they cost nothing at run time.
 */
declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** Hash of a chunk's plaintext. */
export type ChunkId = Brand<string, "ChunkId">;
/** Hash of an encoded tree's plaintext (trees are stored as blobs). */
export type TreeId = Brand<string, "TreeId">;
/** Hash of a pack file's full contents. */
export type PackId = Brand<string, "PackId">;
/** Hash of a snapshot's encoded record. */
export type SnapshotId = Brand<string, "SnapshotId">;
/** Any blob stored in a pack: a chunk or a tree. */
export type BlobId = ChunkId | TreeId;

const HEX64 = /^[0-9a-f]{64}$/;

export function isHexId(s: string): boolean {
  return HEX64.test(s);
}

export function asChunkId(s: string): ChunkId {
  return s as ChunkId;
}
export function asTreeId(s: string): TreeId {
  return s as TreeId;
}
export function asPackId(s: string): PackId {
  return s as PackId;
}
export function asSnapshotId(s: string): SnapshotId {
  return s as SnapshotId;
}

export function idToBytes(id: string): Buffer {
  return Buffer.from(id, "hex");
}
export function bytesToId<T extends string>(b: Uint8Array): T {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex") as T;
}

/** Short form for humans: the first 8 hex characters. */
export function shortId(id: string): string {
  return id.slice(0, 8);
}
