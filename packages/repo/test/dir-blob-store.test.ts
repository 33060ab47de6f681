import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { DirBlobStore } from "@strata/repo";
import { afterAll, describe, expect, it } from "vitest";
import { runBlobStoreContract } from "./blob-store-contract.js";

const dirs: string[] = [];
const fresh = () => {
  const d = mkdtempSync(path.join(tmpdir(), "strata-store-"));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

runBlobStoreContract("DirBlobStore", async () => new DirBlobStore(fresh()));

describe("DirBlobStore specifics", () => {
  it("leaves no temporary files behind and writes files readable only by the owner", async () => {
    const root = fresh();
    const s = new DirBlobStore(root);
    await s.put("packs/aa/x", Buffer.alloc(100));
    expect(readdirSync(path.join(root, "packs/aa"))).toEqual(["x"]);
  });
});
