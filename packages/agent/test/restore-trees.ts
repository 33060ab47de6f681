import {
  closeSync,
  constants,
  ftruncateSync,
  linkSync,
  mkdirSync,
  openSync,
  rmSync,
  writeSync,
} from "node:fs";
import * as path from "node:path";
import { native } from "@strata/fs";
import { link, noise, put, settleDirs } from "./restore-helpers.js";

/**
 * A small endpoint root with every area the kinds care about: machine
 * files (/etc, /usr with a hard link, a symlink, a fifo, a sparse file,
 * xattrs), identity files, a user area (/home/alice, /root) and excluded
 * paths (/tmp, /var/cache contents).
 */
export function buildSmallRoot(root: string): void {
  mkdirSync(root, { recursive: true });
  put(root, "etc/hostname", "web-1\n");
  native.lsetxattr(Buffer.from(path.join(root, "etc/hostname")), "user.origin", Buffer.from("snapshot"));
  put(root, "etc/machine-id", "0f6b3c2a9d8e4f1a0b2c3d4e5f607182\n", { mode: 0o444 });
  put(root, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n");
  put(root, "etc/ssh/sshd_config", "PermitRootLogin no\n");
  put(root, "etc/ssh/ssh_host_ed25519_key", "snapshot host key\n", { mode: 0o600 });
  put(root, "usr/bin/tool", noise(200_000, 1), { mode: 0o755 });
  linkSync(path.join(root, "usr/bin/tool"), path.join(root, "usr/bin/tool-alias"));
  put(root, "usr/bin/x", "#!/bin/sh\necho x\n", { mode: 0o755 });
  put(root, "usr/lib/libbig.so", noise(3 * 1024 * 1024, 2));
  link(root, "usr/lib/libbig.so.1", "libbig.so");
  mkdirSync(path.join(root, "usr/share"), { recursive: true });
  native.mknod(Buffer.from(path.join(root, "usr/share/fifo")), constants.S_IFIFO | 0o640, 0);
  put(root, "var/lib/dpkg/status", "Package: base-files\nStatus: install ok installed\n");
  const sparse = path.join(root, "var/lib/sparse.img");
  put(root, "var/lib/sparse.img", "");
  const fd = openSync(sparse, "r+");
  writeSync(fd, noise(70_000, 3), 0, 70_000, 5 * 1024 * 1024);
  ftruncateSync(fd, 64 * 1024 * 1024);
  closeSync(fd);
  native.lutimens(Buffer.from(sparse), 1_700_000_000_000_000_001n, 1_700_000_000_000_000_001n);
  put(root, "home/alice/notes.txt", "alice's notes\n");
  put(root, "home/alice/photo.jpg", noise(500_000, 4));
  put(root, "root/.profile", "PATH=/usr/bin\n");
  put(root, "tmp/scratch", "excluded\n");
  put(root, "var/cache/apt/pkg.deb", "excluded\n");
  settleDirs(root);
}

/**
 * A medium root (~2,400 entries: machine area under etc/ usr/ opt/, a user
 * area under home/alice) for crash tests: big enough that a kill lands in
 * every phase, small enough to restore in about a second.
 */
export function buildMediumRoot(root: string): void {
  mkdirSync(root, { recursive: true });
  for (let d = 0; d < 40; d++) {
    for (let f = 0; f < 50; f++) {
      const area = d < 30 ? `usr/share/pkg${d}` : d < 35 ? `etc/conf${d}` : `home/alice/dir${d}`;
      put(root, `${area}/file${f}`, noise(500 + ((d * 50 + f) % 17) * 300, d * 1000 + f + 1));
    }
  }
  put(root, "opt/app/bin/app", noise(1_500_000, 9), { mode: 0o755 });
  linkSync(path.join(root, "opt/app/bin/app"), path.join(root, "opt/app/bin/app-link"));
  link(root, "opt/app/current", "bin");
  put(root, "home/alice/big.bin", noise(600_000, 11));
  settleDirs(root);
}

/** `v1` drifted: ~15% of the files changed, some deleted, newer files and directories added. */
export function driftMediumRoot(root: string): void {
  for (let d = 0; d < 40; d++) {
    const area = d < 30 ? `usr/share/pkg${d}` : d < 35 ? `etc/conf${d}` : `home/alice/dir${d}`;
    for (let f = 0; f < 50; f += 7) put(root, `${area}/file${f}`, noise(700 + f, 77_000 + d * 50 + f));
    for (let f = 3; f < 50; f += 11) rmSync(path.join(root, `${area}/file${f}`));
    if (d % 4 === 0) put(root, `${area}/newer`, "added after the snapshot\n");
  }
  rmSync(path.join(root, "usr/share/pkg7"), { recursive: true });
  for (let f = 0; f < 30; f++) put(root, `usr/share/newpkg/file${f}`, noise(900, 500 + f));
  rmSync(path.join(root, "opt/app/current"));
  put(root, "opt/app/current", "a file where a symlink was\n");
}
