import * as path from "node:path";

/** The `--state` option's help, shared by every `strata agent …` command. */
export const STATE_HELP = "the agent's state directory (default /var/lib/strata-agent; $STRATA_AGENT_STATE)";

/** `--state`, else $STRATA_AGENT_STATE, else `fallback`; absolute (the policy's %agentstate% and the watcher compare paths with it). */
export function stateDirOf(o: { state?: string }, fallback: string): string {
  return path.resolve(o.state ?? process.env.STRATA_AGENT_STATE ?? fallback);
}
