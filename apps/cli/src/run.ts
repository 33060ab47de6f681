import type { Command } from "commander";
import { reportError } from "./output.js";

/**
 * Parse and run a commander program: its exit status, 0 for --help and
 * --version, 2 for a usage error (commander has said what), 1 for a failure
 * (reported as text, or as JSON with --json).
 */
export async function runProgram(program: Command, argv: string[]): Promise<number> {
  program.exitOverride();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "commander.helpDisplayed" || code === "commander.version" || code === "commander.help")
      return 0;
    if (typeof code === "string" && code.startsWith("commander.")) return 2;
    reportError(e, program.opts().json === true || argv.includes("--json"));
    return 1;
  }
}
