/**
 * Runs one restore in a child process for the crash and non-root tests:
 * `node --import tsx restore-child.ts JSON`. With `killAt`, the process
 * SIGKILLs itself at that step of the engine's onStep hook: a crash at a
 * chosen moment, not after a guessed sleep. Prints the result as JSON.
 */
import * as path from "node:path";
import { openSqliteCatalog } from "@strata/catalog";
import { DirBlobStore, Repository } from "@strata/repo";
import { runRestore } from "../src/restore/engine.js";
import { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreKind } from "../src/restore/types.js";
import { type LayerSpec, layerOptions, testPolicy } from "./restore-helpers.js";

interface ChildArgs {
  repo: string;
  /** The directory the snapshot was taken of (the restored root). */
  snapshotPath: string;
  root: string;
  stateDir: string;
  kind: RestoreKind;
  policy: boolean;
  killAt?: number;
  /** Drop to this uid/gid after opening the repository. */
  uid?: number;
  paths?: string[];
  to?: string;
  /** The snapshot to restore (default: the repository's latest). */
  snapshot?: string;
  /** Kind `layer`'s options. */
  layer?: LayerSpec;
  /** Stream (full/recover) in small batches: the minimal set, then batches of these limits. */
  streaming?: { minimalSet: string[]; files: number; bytes: number };
}

const a = JSON.parse(process.argv[2]!) as ChildArgs;
const catalog = await openSqliteCatalog(path.join(a.repo, "catalog.db"));
const repo = await Repository.open(new DirBlobStore(a.repo), catalog, Buffer.from("test"));
const source = await LocalRestoreSource.open(repo, a.snapshot ?? "latest", { path: a.snapshotPath });
if (a.uid !== undefined) {
  process.setgid(a.uid);
  process.setuid(a.uid);
}
let steps = 0;
const run = runRestore(source, {
  root: a.root,
  stateDir: a.stateDir,
  id: "crash",
  kind: a.kind,
  ...(a.policy ? { policy: testPolicy() } : {}),
  ...(a.paths ? { paths: a.paths } : {}),
  ...(a.to ? { to: a.to } : {}),
  ...(a.layer ? { layer: layerOptions(a.layer) } : {}),
  ...(a.streaming
    ? {
        streaming: true,
        minimalSet: a.streaming.minimalSet,
        batchLimits: { files: a.streaming.files, bytes: a.streaming.bytes },
      }
    : {}),
  onStep: (s) => {
    steps = s.n;
    if (s.n === a.killAt) process.kill(process.pid, "SIGKILL");
  },
});
try {
  const result = await run.done;
  process.stdout.write(`${JSON.stringify({ steps, result })}\n`);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ steps, error: (e as Error).message })}\n`);
  process.exitCode = 1;
} finally {
  await catalog.close();
}
