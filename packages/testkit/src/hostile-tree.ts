import { execFileSync } from "node:child_process";
import { constants } from "node:fs";
import { chmod, lchown, link, mkdir, open, symlink, writeFile } from "node:fs/promises";
import { StrataError } from "@strata/core";
import { native } from "@strata/fs";

/**
 * A directory tree built to break backup tools: every kind of object and
 * attribute that the "Fidelity" invariant names, plus names and shapes that
 * trip naive code. A restore of it must compare equal under
 * `rsyncItemize`. Layout under `dir` (each item says why it is there):
 *
 *   names/        non-UTF-8 names (66 ff fe, latin1 "café", a lone 0x80),
 *                 names with newline, CR, tab and ESC, a leading "-", a
 *                 backslash, "...", 255-byte names (ASCII and 2-byte UTF-8),
 *                 a 255-byte directory name: byte paths end to end
 *   deep/         200 nested directories with a file at the bottom: recursion
 *                 depth and long paths (~400 bytes)
 *   links/        one inode under three names in three directories (a/, b/,
 *                 and links/ itself): hard links across directories
 *   sparse/       big.img, 2 GiB logical with ~4 MiB of data at start, middle,
 *                 an odd offset and the end: holes must stay holes
 *   modes/        setuid, setgid, setuid+setgid, mode 000 (root only) files; sticky
 *                 (1777) and setgid (2775) directories
 *   xattrs/       user.* attributes: text, binary, empty value; also on a dir
 *   acl/          POSIX ACLs via setfacl: access ACL on a file, access +
 *                 default ACL on a directory (system.posix_acl_*)
 *   caps/         security.capability (cap_net_bind_service=ep) as raw xattr
 *                 bytes, on a root-owned setuid-free binary stand-in (root only)
 *   special/      a fifo; a char device c 1 3 like /dev/null (root only); a
 *                 socket node (mknod S_IFSOCK: a bound-then-closed socket is
 *                 unlinked by libuv on close, the inode type is the same)
 *   symlinks/     dangling, a two-link loop, a self loop, an absolute target
 *                 outside the tree, a "../.." escape, non-UTF-8 target bytes
 *   empty/        an empty file and an empty directory
 *   owners/       file, dir and symlink owned by 12345:54321, numeric ids no
 *                 passwd entry names (root only)
 *
 * Every object gets a distinct nanosecond mtime; directory mtimes are set
 * last, deepest first, because creating entries changes a directory's mtime.
 * Items marked root only are left out when not running as root; ACLs need
 * the `setfacl` tool (package acl).
 */
export async function buildHostileTree(dir: string): Promise<void> {
  const b = new TreeBuilder(Buffer.from(dir));
  await b.build();
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** VFS v2 capability blob for cap_net_bind_service=ep, so the tree needs no setcap. */
export function capNetBindService(): Buffer {
  const cap = Buffer.alloc(20);
  cap.writeUInt32LE(0x02000001, 0); // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
  cap.writeUInt32LE(1 << 10, 4); // permitted: CAP_NET_BIND_SERVICE (10)
  return cap;
}

class TreeBuilder {
  private readonly isRoot = process.getuid?.() === 0;
  private nextTime = 1_600_000_000_123_456_789n;
  private readonly dirs: Buffer[] = [];

  constructor(private readonly root: Buffer) {}

  /** root + "/" + parts, as bytes. */
  private p(...parts: (string | Buffer)[]): Buffer {
    const bufs: Buffer[] = [this.root];
    for (const part of parts)
      bufs.push(Buffer.from("/"), typeof part === "string" ? Buffer.from(part) : part);
    return Buffer.concat(bufs);
  }

  /** A fresh, distinct mtime with a non-zero nanosecond part. */
  private time(): bigint {
    this.nextTime += 1_000_000_007n;
    return this.nextTime;
  }

  private async dir(path: Buffer, mode = 0o755): Promise<void> {
    await mkdir(path);
    await chmod(path, mode);
    this.dirs.push(path);
  }

  private async file(path: Buffer, content: string | Buffer = "", mode = 0o644): Promise<void> {
    await writeFile(path, content, { flag: "wx" });
    await chmod(path, mode);
    native.lutimens(path, this.time(), this.time());
  }

  private async link(target: string | Buffer, path: Buffer): Promise<void> {
    await symlink(typeof target === "string" ? Buffer.from(target) : target, path);
    native.lutimens(path, this.time(), this.time());
  }

  async build(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    this.dirs.push(this.root);
    await this.names();
    await this.deep();
    await this.hardlinks();
    await this.sparse();
    await this.modes();
    await this.xattrs();
    await this.acls();
    await this.caps();
    await this.special();
    await this.symlinks();
    await this.empty();
    await this.owners();
    // Deepest first: setting a child's mtime does not touch its parent's, but
    // creating it did, so parents come after all their children.
    for (const d of this.dirs.reverse()) native.lutimens(d, this.time(), this.time());
  }

  private async names(): Promise<void> {
    await this.dir(this.p("names"));
    const names: Buffer[] = [
      Buffer.from([0x66, 0xff, 0xfe]),
      Buffer.from("caf\xe9", "latin1"),
      Buffer.from([0x80]),
      Buffer.from("new\nline"),
      Buffer.from("carriage\rreturn"),
      Buffer.from("tab\there"),
      Buffer.from("esc\x1b[31mred"),
      Buffer.from("-rf"),
      Buffer.from("back\\slash"),
      Buffer.from("..."),
      Buffer.from(" leading and trailing space "),
      Buffer.alloc(255, "n"),
      Buffer.from(`${"é".repeat(127)}x`), // 255 bytes, 128 characters
    ];
    for (const name of names) await this.file(this.p("names", name), name);
    const longDir = Buffer.alloc(255, "d");
    await this.dir(this.p("names", longDir));
    await this.file(this.p("names", longDir, Buffer.from([0xfe, 0xff])), "inside a 255-byte directory");
  }

  private async deep(): Promise<void> {
    let d = this.p("deep");
    await this.dir(d);
    for (let i = 0; i < 200; i++) {
      d = Buffer.concat([d, Buffer.from("/d")]);
      await this.dir(d);
    }
    await this.file(Buffer.concat([d, Buffer.from("/bottom")]), "200 levels down\n");
  }

  private async hardlinks(): Promise<void> {
    await this.dir(this.p("links"));
    await this.dir(this.p("links", "a"));
    await this.dir(this.p("links", "b"));
    await this.file(this.p("links", "a", "original"), "one inode, three names\n");
    await link(this.p("links", "a", "original"), this.p("links", "b", "second-name"));
    await link(this.p("links", "a", "original"), this.p("links", "third-name"));
  }

  private async sparse(): Promise<void> {
    await this.dir(this.p("sparse"));
    const path = this.p("sparse", "big.img");
    const fh = await open(path, "wx", 0o644);
    try {
      // Deterministic non-zero data so a restore that loses or shifts a piece shows up.
      const piece = Buffer.alloc(MiB);
      for (let i = 0; i < piece.length; i++) piece[i] = (i * 131 + 7) & 0xff || 1;
      for (const off of [0, GiB / 2, GiB + 12_345, 2 * GiB - MiB]) await fh.write(piece, 0, MiB, off);
      await fh.truncate(2 * GiB);
    } finally {
      await fh.close();
    }
    native.lutimens(path, this.time(), this.time());
  }

  private async modes(): Promise<void> {
    await this.dir(this.p("modes"));
    await this.file(this.p("modes", "setuid"), "#!/bin/true\n", 0o4755);
    await this.file(this.p("modes", "setgid"), "#!/bin/true\n", 0o2755);
    await this.file(this.p("modes", "setuid-setgid"), "#!/bin/true\n", 0o6750);
    // Unreadable to anyone but root: only root can back it up (or copy it to compare).
    if (this.isRoot) await this.file(this.p("modes", "no-access"), "mode 000\n", 0o000);
    await this.dir(this.p("modes", "sticky"), 0o1777);
    await this.file(this.p("modes", "sticky", "inside"), "x");
    await this.dir(this.p("modes", "setgid-dir"), 0o2775);
  }

  private async xattrs(): Promise<void> {
    await this.dir(this.p("xattrs"));
    const f = this.p("xattrs", "file");
    await this.file(f, "has xattrs\n");
    native.lsetxattr(f, "user.comment", Buffer.from("hello"));
    native.lsetxattr(f, "user.binary", Buffer.from([0, 1, 2, 0xfe, 0xff]));
    native.lsetxattr(f, "user.empty", Buffer.alloc(0));
    native.lutimens(f, this.time(), this.time());
    native.lsetxattr(this.p("xattrs"), "user.on-dir", Buffer.from("dir attr"));
  }

  private async acls(): Promise<void> {
    await this.dir(this.p("acl"));
    const f = this.p("acl", "file");
    await this.file(f, "has an access ACL\n", 0o640);
    setfacl(["-m", "u:1000:rw,g:2000:r,m::rw", f.toString()]);
    native.lutimens(f, this.time(), this.time());
    const d = this.p("acl", "dir");
    await this.dir(d, 0o750);
    setfacl(["-m", "u:1000:rwx", "-d", "-m", "u:1000:rx,g:2000:rx", d.toString()]);
  }

  private async caps(): Promise<void> {
    if (!this.isRoot) return;
    await this.dir(this.p("caps"));
    const f = this.p("caps", "bind-low-ports");
    await this.file(f, "#!/bin/true\n", 0o755);
    native.lsetxattr(f, "security.capability", capNetBindService());
    native.lutimens(f, this.time(), this.time());
  }

  private async special(): Promise<void> {
    await this.dir(this.p("special"));
    const { S_IFIFO, S_IFSOCK, S_IFCHR } = constants;
    const fifo = this.p("special", "fifo");
    native.mknod(fifo, S_IFIFO | 0o640, 0);
    native.lutimens(fifo, this.time(), this.time());
    const sock = this.p("special", "socket");
    native.mknod(sock, S_IFSOCK | 0o755, 0);
    native.lutimens(sock, this.time(), this.time());
    if (this.isRoot) {
      const dev = this.p("special", "null");
      native.mknod(dev, S_IFCHR | 0o666, (1 << 8) | 3);
      await chmod(dev, 0o666); // mknod applies the umask
      native.lutimens(dev, this.time(), this.time());
    }
  }

  private async symlinks(): Promise<void> {
    await this.dir(this.p("symlinks"));
    await this.link("does/not/exist", this.p("symlinks", "dangling"));
    await this.link("loop-b", this.p("symlinks", "loop-a"));
    await this.link("loop-a", this.p("symlinks", "loop-b"));
    await this.link("self", this.p("symlinks", "self"));
    await this.link("/etc/passwd", this.p("symlinks", "absolute-outside"));
    await this.link("../../../../../../..", this.p("symlinks", "escape"));
    await this.link(Buffer.from([0x2e, 0x2e, 0x2f, 0x66, 0xff, 0xfe]), this.p("symlinks", "non-utf8-target"));
  }

  private async empty(): Promise<void> {
    await this.dir(this.p("empty"));
    await this.file(this.p("empty", "file"));
    await this.dir(this.p("empty", "dir"));
  }

  private async owners(): Promise<void> {
    if (!this.isRoot) return;
    await this.dir(this.p("owners"));
    const f = this.p("owners", "file");
    await this.file(f, "owned by nobody we know\n", 0o640);
    await lchown(f, 12345, 54321);
    await chmod(f, 0o640);
    const d = this.p("owners", "dir");
    await this.dir(d, 0o750);
    await lchown(d, 12345, 54321);
    const l = this.p("owners", "link");
    await this.link("file", l);
    await lchown(l, 12345, 54321);
    native.lutimens(f, this.time(), this.time());
    native.lutimens(l, this.time(), this.time());
  }
}

function setfacl(args: string[]): void {
  try {
    execFileSync("setfacl", args, { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    throw new StrataError(
      "IO_ERROR",
      `setfacl ${args.join(" ")} failed: ${err.stderr?.toString() || err.message}`,
      {
        subject: args[args.length - 1],
        cause: e,
        hint: err.code === "ENOENT" ? "install the acl package (apt-get install -y acl)" : undefined,
      },
    );
  }
}
