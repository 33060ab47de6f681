import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The workspace root: the nearest ancestor whose package.json declares
 * workspaces. Found by walking up rather than by a fixed `../..` so it works
 * from both src/ (vitest via tsx) and dist/.
 */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (existsSync(pj)) {
      const json = JSON.parse(readFileSync(pj, "utf8")) as { workspaces?: unknown };
      if (json.workspaces) return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no workspace root above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}
