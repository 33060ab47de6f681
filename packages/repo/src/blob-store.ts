import { randomBytes } from "node:crypto";
import {
  constants as C,
  closeSync,
  promises as fsp,
  fsync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readSync,
  writeSync,
} from "node:fs";
import * as path from "node:path";
import { fromSystemError, StrataError } from "@strata/core";
import { readAhead } from "@strata/fs";

/** Ranges up to this size are read synchronously by `getRange` (see there). */
const SYNC_READ_MAX = 64 * 1024;

/**
 * Where repository files live: packs, snapshots, keys, config. The contract
 * fits a directory and an S3 bucket alike:
 *
 * - Names are relative, '/'-separated, made of [A-Za-z0-9._-] segments; no
 *   segment is '.' or '..'. Implementations MUST reject other names.
 * - `put` is atomic: a reader sees the whole object or nothing, never a
 *   prefix. When `put` resolves the object is durable. Putting a name that
 *   exists replaces it (objects are content-addressed, so the bytes are the
 *   same in practice).
 * - `get`/`getRange` of a missing name MUST throw StrataError NOT_FOUND
 *   naming it; `getRange` past the end MUST throw DATA_CORRUPT (a truncated
 *   object), never return short data silently.
 * - `delete` is idempotent: deleting a missing name succeeds.
 * - `list(prefix)` yields every object whose name starts with `prefix`, in no
 *   particular order, without holding all names in memory.
 */
export interface BlobStore {
  put(name: string, data: Buffer | readonly Buffer[]): Promise<void>;
  get(name: string): Promise<Buffer>;
  getRange(name: string, offset: number, length: number): Promise<Buffer>;
  /**
   * `getRange` into the caller's buffer (at least `length` bytes; its first
   * `length` bytes are returned): a reader of many ranges reuses one buffer
   * instead of allocating each. Same errors as `getRange`. Optional.
   */
  getRangeInto?(name: string, offset: number, length: number, into: Buffer): Promise<Buffer>;
  /**
   * A hint that `getRange` of this range comes soon: a store on a local disk
   * starts reading it in the background. Resolves once the hint is given;
   * never rejects (a missing blob fails its read later). Optional.
   */
  readAhead?(name: string, offset: number, length: number): Promise<void>;
  /** Size in bytes, or null when missing. */
  stat(name: string): Promise<{ size: number; mtime: Date } | null>;
  list(prefix: string): AsyncIterable<{ name: string; size: number }>;
  delete(name: string): Promise<void>;
  /**
   * Optional: a temporary object for bytes whose name is known only once
   * they are all written (a pack is named by the hash of its bytes), so a
   * writer need not hold them in memory. `commit(name)` gives `put`'s
   * guarantees: atomic, durable when it resolves, replacing `name`. Until
   * then the object is invisible to `list`, and one left by a crash is
   * removed by `sweepTemporary`. Stores without it get whole buffers via `put`.
   */
  createTemp?(): TempObject;
  /**
   * Optional: remove temporary objects left by writers that crashed, older
   * than `before`. Stores whose puts are atomic server-side need none.
   */
  sweepTemporary?(before: Date): Promise<number>;
  /**
   * Optional: a file path from which any thread of this process may read
   * the object's bytes directly (stores on a local filesystem). Readers must
   * treat the file as read-only and report errors as `getRange` would.
   */
  localPath?(name: string): string;
  /** Human-readable location for messages. */
  readonly location: string;
  close(): Promise<void>;
}

/** Bytes being written to a store under a name given at the end (see `BlobStore.createTemp`). */
export interface TempObject {
  /** Append bytes (synchronously: the caller may reuse or drop them at once). */
  write(data: Uint8Array): void;
  /** Bytes written so far. */
  readonly size: number;
  /** Make the bytes durable under `name`; the temporary object is gone afterwards. */
  commit(name: string): Promise<void>;
  /** Drop the temporary object (idempotent). */
  abort(): Promise<void>;
}

const SEGMENT = /^[A-Za-z0-9._-]+$/;

export function validateBlobName(name: string): void {
  const segs = name.split("/");
  if (!name || segs.some((s) => !SEGMENT.test(s) || s === "." || s === "..")) {
    throw new StrataError("UNSAFE_PATH", `invalid object name ${JSON.stringify(name)}`, { subject: name });
  }
}

/**
 * A BlobStore on a local or shared directory. Writes go to a temporary file
 * in the same directory, are fsynced, renamed into place and the directory is
 * fsynced, so a crash leaves either the old state or the whole new object.
 * Temporary files are named `.tmp-*` and ignored by `list`.
 */
export class DirBlobStore implements BlobStore {
  private readonly fds = new Map<string, Promise<fsp.FileHandle>>();
  private readonly fdOrder: string[] = [];

  constructor(readonly root: string) {}

  get location(): string {
    return this.root;
  }

  localPath(name: string): string {
    return this.full(name);
  }

  private full(name: string): string {
    validateBlobName(name);
    return path.join(this.root, name);
  }

  async put(name: string, data: Buffer | readonly Buffer[]): Promise<void> {
    const dest = this.full(name);
    const dir = path.dirname(dest);
    const tmp = path.join(dir, `.tmp-${randomBytes(8).toString("hex")}`);
    try {
      await fsp.mkdir(dir, { recursive: true });
      const fh = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
      try {
        const parts = Buffer.isBuffer(data) ? [data] : data;
        // writev may write less than asked (a full disk reports a short
        // write before ENOSPC): keep writing until every byte is down, so a
        // short object is never renamed into place.
        for (const part of parts) {
          let off = 0;
          while (off < part.length) {
            const { bytesWritten } = await fh.write(part, off, part.length - off);
            if (bytesWritten <= 0) throw Object.assign(new Error("short write"), { code: "EIO" });
            off += bytesWritten;
          }
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, dest);
      await syncDir(dir);
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      throw fromSystemError(e, "writing", `${this.root}/${name}`);
    }
  }

  /**
   * A temporary file `.tmp-<16 hex>` in the store's root (mode 0600, O_EXCL),
   * written with synchronous positional writes until every byte is down.
   * `commit` fsyncs it, renames it to its name and fsyncs the target's
   * directory — the same steps as `put`, so the same crash guarantees.
   */
  createTemp(): TempObject {
    const root = this.root;
    const tmp = path.join(root, `.tmp-${randomBytes(8).toString("hex")}`);
    let fd: number;
    try {
      mkdirSync(root, { recursive: true });
      fd = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
    } catch (e) {
      throw fromSystemError(e, "writing", tmp);
    }
    let size = 0;
    let open = true;
    const close = () => {
      if (open) {
        open = false;
        closeSync(fd);
      }
    };
    const full = (name: string) => this.full(name);
    return {
      get size() {
        return size;
      },
      write(data: Uint8Array): void {
        if (!open) throw new StrataError("INTERNAL", `temporary object ${tmp} is closed`);
        let off = 0;
        try {
          while (off < data.length) {
            const n = writeSync(fd, data, off, data.length - off, size + off);
            if (n <= 0) throw Object.assign(new Error("short write"), { code: "EIO" });
            off += n;
          }
        } catch (e) {
          throw fromSystemError(e, "writing", tmp);
        }
        size += data.length;
      },
      async commit(name: string): Promise<void> {
        try {
          const dest = full(name);
          const dir = path.dirname(dest);
          if (!open) throw new StrataError("INTERNAL", `temporary object ${tmp} is closed`);
          // A write that failed half-way may have left bytes past `size`.
          ftruncateSync(fd, size);
          await new Promise<void>((resolve, reject) => fsync(fd, (e) => (e ? reject(e) : resolve())));
          close();
          await fsp.mkdir(dir, { recursive: true });
          await fsp.rename(tmp, dest);
          await syncDir(dir);
        } catch (e) {
          close();
          await fsp.rm(tmp, { force: true }).catch(() => {});
          throw e instanceof StrataError ? e : fromSystemError(e, "writing", `${root}/${name}`);
        }
      },
      async abort(): Promise<void> {
        close();
        await fsp.rm(tmp, { force: true }).catch(() => {});
      },
    };
  }

  async get(name: string): Promise<Buffer> {
    try {
      return await fsp.readFile(this.full(name));
    } catch (e) {
      throw this.readError(e, name);
    }
  }

  private readError(e: unknown, name: string): StrataError {
    const err = e as NodeJS.ErrnoException;
    if (err?.code === "ENOENT") {
      return new StrataError("NOT_FOUND", `${name} is missing from the repository at ${this.root}`, {
        subject: name,
      });
    }
    return fromSystemError(e, "reading", `${this.root}/${name}`);
  }

  /**
   * Drop `name`'s cached handle from the map and the eviction order: a
   * stale name left in the order would later evict (close early) a handle
   * opened again under the same name.
   */
  private forget(name: string): void {
    this.fds.delete(name);
    const i = this.fdOrder.indexOf(name);
    if (i >= 0) this.fdOrder.splice(i, 1);
  }

  /** Open read handles, at most this many (least recently opened first out). */
  get openHandles(): readonly string[] {
    return this.fdOrder;
  }

  /** Keep a few read handles open: restore and check read many ranges per pack. */
  private handle(name: string): Promise<fsp.FileHandle> {
    let h = this.fds.get(name);
    if (!h) {
      const opened = fsp.open(this.full(name), "r");
      h = opened;
      opened.catch(() => {
        if (this.fds.get(name) === opened) this.forget(name);
      });
      this.fds.set(name, h);
      this.fdOrder.push(name);
      while (this.fdOrder.length > 64) {
        const old = this.fdOrder.shift()!;
        const p = this.fds.get(old);
        this.fds.delete(old);
        p?.then((fh) => fh.close()).catch(() => {});
      }
    }
    return h;
  }

  getRange(name: string, offset: number, length: number): Promise<Buffer> {
    return this.getRangeInto(name, offset, length, Buffer.allocUnsafe(length));
  }

  readAhead(name: string, offset: number, length: number): Promise<void> {
    return this.handle(name).then(
      (fh) => readAhead(fh.fd, offset, length),
      () => {}, // its read will say what is wrong
    );
  }

  async getRangeInto(name: string, offset: number, length: number, into: Buffer): Promise<Buffer> {
    if (into.length < length)
      throw new StrataError("INVALID_ARGUMENT", `a ${into.length}-byte buffer cannot hold ${length} bytes`);
    try {
      const fh = await this.handle(name);
      const buf = into.length === length ? into : into.subarray(0, length);
      let got = 0;
      // Small ranges (trees, single chunks) are read synchronously: a trip
      // through libuv's thread pool costs more than the read itself, and
      // walks read thousands of them one after the other.
      const sync = length <= SYNC_READ_MAX;
      while (got < length) {
        const bytesRead = sync
          ? readSync(fh.fd, buf, got, length - got, offset + got)
          : (await fh.read(buf, got, length - got, offset + got)).bytesRead;
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got < length) {
        throw new StrataError(
          "DATA_CORRUPT",
          `${name} is truncated: wanted bytes ${offset}..${offset + length}, file ends at ${offset + got}`,
          { subject: name },
        );
      }
      return buf;
    } catch (e) {
      if (e instanceof StrataError) throw e;
      throw this.readError(e, name);
    }
  }

  async stat(name: string): Promise<{ size: number; mtime: Date } | null> {
    try {
      const st = await fsp.stat(this.full(name));
      return { size: st.size, mtime: st.mtime };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw fromSystemError(e, "reading", `${this.root}/${name}`);
    }
  }

  async *list(prefix: string): AsyncIterable<{ name: string; size: number }> {
    // Walk the directory under the prefix's directory part.
    const slash = prefix.lastIndexOf("/");
    const baseDir = slash >= 0 ? prefix.slice(0, slash) : "";
    const stack = [baseDir];
    while (stack.length) {
      const rel = stack.pop()!;
      let dir: import("node:fs").Dir;
      try {
        dir = await fsp.opendir(path.join(this.root, rel));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT" || (e as NodeJS.ErrnoException).code === "ENOTDIR")
          continue;
        throw fromSystemError(e, "listing", path.join(this.root, rel));
      }
      for await (const ent of dir) {
        if (ent.name.startsWith(".tmp-")) continue;
        const name = rel ? `${rel}/${ent.name}` : ent.name;
        if (ent.isDirectory()) {
          if (prefix.startsWith(`${name}/`) || name.startsWith(prefix)) stack.push(name);
        } else if (ent.isFile() && name.startsWith(prefix)) {
          const st = await fsp.stat(path.join(this.root, name)).catch(() => null);
          if (st) yield { name, size: st.size };
        }
      }
    }
  }

  async sweepTemporary(before: Date): Promise<number> {
    let removed = 0;
    const walk = async (dir: string): Promise<void> => {
      let entries: import("node:fs").Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else if (e.name.startsWith(".tmp-")) {
          const st = await fsp.stat(p).catch(() => null);
          if (st && st.mtime < before) {
            await fsp.rm(p, { force: true });
            removed++;
          }
        }
      }
    };
    await walk(this.root);
    return removed;
  }

  async delete(name: string): Promise<void> {
    const p = this.full(name);
    const h = this.fds.get(name);
    if (h) {
      this.forget(name);
      h.then((fh) => fh.close()).catch(() => {});
    }
    try {
      await fsp.unlink(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
      throw fromSystemError(e, "deleting", `${this.root}/${name}`);
    }
  }

  async close(): Promise<void> {
    const all = [...this.fds.values()];
    this.fds.clear();
    this.fdOrder.length = 0;
    await Promise.all(all.map((p) => p.then((fh) => fh.close()).catch(() => {})));
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Read `length` bytes at `offset` of an open file, synchronously, for worker
 * threads reading a store's files directly (`BlobStore.localPath`). A file
 * that ends first is reported truncated, naming `path`, as `getRange` does.
 */
export function readRangeSync(
  fd: number,
  path: string,
  offset: number,
  length: number,
  into?: Buffer,
): Buffer {
  const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, offset + got);
    if (n === 0)
      throw new Error(`${path} ends at byte ${offset + got}, before ${offset + length} (truncated)`);
    got += n;
  }
  return buf;
}

/** Write all of `data` at `pos` of an open file (positional writes may be short). */
export function writeAllSync(fd: number, data: Uint8Array, pos: number): void {
  let w = 0;
  while (w < data.length) w += writeSync(fd, data, w, data.length - w, pos + w);
}
