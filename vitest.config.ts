import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    globalSetup: ["packages/testkit/src/global-setup.ts"],
    include: ["packages/*/test/**/*.test.ts", "apps/*/test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 900_000,
    pool: "forks",
    maxWorkers: 2,
  },
});
