/**
 * `strata agent enroll`: make this machine (or the root given with --root)
 * an endpoint of a server. The work is @strata/agent's enrollEndpoint; this
 * file parses options and prints.
 */
import { DEFAULT_STATE_DIR, enrollEndpoint } from "@strata/agent";
import { StrataError } from "@strata/core";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { printJson } from "../output.js";

export function registerAgentEnroll(agent: Command): void {
  const cmd = agent
    .command("enroll")
    .description("enroll this endpoint with a server, using an enrollment token from `strata tokens create`")
    .requiredOption("--server <url>", "https://HOST[:PORT] of the server")
    .option("--token <token>", "the enrollment token, set_… (default: $STRATA_ENROLLMENT_TOKEN)")
    .option(
      "--fingerprint <sha256>",
      "the server certificate's SHA-256 fingerprint (printed with the token); without it, the first one seen is trusted and recorded",
    )
    .option("--root <dir>", "the endpoint's root directory, where the facts are read", "/")
    .option("--state <dir>", "the agent's state directory (mode 0700)", DEFAULT_STATE_DIR)
    .option("--force", "enroll again although the state directory holds an enrollment (a new endpoint)")
    .addHelpText(
      "after",
      "\nThe endpoint starts pending: an administrator approves it with `strata endpoints approve ID`\n(unless the token auto-approves). The credential is kept in STATE/credential, mode 0600.",
    )
    .action(async () => {
      const o = cmd.optsWithGlobals() as GlobalOptions & {
        server: string;
        token?: string;
        fingerprint?: string;
        root: string;
        state: string;
        force?: boolean;
      };
      const token = o.token ?? process.env.STRATA_ENROLLMENT_TOKEN;
      if (!token) {
        throw new StrataError("INVALID_ARGUMENT", "no enrollment token given", {
          hint: "pass --token set_… (or set STRATA_ENROLLMENT_TOKEN); an administrator creates one with `strata tokens create`",
        });
      }
      const r = await enrollEndpoint({
        server: o.server,
        token,
        ...(o.fingerprint ? { fingerprint: o.fingerprint } : {}),
        root: o.root,
        stateDir: o.state,
        force: o.force === true,
        log: (line) => process.stderr.write(`${line}\n`),
      });
      if (o.json) return printJson(r);
      process.stdout.write(`enrolled as ${r.endpointId} with ${r.serverUrl} (${r.state})\n`);
      process.stdout.write(
        `server certificate SHA256 ${r.fingerprint}${r.trustedOnFirstUse ? " (trusted on first use)" : ""}\n`,
      );
      if (r.state === "pending") {
        process.stdout.write(
          `an administrator must approve it: \`strata endpoints approve ${r.endpointId}\`\n`,
        );
      }
    });
}
