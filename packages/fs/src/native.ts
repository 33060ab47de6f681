import { createRequire } from "node:module";
import { getSystemErrorMap } from "node:util";
import { StrataError } from "@strata/core";

/**
 * The N-API addon (native/strata_fs.c), built by this package's `install`
 * script. Paths are raw bytes; calls never follow a final symlink. Errors are
 * Node-style errno errors (`.code` such as ENODATA, ENOTSUP, EPERM; the path in
 * the message), not StrataErrors: callers that know what they were doing wrap
 * them with `fromSystemError`.
 */
export interface NativeFs {
  llistxattr(path: Buffer): string[];
  lgetxattr(path: Buffer, name: string): Buffer;
  /** flags: 0, XATTR_CREATE (1) or XATTR_REPLACE (2). */
  lsetxattr(path: Buffer, name: string, value: Buffer, flags?: number): void;
  lremovexattr(path: Buffer, name: string): void;
  /** mode includes the type bits (S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK). */
  mknod(path: Buffer, mode: number, dev: number | bigint): void;
  lutimens(path: Buffer, atimeNs: bigint, mtimeNs: bigint): void;
  /**
   * futimens(fd), then close(fd) whatever futimens did: 0, the errno of
   * futimens (closed all the same), or minus the errno of close. A raw
   * close: a worker thread may close what the main thread opened.
   */
  futimensClose(fd: number, atimeNs: bigint, mtimeNs: bigint): number;
  /** Next data offset at or after `offset`, or -1 when there is none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** Next hole offset at or after `offset` (EOF counts as a hole), or -1 past EOF. */
  seekHole(fd: number, offset: number): number;
  /** Every thread of the process to the idle I/O class. */
  ioprioIdle(): void;
  /** Raw ioprio of thread `tid` (0: the caller): class << 13 | data. */
  ioprioGet(tid: number): number;
  /** Every thread of the process to raw ioprio `prio` (class << 13 | data). */
  ioprioSet(prio: number): void;
  /** Scheduling policy of thread `tid` (0: the caller): 0 SCHED_OTHER, 5 SCHED_IDLE, … */
  schedPolicy(tid: number): number;
  /** Every thread of the process to SCHED_OTHER (0) or SCHED_IDLE (5). */
  schedSetAll(policy: number): void;
  fadviseDontneed(fd: number, offset: number, len: number): void;
  /** posix_fadvise(POSIX_FADV_WILLNEED): start reading the range into the page cache. */
  fadviseWillneed(fd: number, offset: number, len: number): void;
  /** SO_PEERCRED of a connected Unix socket: who is at the other end. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** syncfs(2) on the filesystem holding directory `path`: every dirty page and inode of it to disk. */
  syncfs(path: Buffer | string): void;
  /**
   * Create each path in order, in one job on libuv's thread pool, by the type bits of its mode:
   * a file (none or S_IFREG: O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW) answers its open descriptor,
   * a directory (S_IFDIR: mkdir) or a symlink (S_IFLNK: to `targets[i]`) answers 0; a failure
   * answers minus the errno. `cb` must not throw.
   */
  createFiles(
    paths: Buffer[],
    modes: number[],
    cb: (results: Int32Array) => void,
    targets?: (Buffer | undefined)[],
  ): void;
  /** syncfs(2) of directory `path`'s filesystem on libuv's thread pool; `cb(errno)` (0: done). `cb` must not throw. */
  syncfsAsync(path: Buffer | string, cb: (errno: number) => void): void;
  /** Every entry of a directory with its lstat, packed (see `scanDir` in scan-dir.ts). */
  scanDir(path: Buffer): Buffer;
  /** glibc mallopt: M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (<= 0: unchanged). */
  mallocTune(arenaMax: number, mmapThreshold: number, trimThreshold: number): boolean;
  /** glibc malloc_trim(0): free pages of every arena back to the kernel; whether any were. */
  mallocTrim(): boolean;
  /**
   * A per-directory inotify watcher (native/strata_watch.c): memory grows
   * with watched directories, not files. `cb(flags, newDirs)` runs on the
   * event loop after each batch of events that needs a decision: flags are
   * `WATCH_FLAGS`; newDirs packs the directories created or moved in
   * (i32 parent wd, u16 name length, name bytes; little-endian). `maxDirs`:
   * dirty directories kept before `watchTake` answers null. `maxWatches` > 0
   * (a test hook) makes further watches fail with ENOSPC, as the kernel's
   * `fs.inotify.max_user_watches` would. Not closing it keeps it open.
   */
  watchOpen(
    cb: (flags: number, newDirs: Buffer | null) => void,
    maxDirs: number,
    maxWatches: number,
  ): WatchHandle;
  /**
   * Watch `name` in the directory watched as `parentWd` (0: `name` is a
   * root's absolute path), then list it: its subdirectories' names, packed
   * (u16 length, bytes), or null when it could not be listed. `dirty`:
   * mark it changed if it was not watched at that place already. Throws errno errors (ENOENT, ENOTDIR, ENOSPC, ...).
   */
  watchAdd(
    h: WatchHandle,
    parentWd: number,
    name: Buffer,
    dirty: boolean,
  ): { wd: number; subdirs: Buffer | null };
  /** Stop watching `name` in `parentWd` and everything below it; how many watches went. */
  watchRemove(h: WatchHandle, parentWd: number, name: Buffer): number;
  /** The path of a watched directory, or null when `wd` is not (or no longer) watched. */
  watchPath(h: WatchHandle, wd: number): Buffer | null;
  /** The dirty directories' paths (null: more than maxDirs); `reset` starts a new set. */
  watchTake(h: WatchHandle, reset: boolean): Buffer[] | null;
  /** begin: start a generation; else drop every watch `watchAdd` did not confirm since it began. */
  watchSweep(h: WatchHandle, begin: boolean): number;
  /** Watches held, and the bytes the watcher's own tables take. */
  watchStats(h: WatchHandle): { watches: number; bytes: number };
  watchClose(h: WatchHandle): void;
  /**
   * AES-256-GCM through the system's libcrypto (native/strata_aead.c): true,
   * or why it is not available (then gcmSeal/gcmOpen throw). The first call
   * loads the library.
   */
  aeadAvailable(): true | string;
  /** nonce(12) || ciphertext || tag(16) into `out` at `offset`; returns the bytes written. */
  gcmSeal(
    key: Uint8Array,
    nonce: Uint8Array,
    plain: Uint8Array,
    aad: Uint8Array | null,
    out: Uint8Array,
    offset: number,
  ): number;
  /** The plaintext of `sealed` into `out` at `offset` (no overlap); its length, or -1 when authentication fails. */
  gcmOpen(
    key: Uint8Array,
    sealed: Uint8Array,
    aad: Uint8Array | null,
    out: Uint8Array,
    offset: number,
  ): number;
}

/** An open native watcher (opaque). */
export type WatchHandle = { readonly __strataWatch: unique symbol };

/** Bits of the watcher callback's `flags`. */
export const WATCH_FLAGS = {
  /** The kernel's event queue overflowed (IN_Q_OVERFLOW): events were lost. */
  overflow: 1,
  /** More directories appeared at once than the watcher buffers (4 MiB of names): some were dropped. */
  newDirsLost: 2,
  /** A root's own metadata changed, or it went away. */
  rootChanged: 4,
  /** A root's watch was removed (deleted, moved, unmounted). */
  rootGone: 8,
  /** A filesystem under a watched directory was unmounted: what it hid was never watched. */
  unmounted: 16,
} as const;

// Resolved relative to this module: src/ (tests) and dist/ (build) are siblings of native/.
const ADDON = "../native/build/Release/strata_fs.node";

function load(): NativeFs {
  const require = createRequire(import.meta.url);
  try {
    return require(ADDON) as NativeFs;
  } catch (e) {
    throw new StrataError(
      "INTERNAL",
      `cannot load the @strata/fs native addon (${ADDON}): ${(e as Error).message}`,
      {
        subject: ADDON,
        cause: e,
        hint: "it is built by `npm ci`; if scripts were skipped, run `npm run build:native -w @strata/fs` (needs a C compiler, make, python3)",
      },
    );
  }
}

export const native: NativeFs = load();

/**
 * An errno an addon call answered (positive, as C has it), shaped like Node's
 * fs errors: "ECODE: description, SYSCALL 'PATH'", with code, errno (negative),
 * syscall and path.
 */
export function errnoError(errno: number, syscall: string, path: string): NodeJS.ErrnoException {
  const [code, description] = getSystemErrorMap().get(-errno) ?? [`E${errno}`, "unknown error"];
  return Object.assign(new Error(`${code}: ${description}, ${syscall} '${path}'`), {
    code,
    errno: -errno,
    syscall,
    path,
  });
}

export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
