import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { SERVER_HEAP_GROWING_PERCENT } from "../src/process.js";

const dist = fileURLToPath(new URL("../dist/process.js", import.meta.url));

describe("tuneServerProcess", () => {
  it("sets a flag this Node's V8 knows (an unknown one only prints an error and changes nothing)", () => {
    // V8 reports an unknown flag on the console and carries on: a renamed flag would silently
    // bring back the seven full collections per restore (docs/benchmarks.md, session 13).
    const r = spawnSync(
      process.execPath,
      ["--input-type=module", "-e", `(await import(${JSON.stringify(dist)})).tuneServerProcess()`],
      { encoding: "utf8" },
    );
    expect(r.status).toBe(0);
    expect(`${r.stdout}${r.stderr}`).toBe("");
    const bad = spawnSync(
      process.execPath,
      ["-e", `require("node:v8").setFlagsFromString("--heap-growing-percent-typo=1")`],
      { encoding: "utf8" },
    );
    expect(`${bad.stdout}${bad.stderr}`).toMatch(/unrecognized flag/); // the check above can fail
    expect(SERVER_HEAP_GROWING_PERCENT).toBeGreaterThanOrEqual(100);
  });
});
