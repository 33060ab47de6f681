import { StrataError } from "@strata/core";
import type { BlobStore } from "./blob-store.js";

/**
 * Wraps a real BlobStore and injects faults: used by tests to prove error
 * paths leave stored data intact (a full disk, a failing read) without
 * mocking the store itself.
 */
export class FaultyBlobStore implements BlobStore {
  /** Fail every `put` after this many succeeded (null: never). */
  failPutsAfter: number | null = null;
  putErrorCode = "ENOSPC";
  private puts = 0;

  constructor(private readonly inner: BlobStore) {}

  get location(): string {
    return this.inner.location;
  }

  async put(name: string, data: Buffer | readonly Buffer[]): Promise<void> {
    if (this.failPutsAfter !== null && this.puts >= this.failPutsAfter) {
      const err = Object.assign(new Error(`${this.putErrorCode}: injected fault writing ${name}`), {
        code: this.putErrorCode,
      });
      throw err.code === "ENOSPC"
        ? new StrataError("NO_SPACE", `no space left while writing ${this.location}/${name}`, {
            subject: name,
            cause: err,
            hint: "free space on the device holding the repository and run the command again; stored data is unchanged",
          })
        : err;
    }
    this.puts++;
    return this.inner.put(name, data);
  }
  get(name: string): Promise<Buffer> {
    return this.inner.get(name);
  }
  getRange(name: string, offset: number, length: number): Promise<Buffer> {
    return this.inner.getRange(name, offset, length);
  }
  stat(name: string) {
    return this.inner.stat(name);
  }
  list(prefix: string) {
    return this.inner.list(prefix);
  }
  delete(name: string): Promise<void> {
    return this.inner.delete(name);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
