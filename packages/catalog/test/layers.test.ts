import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe } from "vitest";
import { openPostgresServerStore, openSqliteServerStore } from "../src/index.js";
import { runLayerStoreContract } from "./layer-contract.js";
import { dropTestSchemas, findTestPostgres, newTestSchema } from "./pg-helper.js";

const dir = mkdtempSync(join(tmpdir(), "strata-layers-"));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SQLite", () => {
  runLayerStoreContract("sqlite", async () => {
    const s = await openSqliteServerStore(join(dir, `l-${n++}.db`));
    return { layers: s.layers, tasks: s.tasks, close: () => s.close() };
  });
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[catalog] SKIPPING PostgreSQL layer-store tests: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runLayerStoreContract("postgres", async () => {
    const s = await openPostgresServerStore(target.url ?? "", { schema: newTestSchema() });
    return { layers: s.layers, tasks: s.tasks, close: () => s.close() };
  });
});
