import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe } from "vitest";
import { openPostgresServerStore, openSqliteServerStore } from "../src/index.js";
import { dropTestSchemas, findTestPostgres, newTestSchema } from "./pg-helper.js";
import { runTargetingStoreContract } from "./targeting-contract.js";

const dir = mkdtempSync(join(tmpdir(), "strata-targeting-"));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SQLite", () => {
  runTargetingStoreContract("sqlite", () => openSqliteServerStore(join(dir, `t-${n++}.db`)));
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[catalog] SKIPPING PostgreSQL targeting-store tests: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runTargetingStoreContract("postgres", () =>
    openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }),
  );
});
