/**
 * Entry of the recovery program, bundled by `strata recovery build` and run
 * by the file's sh header (which sets STRATA_RECOVERY_FILE to its own path).
 */
import * as path from "node:path";
import { reportError } from "../output.js";
import { buildRecoveryProgram, RECOVERY_NAME } from "./program.js";

export async function recoveryMain(argv = process.argv): Promise<number> {
  const file = process.env.STRATA_RECOVERY_FILE;
  const program = buildRecoveryProgram(file ? path.basename(file) : RECOVERY_NAME);
  program.exitOverride();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "commander.helpDisplayed" || code === "commander.version" || code === "commander.help")
      return 0;
    if (typeof code === "string" && code.startsWith("commander.")) return 2;
    reportError(e, argv.includes("--json"));
    return 1;
  }
}

recoveryMain().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(e);
    process.exitCode = 1;
  },
);
