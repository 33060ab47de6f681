import { lstat, mkdir, open, readdir } from "node:fs/promises";
import path from "node:path";
import {
  applyMetadata,
  createFile,
  createHardlink,
  createSpecial,
  createSymlink,
  dataRanges,
  finishFile,
  joinName,
  makeDir,
  readNode,
  writeAt,
} from "@strata/fs";
import { afterAll, expect, it } from "vitest";
import {
  buildHostileTree,
  cleanupTempDirs,
  debianRoot,
  debianRootSkipReason,
  makeTempDir,
  rsyncItemize,
} from "../src/index.js";

/*
 * End-to-end check of @strata/fs against the hostile tree: read every node
 * with readNode/dataRanges, recreate it with the restore writers, and let
 * rsync judge. This is the Fidelity invariant minus the repository.
 */

afterAll(cleanupTempDirs);

const PIECE = 1024 * 1024;

async function copyFile(from: Buffer, to: Buffer, size: number): Promise<void> {
  const src = await open(from, "r");
  try {
    const fd = await createFile(to);
    const buf = Buffer.alloc(PIECE);
    for (const [off, len] of dataRanges(src.fd, size)) {
      for (let done = 0; done < len; ) {
        const { bytesRead } = await src.read(buf, 0, Math.min(PIECE, len - done), off + done);
        if (bytesRead === 0) break;
        await writeAt(fd, buf.subarray(0, bytesRead), off + done);
        done += bytesRead;
      }
    }
    await finishFile(fd, size);
  } finally {
    await src.close();
  }
}

/** Depth first; a directory's metadata after its children, hard links to the first restored name. */
async function copyTree(from: Buffer, to: Buffer, links: Map<string, Buffer>): Promise<void> {
  const names = (await readdir(from, { encoding: "buffer" })).sort(Buffer.compare);
  for (const name of names) {
    const s = joinName(from, name);
    const d = joinName(to, name);
    const node = await readNode(s, name, await lstat(s, { bigint: true }));
    if (node.link) {
      const key = `${node.link.dev}:${node.link.ino}`;
      const first = links.get(key);
      if (first) {
        await createHardlink(d, first);
        continue;
      }
      links.set(key, d);
    }
    switch (node.type) {
      case "dir":
        await makeDir(d);
        await copyTree(s, d, links);
        break;
      case "file":
        await copyFile(s, d, node.size);
        break;
      case "symlink":
        await createSymlink(d, node.target!);
        break;
      default:
        await createSpecial(d, node);
    }
    await applyMetadata(d, node);
  }
}

/** Copy `src` to a new `dst` with @strata/fs alone, the root directory's metadata last. */
async function copyRoot(src: string, dst: string): Promise<void> {
  await mkdir(dst);
  await copyTree(Buffer.from(src), Buffer.from(dst), new Map());
  const rootNode = await readNode(Buffer.from(src), Buffer.from("root"), await lstat(src, { bigint: true }));
  await applyMetadata(Buffer.from(dst), rootNode);
}

it("readNode + restore writers reproduce the hostile tree exactly (rsync -aHAX --checksum)", async () => {
  const tmp = await makeTempDir("strata-roundtrip-");
  const src = path.join(tmp, "src");
  const dst = path.join(tmp, "dst");
  await buildHostileTree(src);
  await copyRoot(src, dst);

  expect(rsyncItemize(src, dst)).toBe("");
  const big = await lstat(path.join(dst, "sparse/big.img"));
  expect(big.size).toBe(2 * 1024 ** 3);
  expect(big.blocks * 512).toBeLessThan(64 * 1024 * 1024);
});

const debian = await debianRoot();

it.skipIf(debian === null)(
  `readNode + restore writers reproduce a Debian root exactly${debian ? "" : ` (skipped: ${debianRootSkipReason()})`}`,
  async () => {
    const dst = path.join(await makeTempDir("strata-roundtrip-debian-"), "root");
    await copyRoot(debian!, dst);
    expect(rsyncItemize(debian!, dst)).toBe("");
  },
);
