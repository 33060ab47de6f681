import { debianRoot, debianRootSkipReason } from "./debian-root.js";

/**
 * vitest globalSetup: build the cached Debian root once, before any test
 * file runs, so parallel workers find it ready instead of racing for the
 * build lock. Never fails the run: tests that need the root skip with the
 * reason when it is unavailable.
 */
export default async function setup(): Promise<void> {
  const root = await debianRoot();
  if (root === null) console.warn(`[strata testkit] no Debian root: ${debianRootSkipReason()}`);
}
