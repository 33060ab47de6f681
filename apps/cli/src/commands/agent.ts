import type { Command } from "commander";

/**
 * `strata agent …`: the endpoint side. Subcommands are added by the modules
 * that implement them (enroll, run, status, sync-now, snooze, …).
 */
export function registerAgentCommands(program: Command): Command {
  return program
    .command("agent")
    .description("run and control the endpoint agent (enroll, run, status, sync-now, snooze)");
}
