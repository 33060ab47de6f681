import { chmodSync, close, constants, ftruncate, lchownSync, open, write } from "node:fs";
import { link, lstat, mkdir, symlink } from "node:fs/promises";
import { promisify } from "node:util";
import { type FsNode, fromSystemError, StrataError } from "@strata/core";
import { displayPath } from "./display-path.js";
import { native } from "./native.js";

/*
 * Restore side. A snapshot may be hostile (a compromised endpoint uploaded
 * it), so every name is validated before use and nothing is ever written
 * through a symlink: the restore creates each parent directory itself (and
 * checks any directory that already exists is a real one), creates files
 * with O_EXCL|O_NOFOLLOW, and every metadata call works on the link itself.
 *
 * Typical use per directory, depth first:
 *   makeDir(dir); for each entry: p = joinName(dir, entry.name), then
 *   createFile + writeAt + finishFile | createSymlink | createHardlink |
 *   createSpecial | (recurse for dirs), then applyMetadata(p, entry) for
 *   non-directories; applyMetadata(dir, dirNode) last, once its children are
 *   done, because creating children changes a directory's mtime.
 */

const openAsync = promisify(open);
const writeAsync = promisify(write);
const ftruncateAsync = promisify(ftruncate);
const closeAsync = promisify(close);

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK } = constants;

/** Longest file name Linux filesystems accept (NAME_MAX). */
export const NAME_MAX = 255;

/**
 * Throw UNSAFE_PATH unless `name` is a single, ordinary path component: not
 * empty, not "." or "..", no "/" or NUL, at most 255 bytes.
 */
export function validateName(name: Buffer): void {
  let why: string | undefined;
  if (name.length === 0) why = "is empty";
  else if (name.length > NAME_MAX) why = `is ${name.length} bytes long (more than ${NAME_MAX})`;
  else if (
    (name.length === 1 && name[0] === 0x2e) ||
    (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e)
  )
    why = "is a dot entry";
  else if (name.includes(0x2f)) why = "contains '/'";
  else if (name.includes(0)) why = "contains a NUL byte";
  if (why !== undefined) {
    const shown = displayPath(name.subarray(0, 300));
    throw new StrataError("UNSAFE_PATH", `refusing file name "${shown}": it ${why}`, {
      subject: shown,
      hint: "the snapshot holds a name no filesystem can; it may have been tampered with",
    });
  }
}

/** `dir/name` as bytes, after validating `name`. */
export function joinName(dir: Buffer, name: Buffer): Buffer {
  validateName(name);
  const sep = dir.length > 0 && dir[dir.length - 1] === 0x2f ? 0 : 1;
  const out = Buffer.allocUnsafe(dir.length + sep + name.length);
  dir.copy(out, 0);
  if (sep) out[dir.length] = 0x2f;
  name.copy(out, dir.length + sep);
  return out;
}

/**
 * Create directory `path`, owner-only until `applyMetadata` sets its real
 * mode. An existing directory is accepted only if it is a real directory, not
 * a symlink to one, since writing into it would then land elsewhere.
 */
export async function makeDir(path: Buffer): Promise<void> {
  try {
    await mkdir(path, { mode: 0o700 });
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST")
      throw fromSystemError(e, "creating directory", displayPath(path));
  }
  const st = await lstat(path).catch((e: unknown) => {
    throw fromSystemError(e, "checking directory", displayPath(path));
  });
  if (!st.isDirectory()) {
    throw new StrataError(
      "UNSAFE_PATH",
      `${displayPath(path)} exists and is ${st.isSymbolicLink() ? "a symlink" : "not a directory"}; refusing to restore into it`,
      { subject: displayPath(path), hint: "move it out of the way and restore again" },
    );
  }
}

/**
 * Create regular file `path`, which must not exist (O_EXCL; with O_NOFOLLOW a
 * pre-placed symlink is refused, never followed). Returns the fd, writable;
 * the caller writes with `writeAt` and ends with `finishFile`.
 */
export async function createFile(path: Buffer): Promise<number> {
  // libuv adds O_CLOEXEC itself.
  try {
    return await openAsync(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  } catch (e) {
    throw await existingError(e, "creating file", path);
  }
}

/** Write all of `data` at `offset` (positional writes, so holes between pieces stay holes). */
export async function writeAt(fd: number, data: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await writeAsync(fd, data, done, data.length - done, offset + done).catch(
      (e: unknown) => {
        throw fromSystemError(e, `writing at offset ${offset + done} of`, `fd ${fd}`);
      },
    );
    done += bytesWritten;
  }
}

/**
 * Set the final size and close. ftruncate extends without allocating, so a
 * trailing hole stays sparse; the fd is closed even when truncation fails.
 */
export async function finishFile(fd: number, size: number): Promise<void> {
  try {
    await ftruncateAsync(fd, size);
  } catch (e) {
    await closeAsync(fd).catch(() => {});
    throw fromSystemError(e, `setting size ${size} of`, `fd ${fd}`);
  }
  await closeAsync(fd).catch((e: unknown) => {
    throw fromSystemError(e, "closing", `fd ${fd}`);
  });
}

/** Create symlink `path` pointing at the raw bytes `target` (never resolved here). */
export async function createSymlink(path: Buffer, target: Buffer): Promise<void> {
  try {
    await symlink(target, path);
  } catch (e) {
    throw await existingError(e, "creating symlink", path);
  }
}

/**
 * Make `path` another name of `existing`, a path this restore created
 * earlier. link(2) does not follow a symlink at `existing`, so a hard link to
 * a symlink is recreated as such.
 */
export async function createHardlink(path: Buffer, existing: Buffer): Promise<void> {
  try {
    await link(existing, path);
  } catch (e) {
    throw await existingError(e, `linking to ${displayPath(existing)} as`, path);
  }
}

/** Create a fifo, socket or device node for `node` at `path` (devices need root). */
export async function createSpecial(path: Buffer, node: Pick<FsNode, "type" | "rdev">): Promise<void> {
  const typeBits =
    node.type === "fifo"
      ? S_IFIFO
      : node.type === "socket"
        ? S_IFSOCK
        : node.type === "chardev"
          ? S_IFCHR
          : node.type === "blockdev"
            ? S_IFBLK
            : undefined;
  if (typeBits === undefined) {
    throw new StrataError(
      "INVALID_ARGUMENT",
      `createSpecial cannot create a ${node.type} at ${displayPath(path)}`,
      {
        subject: displayPath(path),
      },
    );
  }
  try {
    native.mknod(path, typeBits | 0o600, node.rdev ?? 0);
  } catch (e) {
    throw await existingError(e, `creating ${node.type}`, path);
  }
}

export interface ApplyOptions {
  /** Restore uid/gid. Default: only when running as root. */
  owner?: boolean;
  /**
   * The caller knows the object inherited no ACL (it created it, in
   * directories it created, below a directory without a default ACL), so
   * there is no inherited ACL to remove and the xattrs need not be listed.
   */
  noInheritedAcl?: boolean;
  /**
   * What the caller knows the object has now, because it has just created
   * it (owner from its own ids and its directory, mode from the creating
   * call and the umask): a step that would set the same value is skipped,
   * two syscalls less for most files of a restore.
   */
  fresh?: { uid: number; gid: number; mode: number };
}

/**
 * Give `path` the owner, xattrs, mode and mtime of `node`, without following
 * a symlink at `path`. The order matters:
 *  1. lchown first: the kernel drops security.capability (and setuid/setgid)
 *     on chown, so xattrs set before it would be lost;
 *  2. xattrs, including POSIX ACLs (system.posix_acl_*); ACLs that the new
 *     object inherited from a default ACL but the node lacks are removed;
 *  3. chmod (not for symlinks, whose mode Linux ignores): after chown so
 *     setuid/setgid survive, after the ACL so the mask matches the mode;
 *  4. lutimens last, since every step above changes ctime and may touch mtime.
 * atime is set to the mtime: snapshots do not record atime.
 *
 * Only root may give files away, so by default ownership is restored when
 * running as root and left to the restoring user otherwise (as tar does).
 */
export async function applyMetadata(path: Buffer, node: FsNode, opts: ApplyOptions = {}): Promise<void> {
  applyMetadataSync(path, node, opts);
}

/**
 * `applyMetadata` without the event loop: restore sets metadata on every
 * object, and a handful of synchronous syscalls cost far less than as many
 * thread-pool round trips.
 */
export function applyMetadataSync(path: Buffer, node: FsNode, opts: ApplyOptions = {}): void {
  if (needsOwner(node, opts)) {
    try {
      lchownSync(path, node.uid, node.gid);
    } catch (e) {
      throw fromSystemError(e, `setting owner ${node.uid}:${node.gid} of`, displayPath(path));
    }
  }
  if (needsXattrs(node, opts)) applyXattrs(path, node, opts.noInheritedAcl === true);
  if (needsMode(node, opts)) {
    try {
      chmodSync(path, node.mode & 0o7777);
    } catch (e) {
      throw fromSystemError(e, `setting mode ${(node.mode & 0o7777).toString(8)} of`, displayPath(path));
    }
  }
  try {
    native.lutimens(path, node.mtimeNs, node.mtimeNs);
  } catch (e) {
    throw fromSystemError(e, "setting times of", displayPath(path));
  }
}

/**
 * Whether `applyMetadataSync(path, node, opts)` would only set the times:
 * `opts.fresh` says the object already has the node's owner and mode, and
 * there is no xattr to set nor an inherited ACL to remove. Such an object
 * can be finished with its times alone (the restore does it off the main
 * thread).
 */
export function onlyTimesNeeded(node: FsNode, opts: ApplyOptions = {}): boolean {
  return !needsOwner(node, opts) && !needsXattrs(node, opts) && !needsMode(node, opts);
}

function needsOwner(node: FsNode, opts: ApplyOptions): boolean {
  const fresh = opts.fresh;
  const sameOwner = fresh !== undefined && fresh.uid === node.uid && fresh.gid === node.gid;
  return (opts.owner ?? process.geteuid?.() === 0) && !sameOwner;
}

function needsXattrs(node: FsNode, opts: ApplyOptions): boolean {
  return !opts.noInheritedAcl || (node.xattrs?.length ?? 0) > 0;
}

/** With xattrs the mode is set again after them: an ACL's mask must match it. */
function needsMode(node: FsNode, opts: ApplyOptions): boolean {
  const fresh = opts.fresh;
  const sameMode = fresh !== undefined && fresh.mode === (node.mode & 0o7777) && !node.xattrs?.length;
  return node.type !== "symlink" && !sameMode;
}

const ACL_NAMES = ["system.posix_acl_access", "system.posix_acl_default"];

/**
 * Whether `dir` has a default ACL, which objects created in it inherit.
 * False where the filesystem has no xattrs.
 */
export function hasDefaultAcl(dir: Buffer | string): boolean {
  try {
    return native.llistxattr(typeof dir === "string" ? Buffer.from(dir) : dir).includes(ACL_NAMES[1]!);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTSUP" || code === "EOPNOTSUPP") return false;
    throw fromSystemError(e, "listing xattrs of", displayPath(dir));
  }
}

function applyXattrs(path: Buffer, node: FsNode, noInheritedAcl: boolean): void {
  const shown = displayPath(path);
  const wanted = node.xattrs ?? [];
  let present: string[] = [];
  try {
    if (!noInheritedAcl) present = native.llistxattr(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOTSUP" && code !== "EOPNOTSUPP") throw fromSystemError(e, "listing xattrs of", shown);
    if (wanted.length > 0) {
      throw new StrataError("UNSUPPORTED", `the filesystem holding ${shown} does not support xattrs`, {
        subject: shown,
        hint: "restore to a filesystem with xattr support (ext4, xfs, btrfs) to keep ACLs and capabilities",
      });
    }
    return;
  }
  for (const name of present) {
    if (ACL_NAMES.includes(name) && !wanted.some((x) => x.name === name)) {
      try {
        native.lremovexattr(path, name);
      } catch (e) {
        throw fromSystemError(e, `removing inherited ${name} of`, shown);
      }
    }
  }
  for (const x of wanted) {
    try {
      native.lsetxattr(path, x.name, x.value);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOTSUP" || code === "EOPNOTSUPP") {
        throw new StrataError("UNSUPPORTED", `cannot set xattr ${x.name} on ${shown}: not supported here`, {
          subject: shown,
          cause: e,
        });
      }
      throw fromSystemError(e, `setting xattr ${x.name} of`, shown);
    }
  }
}

/** An EEXIST on create, explained: a symlink in the way is UNSAFE_PATH, anything else ALREADY_EXISTS. */
async function existingError(e: unknown, action: string, path: Buffer): Promise<StrataError> {
  const code = (e as NodeJS.ErrnoException).code;
  const shown = displayPath(path);
  if (code === "EEXIST" || code === "ELOOP") {
    const st = await lstat(path).catch(() => undefined);
    if (st?.isSymbolicLink() || code === "ELOOP") {
      return new StrataError(
        "UNSAFE_PATH",
        `${shown} is a pre-existing symlink; refusing to write through it`,
        {
          subject: shown,
          cause: e,
          hint: "restore into an empty directory",
        },
      );
    }
    return new StrataError("ALREADY_EXISTS", `${shown} already exists (while ${action})`, {
      subject: shown,
      cause: e,
    });
  }
  return fromSystemError(e, action, shown);
}
