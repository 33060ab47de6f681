import { execFileSync } from "node:child_process";
import { lchownSync, mkdirSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { openSqliteCatalog } from "@strata/catalog";
import { type CompiledPolicy, compilePolicy, DEFAULT_CHUNKER_PARAMS, defaultPolicy } from "@strata/core";
import { native } from "@strata/fs";
import { Backup, DirBlobStore, Repository } from "@strata/repo";
import { rsyncCopy, rsyncItemize } from "@strata/testkit";
import { removalPredicate } from "../src/layers/apply.js";
import { LocalRestoreSource } from "../src/restore/local-source.js";
import type { LayerRestoreOptions } from "../src/restore/types.js";

process.env.STRATA_SCRYPT_LOG_N ??= "12";

/**
 * A real repository in `dir` (small packs, so ranged reads cross packs), with the default chunker
 * key instead of a random one: the same chunk boundaries in every run, so bounds on what a
 * restore fetches hold every time (a random key put one over in about 1% of runs).
 */
export async function createTestRepo(dir: string): Promise<Repository> {
  mkdirSync(dir, { recursive: true });
  const catalog = await openSqliteCatalog(path.join(dir, "catalog.db"));
  return Repository.init(new DirBlobStore(dir), catalog, Buffer.from("test"), {
    packTargetSize: 4 * 1024 * 1024,
    chunker: { gearSeed: DEFAULT_CHUNKER_PARAMS.gearSeed },
  });
}

export async function closeTestRepo(repo: Repository): Promise<void> {
  await repo.close();
  await repo.catalog.close();
}

/** Back up `dir` with the real Backup and open a source over it (the snapshot's `dir` is the restored root). */
export async function snapshotOf(repo: Repository, dir: string): Promise<LocalRestoreSource> {
  const { snapshot } = await new Backup(repo, { paths: [dir], threads: 1 }).run();
  return LocalRestoreSource.open(repo, snapshot, { path: path.resolve(dir) });
}

/** The default upload policy on an endpoint whose agent state is /var/lib/strata. */
export function testPolicy(): CompiledPolicy {
  return compilePolicy(defaultPolicy("p", "test"), { homes: [], agentStateDir: "/var/lib/strata" });
}

/** rsync's list of differences (empty: identical), without lines for paths matching `ignore`. */
export function diff(src: string, dst: string, ignore?: RegExp): string[] {
  return rsyncItemize(src, dst)
    .split("\n")
    .filter((l) => l.trim() !== "")
    .filter((l) => !ignore?.test(l));
}

export function copyTree(src: string, dst: string): void {
  mkdirSync(dst, { recursive: true });
  rsyncCopy(src, dst);
}

const T0 = 1_700_000_000_000_000_000n;

/** Write a file with given content and a fixed nanosecond mtime. */
export function put(
  root: string,
  rel: string,
  content: string | Buffer,
  opts: { mode?: number; t?: bigint } = {},
): void {
  const p = path.join(root, rel);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, content, { mode: opts.mode ?? 0o644 });
  native.lutimens(Buffer.from(p), opts.t ?? T0, opts.t ?? T0);
}

export function link(root: string, rel: string, target: string): void {
  const p = path.join(root, rel);
  mkdirSync(path.dirname(p), { recursive: true });
  symlinkSync(target, p);
}

/** Give every directory under `root` (and root) a fixed mtime, deepest first. */
export function settleDirs(root: string, t: bigint = T0): void {
  const dirs = execFileSync("find", [root, "-type", "d"], { encoding: "utf8" })
    .split("\n")
    .filter(Boolean)
    .sort((a, b) => b.length - a.length);
  for (const d of dirs) native.lutimens(Buffer.from(d), t, t);
}

/** A deterministic pseudo-random buffer. */
export function noise(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export { lchownSync, utimesSync };

/** Kind `layer`'s options in JSON form (for restore-child.ts and the layer tests). */
export interface LayerSpec {
  /** The removal set: these exact paths are removable; their ancestors answer "below". */
  removable?: string[];
  /** Do-not-override: these paths and everything below them. */
  doNotOverride?: string[];
  enforceRemove?: boolean;
  /** Absolute path → UTF-8 content. */
  literals?: Record<string, string>;
}

export function layerOptions(spec: LayerSpec): LayerRestoreOptions {
  const removable = spec.removable ?? [];
  const keep = spec.doNotOverride ?? [];
  return {
    // The agent's own predicate over the plan's removal list (layers/apply.ts).
    removable: removalPredicate(removable),
    doNotOverride: (p) => {
      const s = p.toString("latin1");
      return keep.some((k) => s === k || s.startsWith(`${k}/`));
    },
    ...(spec.enforceRemove ? { enforceRemove: true } : {}),
    literals: new Map(Object.entries(spec.literals ?? {}).map(([k, v]) => [k, Buffer.from(v)])),
  };
}
