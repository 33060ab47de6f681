import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openPostgresServerStore, openSqliteServerStore } from "@strata/catalog";
import { afterAll, describe } from "vitest";
import {
  dropTestSchemas,
  findTestPostgres,
  newTestSchema,
} from "../../../packages/catalog/test/pg-helper.js";
import { runAutoassignSuite } from "./autoassign-suite.js";
import { runFleetSuite } from "./fleet-suite.js";
import { runServerSuite } from "./suite.js";
import { runTargetingSuite } from "./targeting-suite.js";

const dir = mkdtempSync(join(tmpdir(), "strata-server-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SQLite catalog", () => {
  runServerSuite("sqlite", () => openSqliteServerStore(join(dir, "catalog.db")));
  runFleetSuite("sqlite", () => openSqliteServerStore(join(dir, "fleet.db")));
  runTargetingSuite("sqlite", () => openSqliteServerStore(join(dir, "targeting.db")));
  runAutoassignSuite("sqlite", () => openSqliteServerStore(join(dir, "autoassign.db")));
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[server] SKIPPING the PostgreSQL server suite: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL catalog", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runServerSuite("postgres", () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }));
  runFleetSuite("postgres", () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }));
  runTargetingSuite("postgres", () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }));
  runAutoassignSuite("postgres", () =>
    openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }),
  );
});
