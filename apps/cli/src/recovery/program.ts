/**
 * The recovery program (the file `strata recovery build` writes runs it):
 * `restore` gives a lost machine's CVD to a replacement device booted
 * from a live system, `list-cvds` shows what may be restored, `version`.
 * Every answer can be a flag; on a terminal, missing ones are asked.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import * as path from "node:path";
import { AGENT_VERSION, DEFAULT_STATE_DIR, readState } from "@strata/agent";
import { StrataError } from "@strata/core";
import { Command, Option } from "commander";
import { table } from "../commands/server.js";
import { readPassword } from "../context.js";
import { formatBytes, printJson } from "../output.js";
import { ask, askSecret, canAsk, confirm } from "../prompt.js";
import { closingSteps, formatSteps } from "./report.js";
import { queueRecover, runRecoverTask } from "./restore.js";
import {
  enrollReplacement,
  findCvd,
  findSnapshot,
  listRestorableCvds,
  logIn,
  logOut,
  type Operator,
  type PinnedServer,
  pinServer,
  type RestorableCvd,
} from "./session.js";

export const RECOVERY_NAME = "strata-recovery";

interface CommonOpts {
  server?: string;
  user?: string;
  passwordFile?: string;
  fingerprint?: string;
  json?: boolean;
}

interface RestoreOpts extends CommonOpts {
  token?: string;
  cvd?: string;
  snapshot?: string;
  target?: string;
  hostname?: string;
  force?: boolean;
}

const err = (line: string) => process.stderr.write(`${line}\n`);

async function answer(
  value: string | undefined,
  question: string,
  flag: string,
  what: string,
): Promise<string> {
  if (value) return value;
  const a = await ask(question, what, `pass ${flag}`);
  if (!a) throw new StrataError("INVALID_ARGUMENT", `no ${what} given`, { hint: `pass ${flag}` });
  return a;
}

/** The server, pinned: the fingerprint given, or the one seen, which a person at a terminal confirms. */
async function connect(o: CommonOpts): Promise<PinnedServer> {
  const server = await answer(o.server, "server (https://HOST:8640): ", "--server URL", "server");
  const s = await pinServer(server, o.fingerprint);
  if (s.trustedOnFirstUse) {
    err(`the server presents the certificate SHA256 ${s.fingerprint}`);
    if (canAsk()) {
      const yes = await confirm(
        "is it the server's? (compare with `strata tokens create` or `strata server`)",
        "confirmation",
        "pass --fingerprint",
      );
      if (!yes) {
        throw new StrataError("PERMISSION_DENIED", `the certificate of ${s.url} was not confirmed`, {
          hint: "pass the fingerprint `strata tokens create` prints with --fingerprint",
        });
      }
    } else {
      err("trusting it on first use (pass --fingerprint to check it)");
    }
  }
  return s;
}

async function operator(o: CommonOpts, s: PinnedServer): Promise<Operator> {
  const user = await answer(o.user, "operator user name: ", "--user NAME", "user name");
  const password =
    o.passwordFile || process.env.STRATA_PASSWORD
      ? readPassword({ ...(o.passwordFile ? { passwordFile: o.passwordFile } : {}) }).toString("utf8")
      : await askSecret(`password of ${user}@${s.url}: `);
  const op = await logIn(s, user, password);
  err(`logged in as ${op.user} (${op.role})`);
  return op;
}

function cvdTable(list: RestorableCvd[]): string {
  return table([
    ["CVD", "HOSTNAME", "LAST SNAPSHOT", "SIZE", "FILES", "SNAPSHOTS", "ENDPOINT"],
    ...list.map((c) => [
      c.id,
      c.hostname ?? "-",
      c.latest?.time ?? "-",
      c.latest ? formatBytes(c.latest.totalBytes) : "-",
      String(c.latest?.totalFiles ?? 0),
      String(c.snapshots),
      c.endpointId ? `${c.endpointId} (${c.endpointState ?? "?"})` : "-",
    ]),
  ]);
}

async function chooseCvd(list: RestorableCvd[], ref: string | undefined): Promise<RestorableCvd> {
  if (list.length === 0) {
    throw new StrataError("NOT_FOUND", "there is no CVD with a snapshot you may restore", {
      hint: "check the user's role (it needs cvd.read and endpoints.approve), or that the machine ever uploaded",
    });
  }
  if (ref) return findCvd(list, ref);
  if (!canAsk())
    throw new StrataError("INVALID_ARGUMENT", "no CVD given", { hint: "pass --cvd ID (see `list-cvds`)" });
  process.stderr.write(cvdTable(list));
  return findCvd(list, await answer(undefined, "CVD to restore (id or hostname): ", "--cvd ID", "CVD"));
}

/** The target: an existing directory, not the live system's root; asked to confirm when it holds files. */
async function checkTarget(target: string, force: boolean): Promise<string> {
  const dir = path.resolve(target);
  if (dir === "/") {
    throw new StrataError("INVALID_ARGUMENT", "the target is the live system's own root", {
      hint: "mount the new disk (e.g. `mount /dev/sda2 /mnt`) and pass --target /mnt",
    });
  }
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new StrataError("NOT_FOUND", `${dir} is not a directory`, {
      subject: dir,
      hint: "format and mount the new disk there first (e.g. `mkfs.ext4 /dev/sda2 && mount /dev/sda2 /mnt`)",
    });
  }
  const own = new Set(["lost+found", "var"]);
  const others = readdirSync(dir).filter((n) => !own.has(n));
  if (others.length && !force) {
    const q = `${dir} is not empty (${others.slice(0, 3).join(", ")}${others.length > 3 ? ", …" : ""}); what the snapshot lacks there is deleted. continue?`;
    if (!canAsk() || !(await confirm(q, "confirmation", "pass --force"))) {
      throw new StrataError("INVALID_ARGUMENT", `${dir} is not empty`, {
        subject: dir,
        hint: "restore onto an empty filesystem, or pass --force to replace what is there",
      });
    }
  }
  return dir;
}

async function listCvdsCommand(o: CommonOpts): Promise<void> {
  const s = await connect(o);
  const op = await operator(o, s);
  try {
    const list = await listRestorableCvds(op);
    if (o.json) return printJson(list);
    process.stdout.write(list.length ? cvdTable(list) : "no CVD with a snapshot you may restore\n");
  } finally {
    await logOut(op);
  }
}

async function restoreCommand(o: RestoreOpts): Promise<void> {
  const s = await connect(o);
  const target = await checkTarget(
    await answer(o.target, "target directory (the new disk, mounted): ", "--target DIR", "target"),
    o.force === true,
  );
  const stateDir = path.join(target, DEFAULT_STATE_DIR);
  const previous = readState(stateDir);
  const op = await operator(o, s);
  try {
    const cvd = await chooseCvd(await listRestorableCvds(op), o.cvd);
    const snapshot = await findSnapshot(op, cvd, o.snapshot);
    err(`restoring CVD ${cvd.id} (${cvd.hostname ?? "?"}), snapshot ${snapshot.id} of ${snapshot.time}`);
    let endpointId: string;
    if (previous && previous.serverUrl === s.url && !o.token) {
      // A recovery run again (interrupted, or failed): the device keeps the endpoint it enrolled as.
      endpointId = previous.endpointId;
      err(`continuing as endpoint ${endpointId}, enrolled into ${stateDir} earlier`);
    } else {
      const token = await answer(
        o.token ?? process.env.STRATA_ENROLLMENT_TOKEN,
        "enrollment token (set_…): ",
        "--token TOKEN",
        "enrollment token",
      );
      const hostname = o.hostname ?? cvd.hostname ?? "recovered";
      const e = await enrollReplacement({
        server: s,
        token,
        stateDir,
        hostname,
        force: previous !== null,
        log: err,
      });
      endpointId = e.endpointId;
      err(`enrolled as endpoint ${endpointId} (${hostname})`);
    }
    const recover = await queueRecover(op, stateDir, endpointId, cvd, snapshot);
    err(
      recover.resumed
        ? `continuing task ${recover.task.id}`
        : `CVD ${cvd.id} is now endpoint ${endpointId}'s; task ${recover.task.id} restores it`,
    );
    if (recover.disabledEndpoint) err(`the lost machine's endpoint ${recover.disabledEndpoint} is disabled`);
    const { result: restored, bytesReceived } = await runRecoverTask({
      stateDir,
      target,
      task: recover.task,
      progress: !o.json,
      log: err,
    });
    const next = closingSteps(target);
    const report = {
      target,
      server: s.url,
      fingerprint: s.fingerprint,
      endpointId,
      cvd: { id: cvd.id, hostname: cvd.hostname },
      snapshot: { id: snapshot.id, time: snapshot.time },
      task: recover.task.id,
      disabledEndpoint: recover.disabledEndpoint,
      agentState: stateDir,
      restore: { ...restored, bytesReceived },
      ...next,
    };
    // Like `strata backup`: 3 when some paths could not be restored (named in the report).
    if (restored.errors.length) process.exitCode = 3;
    if (o.json) return printJson(report);
    process.stdout.write(
      `restored ${cvd.hostname ?? cvd.id} (CVD ${cvd.id}, snapshot ${snapshot.id} of ${snapshot.time}) into ${target}\n` +
        `  ${restored.files} files, ${formatBytes(snapshot.totalBytes)}: ${restored.files - restored.unchangedFiles} written, ` +
        `${restored.unchangedFiles} already in place; ${formatBytes(bytesReceived)} received in ${Math.round(restored.durationMs / 1000)} s\n` +
        `  this machine is endpoint ${endpointId}; its agent state is in ${stateDir}\n` +
        (recover.disabledEndpoint
          ? `  the lost machine's endpoint ${recover.disabledEndpoint} is disabled\n`
          : "") +
        (restored.errors.length
          ? `  ${restored.errors.length} path(s) could not be restored:\n${restored.errors
              .slice(0, 20)
              .map((e) => `    ${e.path}: ${e.message}\n`)
              .join("")}`
          : "") +
        "\n" +
        formatSteps(next),
    );
  } finally {
    await logOut(op);
  }
}

function withServerOptions(cmd: Command): Command {
  return cmd
    .option("--server <url>", "https://HOST[:PORT] of the server")
    .option("--user <name>", "the operator's user name on the server")
    .option(
      "--password-file <file>",
      "read the operator's password from FILE (default: $STRATA_PASSWORD, or a prompt)",
    )
    .option(
      "--fingerprint <sha256>",
      "the server certificate's SHA-256 fingerprint (default: the one seen, confirmed on a terminal)",
    );
}

export function buildRecoveryProgram(name = RECOVERY_NAME): Command {
  const program = new Command();
  program
    .name(name)
    .description(
      "Strata recovery tool: restore a lost machine's CVD onto a new disk, from a live system.\n" +
        "Every answer can be given as a flag; on a terminal, missing ones are asked.",
    )
    .addOption(new Option("--json", "print machine-readable JSON on stdout"))
    .showHelpAfterError("(run with --help for usage)")
    .configureHelp({ sortSubcommands: false })
    .addHelpText(
      "after",
      `\nExample:\n  mount /dev/sda2 /mnt\n  ${name} restore --server https://strata.example:8640 --token set_… --user helpdesk \\\n      --password-file pw --cvd ws-17 --target /mnt`,
    );

  program
    .command("version")
    .description("print the tool's version and what it runs on")
    .action(() => {
      const v = {
        version: AGENT_VERSION,
        node: process.version,
        platform: process.platform,
        arch: process.arch,
      };
      if (program.opts().json) return printJson(v);
      process.stdout.write(`${name} ${v.version} (node ${v.node}, ${v.platform}-${v.arch})\n`);
    });

  const list = withServerOptions(
    program.command("list-cvds").description("list the CVDs you may restore: hostname, last snapshot, size"),
  ).action(() => listCvdsCommand({ ...list.opts(), ...program.opts() }));

  const restore = withServerOptions(
    program
      .command("restore")
      .description("enroll this machine, give it a CVD and restore the CVD's snapshot into --target"),
  )
    .option(
      "--token <token>",
      "an enrollment token (set_…) from `strata tokens create`, without --auto-approve (default: $STRATA_ENROLLMENT_TOKEN)",
    )
    .option("--cvd <id>", "the CVD to restore: its id, or a hostname only one CVD has")
    .option("--snapshot <id>", "the snapshot (default: the latest)")
    .option("--target <dir>", "the new system's root: the new disk, formatted and mounted")
    .option("--hostname <name>", "the new endpoint's hostname (default: the CVD's)")
    .option("--force", "restore into a target that is not empty, replacing what is there")
    .addHelpText(
      "after",
      "\nThe machine this CVD belonged to is disabled: a CVD has one endpoint. The agent's state\n" +
        `is written into TARGET${DEFAULT_STATE_DIR}, so the restored system continues the CVD at\n` +
        "first boot. Run again after an interruption: it continues with the same endpoint.\n" +
        "Exit status: 0 restored, 3 restored but some paths could not be (named), 1 failed.",
    )
    .action(() => restoreCommand({ ...restore.opts(), ...program.opts() }));
  return program;
}
