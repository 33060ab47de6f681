import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe } from "vitest";
import {
  openPostgresCatalog,
  openSqliteRestoreStore,
  openSqliteServerStore,
  PostgresRestoreStore,
  PostgresTaskStore,
} from "../src/index.js";
import { dropTestSchemas, findTestPostgres, newTestSchema } from "./pg-helper.js";
import { runRestoreStoreContract } from "./restore-contract.js";

const dir = mkdtempSync(join(tmpdir(), "strata-restores-"));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SQLite", () => {
  runRestoreStoreContract("sqlite", async () => {
    const file = join(dir, `r-${n++}.db`);
    const sessions = await openSqliteRestoreStore(file);
    const server = await openSqliteServerStore(file);
    return {
      sessions,
      tasks: server.tasks,
      close: async () => {
        await sessions.close();
        await server.close();
      },
    };
  });
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[catalog] SKIPPING PostgreSQL restore-store tests: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runRestoreStoreContract("postgres", async () => {
    const catalog = await openPostgresCatalog(target.url ?? "", { schema: newTestSchema() });
    return {
      sessions: new PostgresRestoreStore(catalog),
      tasks: new PostgresTaskStore(catalog.pool),
      close: () => catalog.close(),
    };
  });
});
