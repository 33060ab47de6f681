/**
 * The server's data directory is a repository (DESIGN.md): config, keys/,
 * packs/, snapshots/ and, on the embedded default, catalog.db. The master
 * key is wrapped by a password the server generates at first start into
 * `repository.password` (mode 0600), so the server starts unattended and an
 * operator can still open the same data offline:
 *
 *     strata repo check --repo strata-data --password-file strata-data/repository.password
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import {
  openPostgresCatalog,
  openSqliteCatalog,
  openSqliteRestoreStore,
  openSqliteUploadStore,
  PostgresRestoreStore,
  PostgresUploadStore,
  type RestoreSessionStore,
  type UploadStore,
} from "@strata/catalog";
import { StrataError } from "@strata/core";
import { DirBlobStore, type InitOptions, Repository } from "@strata/repo";
import type { ServerConfig } from "./config.js";

export const PASSWORD_FILE = "repository.password";

export interface ServerRepository {
  repo: Repository;
  uploads: UploadStore;
  restores: RestoreSessionStore & { close(): Promise<void> };
  close(): Promise<void>;
}

function readOrCreatePassword(dataDir: string): Buffer {
  const file = path.join(dataDir, PASSWORD_FILE);
  if (existsSync(file)) {
    const raw = readFileSync(file, "utf8").trim();
    if (!raw)
      throw new StrataError("CONFIG_INVALID", `${file} is empty`, {
        hint: "restore it from your backup of the data directory; without it the repository cannot be opened",
      });
    return Buffer.from(raw, "utf8");
  }
  const pw = randomBytes(32).toString("base64url");
  writeFileSync(file, `${pw}\n`, { mode: 0o600, flag: "wx" });
  chmodSync(file, 0o600);
  return Buffer.from(pw, "utf8");
}

/** Open (creating on first start) the repository in the data directory. */
export async function openServerRepository(
  config: ServerConfig,
  pgSchema?: string,
  /** For a repository this call creates (none in the data directory yet): its parameters. */
  init: InitOptions = {},
): Promise<ServerRepository> {
  const dataDir = config.dataDir;
  const catalog =
    config.database.kind === "postgres"
      ? await openPostgresCatalog(config.database.url, pgSchema ? { schema: pgSchema } : {})
      : await openSqliteCatalog(config.database.path);
  let uploads: UploadStore | null = null;
  let restores: (RestoreSessionStore & { close(): Promise<void> }) | null = null;
  try {
    const store = new DirBlobStore(dataDir);
    const fresh = !existsSync(path.join(dataDir, "config"));
    const password = readOrCreatePassword(dataDir);
    const repo = fresh
      ? await Repository.init(store, catalog, password, init)
      : await Repository.open(store, catalog, password);
    if (!fresh) await repo.syncCatalog();
    uploads =
      config.database.kind === "postgres"
        ? new PostgresUploadStore(catalog as Awaited<ReturnType<typeof openPostgresCatalog>>)
        : await openSqliteUploadStore(config.database.path);
    restores =
      config.database.kind === "postgres"
        ? new PostgresRestoreStore(catalog as Awaited<ReturnType<typeof openPostgresCatalog>>)
        : await openSqliteRestoreStore(config.database.path);
    const u = uploads;
    const r = restores;
    return {
      repo,
      uploads: u,
      restores: r,
      close: async () => {
        await repo.close().catch(() => {});
        await u.close();
        await r.close();
        await catalog.close();
      },
    };
  } catch (e) {
    await uploads?.close();
    await restores?.close();
    await catalog.close();
    throw e;
  }
}
