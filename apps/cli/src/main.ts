#!/usr/bin/env node
import { tuneMemory } from "@strata/fs";
import { Command, Option } from "commander";
import { registerAgentCommands } from "./commands/agent.js";
import { registerAgentCapture } from "./commands/agent-capture.js";
import { registerAgentEnroll } from "./commands/agent-enroll.js";
import { registerAgentUpload } from "./commands/agent-upload.js";
import { registerAutoassignCommands } from "./commands/autoassign.js";
import { registerFleetCommands } from "./commands/fleet.js";
import { registerLayerCommands } from "./commands/layers.js";
import { registerRecoveryCommands } from "./commands/recovery.js";
import { registerRepoCommands } from "./commands/repo.js";
import { registerRestoreCommands } from "./commands/restore.js";
import { registerServerCommands } from "./commands/server.js";
import { registerTargetingCommands } from "./commands/targeting.js";
import { runProgram } from "./run.js";

export function buildProgram(): Command {
  const program = new Command();
  program
    .name("strata")
    .description("Strata: deduplicated, versioned, full-fidelity copies of Linux machines")
    .version("0.1.0")
    .option("--repo <dir>", "repository directory (default: $STRATA_REPO)")
    .option("--password-file <file>", "read the repository password from FILE (default: $STRATA_PASSWORD)")
    .addOption(new Option("--json", "print machine-readable JSON on stdout"))
    .showHelpAfterError("(run with --help for usage)")
    .configureHelp({ sortSubcommands: false });
  registerRepoCommands(program);
  registerServerCommands(program);
  registerFleetCommands(program);
  registerAutoassignCommands(program);
  registerRestoreCommands(program);
  registerLayerCommands(program);
  const agent = registerAgentCommands(program);
  registerAgentEnroll(agent);
  registerAgentUpload(agent);
  registerAgentCapture(agent);
  registerRecoveryCommands(program);
  // Last: it adds subcommands to `layer`, `cvd` and `driver` when others made them.
  registerTargetingCommands(program);
  return program;
}

export function main(argv = process.argv): Promise<number> {
  // Before any worker thread starts: the allocator settings apply to arenas made from now on.
  tuneMemory();
  return runProgram(buildProgram(), argv);
}
