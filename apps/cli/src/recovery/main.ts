/**
 * Entry of the recovery program, bundled by `strata recovery build` and run
 * by the file's sh header (which sets STRATA_RECOVERY_FILE to its own path).
 */
import * as path from "node:path";
import { runProgram } from "../run.js";
import { buildRecoveryProgram, RECOVERY_NAME } from "./program.js";

export function recoveryMain(argv = process.argv): Promise<number> {
  const file = process.env.STRATA_RECOVERY_FILE;
  return runProgram(buildRecoveryProgram(file ? path.basename(file) : RECOVERY_NAME), argv);
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
