/**
 * `strata recovery build --out FILE`: write the self-contained recovery
 * tool (docs/design/restore.md, "Recovery tool"). The work is
 * recovery/build.ts; this file parses options and prints.
 */
import { StrataError } from "@strata/core";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { formatBytes, printJson } from "../output.js";

export function registerRecoveryCommands(program: Command): void {
  const recovery = program
    .command("recovery")
    .description("the recovery tool: restore a lost machine onto a new disk from a live system");
  const build = recovery
    .command("build")
    .description("write the recovery tool: one file that runs on a live system without Node installed")
    .requiredOption("--out <file>", "where to write it (made executable)")
    .option("--level <n>", "gzip level, 1 (fast) to 9 (small)", "6")
    .addHelpText(
      "after",
      "\nThe file holds this machine's node binary, so build it on the architecture it will run on.\n" +
        "On the live system: `sh FILE --help`, `sh FILE list-cvds …`, `sh FILE restore …`.",
    )
    .action(async () => {
      const o = build.optsWithGlobals() as GlobalOptions & { out: string; level: string };
      const level = Number(o.level);
      if (!Number.isInteger(level))
        throw new StrataError("INVALID_ARGUMENT", `--level ${o.level} is not 1 to 9`);
      // esbuild and the build are loaded only by this command.
      const { buildRecovery } = await import("../recovery/build.js");
      const r = await buildRecovery({
        out: o.out,
        level,
        log: o.json ? () => {} : (line) => process.stderr.write(`${line}\n`),
      });
      if (o.json) return printJson(r);
      process.stdout.write(
        `wrote ${r.out} (${formatBytes(r.bytes)}, strata ${r.version}, node ${r.nodeVersion}) in ${(r.durationMs / 1000).toFixed(1)} s\n` +
          `run it on the live system: sh ${r.out} --help\n`,
      );
    });
}
