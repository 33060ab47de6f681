import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe } from "vitest";
import { openPostgresServerStore, openSqliteServerStore } from "../src/index.js";
import { runAutoassignStoreContract } from "./autoassign-contract.js";
import { runFleetStoreContract } from "./fleet-contract.js";
import { dropTestSchemas, findTestPostgres, newTestSchema } from "./pg-helper.js";
import { runServerStoreContract } from "./server-contract.js";

const dir = mkdtempSync(join(tmpdir(), "strata-serverstore-"));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SQLite", () => {
  runServerStoreContract("sqlite", () => openSqliteServerStore(join(dir, `s-${n++}.db`)));
  runFleetStoreContract("sqlite", () => openSqliteServerStore(join(dir, `s-${n++}.db`)));
  runAutoassignStoreContract("sqlite", () => openSqliteServerStore(join(dir, `s-${n++}.db`)));
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[catalog] SKIPPING PostgreSQL ServerStore tests: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  const openPg = () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() });
  runServerStoreContract("postgres", openPg);
  runFleetStoreContract("postgres", openPg);
  runAutoassignStoreContract("postgres", openPg);
});
