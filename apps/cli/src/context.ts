import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import * as path from "node:path";
import { StrataError } from "@strata/core";
import { DirBlobStore, type FileCache, type InitOptions, Repository } from "@strata/repo";

/**
 * The catalog holds chunk ids and snapshot paths in clear: readable by the
 * owner only, like the rest of the repository.
 */
async function openCatalogFile(dir: string) {
  const file = path.join(dir, "catalog.db");
  // Loaded on use (SQLite): commands that talk to a server never need it.
  const { openSqliteCatalog } = await import("@strata/catalog");
  const catalog = await openSqliteCatalog(file);
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      chmodSync(f, 0o600);
    } catch {
      // -wal/-shm may not exist yet; SQLite creates them with the db's mode.
    }
  }
  return catalog;
}

export interface GlobalOptions {
  repo?: string;
  passwordFile?: string;
  json?: boolean;
}

export function repoDir(g: GlobalOptions): string {
  const dir = g.repo ?? process.env.STRATA_REPO;
  if (!dir) {
    throw new StrataError("INVALID_ARGUMENT", "no repository given", {
      hint: "pass --repo DIR or set STRATA_REPO",
    });
  }
  return path.resolve(dir);
}

export function readPassword(g: GlobalOptions): Buffer {
  if (g.passwordFile) {
    try {
      const raw = readFileSync(g.passwordFile);
      // A trailing newline is not part of the password (echo pw > file).
      let end = raw.length;
      while (end > 0 && (raw[end - 1] === 0x0a || raw[end - 1] === 0x0d)) end--;
      return raw.subarray(0, end);
    } catch (e) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `cannot read password file ${g.passwordFile}: ${(e as Error).message}`,
      );
    }
  }
  const env = process.env.STRATA_PASSWORD;
  if (env !== undefined && env !== "") return Buffer.from(env, "utf8");
  throw new StrataError("INVALID_ARGUMENT", "no repository password given", {
    hint: "set STRATA_PASSWORD or pass --password-file FILE",
  });
}

/** A repository is a directory: config, keys/, packs/, snapshots/ and catalog.db. */
export async function openRepo(g: GlobalOptions): Promise<Repository> {
  const dir = repoDir(g);
  if (!existsSync(path.join(dir, "config"))) {
    throw new StrataError("REPO_NOT_FOUND", `no repository at ${dir}`, {
      hint: "create one with `strata repo init --repo DIR`, or check --repo / STRATA_REPO",
      subject: dir,
    });
  }
  const password = readPassword(g);
  const catalog = await openCatalogFile(dir);
  try {
    const repo = await Repository.open(new DirBlobStore(dir), catalog, password);
    await repo.syncCatalog();
    return repo;
  } catch (e) {
    await catalog.close();
    throw e;
  }
}

export async function initRepo(g: GlobalOptions, opts: InitOptions = {}): Promise<Repository> {
  const dir = repoDir(g);
  const password = readPassword(g);
  if (password.length === 0) throw new StrataError("INVALID_ARGUMENT", "the password must not be empty");
  if (existsSync(path.join(dir, "config"))) {
    throw new StrataError("ALREADY_EXISTS", `a repository already exists at ${dir}`, {
      hint: "use it as it is, or choose another directory",
    });
  }
  mkdirSync(dir, { recursive: true });
  const catalog = await openCatalogFile(dir);
  try {
    return await Repository.init(new DirBlobStore(dir), catalog, password, opts);
  } catch (e) {
    await catalog.close();
    throw e;
  }
}

export async function closeRepo(repo: Repository): Promise<void> {
  try {
    await repo.close();
  } finally {
    await repo.catalog.close();
  }
}

/** The local file cache of this client for this repository. */
export async function openFileCache(repo: Repository, paths: readonly string[]): Promise<FileCache> {
  const base =
    process.env.STRATA_CACHE_DIR ??
    path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), ".cache"), "strata");
  const dir = path.join(base, repo.config.id);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // One cache per set of paths: a backup's endRun drops rows it did not
  // see, which must not evict another path set's rows.
  const key = createHash("sha256")
    .update(JSON.stringify([...paths].map((p) => path.resolve(p)).sort()))
    .digest("hex");
  const { openSqliteFileCache } = await import("@strata/catalog");
  return openSqliteFileCache(path.join(dir, `files-${key.slice(0, 16)}.db`));
}
