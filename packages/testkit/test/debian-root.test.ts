import { existsSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { debianRoot, debianRootSkipReason } from "../src/index.js";

const root = await debianRoot();

describe("debianRoot", () => {
  it.skipIf(root === null)(
    `is a real Debian rootfs${root === null ? ` (skipped: ${debianRootSkipReason()})` : ""}`,
    () => {
      expect(existsSync(path.join(root!, "usr/bin/dpkg"))).toBe(true);
      expect(existsSync(path.join(root!, "etc/debian_version"))).toBe(true);
    },
  );

  it("returns the same path on every call", async () => {
    expect(await debianRoot()).toBe(root);
  });
});
