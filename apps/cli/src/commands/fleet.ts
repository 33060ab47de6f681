/**
 * The fleet's admin commands, over the stored login (`strata login`):
 *
 * - `strata tokens`: enrollment tokens for endpoints (create, list, revoke);
 * - `strata endpoints`: list, show, approve, disable;
 * - `strata cvd`: list, show, snapshots, set-policy;
 * - `strata policy`: upload policies (list, show, create, update, delete,
 *   export, import).
 *
 * Handlers fetch data and print it, as a table or with --json as JSON.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { StrataError } from "@strata/core";
import {
  API_PREFIX,
  type Cvd,
  type Endpoint,
  type EndpointDetail,
  type EnrollmentToken,
  type PolicyDetail,
} from "@strata/protocol";
import type { Command } from "commander";
import { formatBytes, printJson } from "../output.js";
import { call, client, type Opts, table } from "./server.js";

const opts = (cmd: Command) => cmd.optsWithGlobals() as Opts;
const out = (s: string) => process.stdout.write(s);
const dash = (v: string | null | undefined) => v ?? "-";

/** `30m`, `24h`, `7d` (or plain minutes) as minutes. */
export function parseDuration(s: string): number {
  const m = /^(\d+)\s*([mhd]?)$/.exec(s.trim());
  if (!m || Number(m[1]) <= 0) {
    throw new StrataError("INVALID_ARGUMENT", `${s} is not a duration`, { hint: "use e.g. 30m, 24h or 7d" });
  }
  return Number(m[1]) * ({ "": 1, m: 1, h: 60, d: 1440 } as const)[m[2] as "" | "m" | "h" | "d"];
}

function positiveInt(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1)
    throw new StrataError("INVALID_ARGUMENT", `${s} is not a positive integer`);
  return n;
}

/** `policy update` and `policy edit`: save DOC as NAME's next version and say so. */
async function savePolicy(o: Opts, name: string, doc: unknown): Promise<void> {
  const p = await call(client(o).updatePolicy(name, doc));
  if (o.json) printJson(p);
  else out(`updated policy ${p.name} to version ${p.version}; agents pick it up at their next check-in\n`);
}

export function readJsonFile(file: string): unknown {
  let text: string;
  try {
    text = file === "-" ? readFileSync(0, "utf8") : readFileSync(file, "utf8");
  } catch (e) {
    throw new StrataError("INVALID_ARGUMENT", `cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new StrataError("INVALID_ARGUMENT", `${file} is not JSON: ${(e as Error).message}`, {
      hint: "start from `strata policy export Default`",
    });
  }
}

function tokenRows(list: EnrollmentToken[]): string {
  return table([
    ["ID", "STATUS", "USES LEFT", "EXPIRES", "POLICY", "AUTO-APPROVE", "RULES", "CREATED BY"],
    ...list.map((t) => [
      t.id,
      t.status,
      `${t.usesLeft}/${t.maxUses}`,
      t.expiresAt,
      dash(t.policy),
      t.autoApprove ? "yes" : "no",
      t.autoAssign ? "yes" : "no",
      t.createdBy,
    ]),
  ]);
}

function endpointRows(list: Endpoint[]): string {
  return table([
    ["ID", "HOSTNAME", "STATE", "CVD", "OS", "LAST SEEN"],
    ...list.map((e) => [
      e.id,
      e.hostname,
      e.state + (e.duplicateMachineId ? " (duplicate machine id)" : ""),
      dash(e.cvdId),
      dash(e.os),
      dash(e.lastSeenAt),
    ]),
  ]);
}

function showEndpoint(e: EndpointDetail): string {
  const f = e.facts as {
    kernel?: string;
    arch?: string;
    memoryBytes?: number;
    macs?: string[];
    dmi?: { vendor?: string; model?: string };
    modaliases?: string[];
  };
  const lines = [
    `endpoint ${e.id}`,
    `  hostname:    ${e.hostname}`,
    `  state:       ${e.state}`,
    `  machine id:  ${e.machineId}${e.duplicateMachineId ? "  (DUPLICATE: a clone or a re-install; check before approving)" : ""}`,
    `  CVD:         ${dash(e.cvdId)}`,
    `  OS:          ${dash(e.os)}`,
    `  kernel:      ${dash(f.kernel)} ${f.arch ?? ""}`.trimEnd(),
    `  memory:      ${f.memoryBytes ? `${Math.round(f.memoryBytes / 2 ** 20)} MiB` : "-"}`,
    `  MACs:        ${(f.macs ?? []).join(", ") || "-"}`,
    `  hardware:    ${[f.dmi?.vendor, f.dmi?.model].filter(Boolean).join(" ") || "-"}${f.modaliases?.length ? ` (${f.modaliases.length} PCI/USB modaliases)` : ""}`,
    `  enrolled:    ${e.createdAt}${e.enrollmentTokenId ? ` with token ${e.enrollmentTokenId}` : ""}`,
    `  last seen:   ${dash(e.lastSeenAt)}`,
  ];
  if (e.sameMachineId.length) lines.push(`  same machine id as: ${e.sameMachineId.join(", ")}`);
  const r = e.remote;
  if (r) {
    lines.push(`  snapshot:    ${r.latestSnapshotAt ? `newest at ${r.latestSnapshotAt}` : "none yet"}`);
    lines.push(
      `  sync now:    ${
        r.syncRequestedAt
          ? `${r.sync === "done" ? "done" : "waiting for the agent"} (asked at ${r.syncRequestedAt} by ${dash(r.syncRequestedBy)})`
          : "-"
      }`,
    );
    lines.push(
      `  snoozed:     ${r.snoozedUntil ? `until ${r.snoozedUntil} (by ${dash(r.snoozedBy)}; \`strata endpoints snooze ${e.id} --resume\` ends it)` : "-"}`,
    );
  }
  if (e.state === "pending")
    lines.push(
      `\napprove it with \`strata endpoints approve ${e.id}\` (or by the rules: \`strata endpoints approve --by-rules ${e.id}\`)`,
    );
  return `${lines.join("\n")}\n`;
}

function cvdRows(list: Cvd[]): string {
  return table([
    ["ID", "ENDPOINT", "HOSTNAME", "POLICY", "CREATED"],
    ...list.map((c) => [
      c.id,
      dash(c.endpointId),
      dash(c.hostname),
      `${c.policy} (v${c.policyVersion})`,
      c.createdAt,
    ]),
  ]);
}

function showPolicy(p: PolicyDetail): string {
  const rules = (name: string, list: { dir: string; pattern?: string }[]) =>
    `  ${name}:${list.length ? "" : " -"}\n${list.map((r) => `    ${r.dir}${r.pattern ? `  ${r.pattern}` : ""}\n`).join("")}`;
  const r = p.policy.retention;
  return (
    `policy ${p.name} (${p.id}, version ${p.version}${p.isDefault ? ", the default" : ""})\n` +
    `  interval:  every ${p.policy.intervalMinutes} min\n` +
    `  retention: ${r.hourly} hourly, ${r.daily} daily, ${r.weekly} weekly, ${r.monthly} monthly\n` +
    `  bandwidth: ${p.policy.bandwidthLimitKBps ? `${p.policy.bandwidthLimitKBps} KiB/s` : "unlimited"}\n` +
    rules("unprotected", p.policy.unprotected) +
    rules("unprotected exceptions", p.policy.unprotectedExceptions) +
    rules("user area", p.policy.userArea) +
    rules("user area exceptions", p.policy.userAreaExceptions) +
    `  used by:   ${p.usage.cvds} CVD(s), ${p.usage.enrollmentTokens} enrollment token(s), ${p.usage.autoassignRules} auto-assignment rule(s)\n`
  );
}

export function registerFleetCommands(program: Command): void {
  // ---- enrollment tokens ---------------------------------------------------
  const tokens = program
    .command("tokens")
    .description("enrollment tokens: what an endpoint's agent needs to enroll (`strata agent enroll`)");
  tokens
    .command("create")
    .description(
      "create an enrollment token; prints it (once), the server's fingerprint and the command to run on the endpoint",
    )
    .option("--uses <n>", "how many endpoints may enroll with it", positiveInt, 1)
    .option("--expires <duration>", "valid for this long: 30m, 24h, 7d", "24h")
    .option(
      "--policy <name>",
      "upload policy of the CVDs of endpoints it auto-approves (default: the default policy)",
    )
    .option(
      "--auto-approve",
      "endpoints enrolling with it get a CVD at once (never a clone: duplicates stay pending)",
    )
    .option(
      "--no-autoassign",
      "the auto-assignment rules do not apply to its endpoints (recovery: the tool gives the CVD)",
    )
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      const t = await call(
        c.createEnrollmentToken({
          uses: o.uses as number,
          expiresInMinutes: parseDuration(String(o.expires)),
          ...(o.policy ? { policy: String(o.policy) } : {}),
          ...(o.autoApprove ? { autoApprove: true } : {}),
          ...(o.autoassign === false ? { autoAssign: false } : {}),
        }),
      );
      const fp = t.serverFingerprint;
      const enroll = `strata agent enroll --server ${c.baseUrl} --token ${t.token}${fp ? ` --fingerprint ${fp}` : ""}`;
      if (o.json) return printJson({ ...t, server: c.baseUrl, enrollCommand: enroll });
      out(
        `enrollment token ${t.id} (${t.maxUses} use(s), valid until ${t.expiresAt}${t.autoApprove ? ", auto-approves" : ""}); shown only now:\n\n` +
          `    ${t.token}\n\n` +
          `server certificate SHA256 fingerprint: ${dash(fp)}\n\n` +
          `on the endpoint, as root, run:\n\n    ${enroll}\n\n` +
          (t.autoApprove
            ? ""
            : t.autoAssign
              ? "an auto-assignment rule that matches gives it a CVD (`strata autoassign ls`); else approve it with `strata endpoints approve ENDPOINT_ID`\n"
              : "then approve it with `strata endpoints approve ENDPOINT_ID`\n"),
      );
    });
  tokens
    .command("list")
    .alias("ls")
    .description("list enrollment tokens (never their secrets)")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listEnrollmentTokens());
      if (o.json) return printJson(list);
      out(list.length ? tokenRows(list) : "no enrollment tokens; create one with `strata tokens create`\n");
    });
  tokens
    .command("revoke")
    .description("revoke an enrollment token (endpoints already enrolled with it stay)")
    .argument("<id>", "the token's id (see `strata tokens list`)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      await call(client(o).revokeEnrollmentToken(id));
      if (o.json) return printJson({ revoked: id });
      out(`revoked enrollment token ${id}\n`);
    });

  // ---- endpoints -----------------------------------------------------------
  const endpoints = program
    .command("endpoints")
    .description("the managed machines: list, show, approve, disable");
  endpoints
    .command("list")
    .alias("ls")
    .description("list endpoints")
    .option("--state <state>", "only pending, active or disabled ones")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const state = o.state as string | undefined;
      if (state && !["pending", "active", "disabled"].includes(state)) {
        throw new StrataError("INVALID_ARGUMENT", `unknown state ${state}`, {
          hint: "pending, active or disabled",
        });
      }
      const list = await call(client(o).listEndpoints(state as "pending" | undefined));
      if (o.json) return printJson(list);
      out(
        list.length
          ? endpointRows(list)
          : "no endpoints; enroll one with `strata tokens create` and `strata agent enroll`\n",
      );
    });
  endpoints
    .command("show")
    .description("show an endpoint: state, CVD, facts, endpoints with the same machine id")
    .argument("<id>", "endpoint id (ep_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const e = await call(client(o).getEndpoint(id));
      if (o.json) return printJson(e);
      out(showEndpoint(e));
    });
  endpoints
    .command("approve")
    .description(
      "approve an endpoint: a new CVD with a policy, or --cvd to give it an existing CVD (a replacement device); " +
        "--by-rules gives pending endpoints (all, or ID) the CVD of the first auto-assignment rule they match",
    )
    .argument("[id]", "endpoint id (ep_…); with --by-rules, default: every pending endpoint")
    .option("--policy <name>", "upload policy of the new CVD (default: the default policy)")
    .option("--cvd <id>", "attach this existing CVD instead (disable its old endpoint first)")
    .option(
      "--by-rules",
      "apply the auto-assignment rules (`strata autoassign ls`) instead of --policy/--cvd",
    )
    .action(async (id: string | undefined, _o, cmd: Command) => {
      const o = opts(cmd);
      if (o.byRules) {
        if (o.policy || o.cvd) {
          throw new StrataError("INVALID_ARGUMENT", "--by-rules takes the policy from the matching rule", {
            hint: "give either --by-rules or --policy/--cvd",
          });
        }
        const r = await call(client(o).approveByRules(id ? { endpoints: [id] } : {}));
        if (o.json) return printJson(r);
        out(
          (r.approved.length
            ? table([
                ["APPROVED", "HOSTNAME", "RULE", "POLICY", "CVD"],
                ...r.approved.map((a) => [a.endpoint, a.hostname, a.rule, a.policy, a.cvd]),
              ])
            : "no endpoint approved\n") +
            (r.pending.length
              ? `\n${table([["STILL PENDING", "HOSTNAME", "WHY"], ...r.pending.map((p) => [p.endpoint, p.hostname, p.reason])])}`
              : ""),
        );
        return;
      }
      if (!id) {
        throw new StrataError("INVALID_ARGUMENT", "which endpoint?", {
          hint: "strata endpoints approve ep_… [--policy P | --cvd CVD], or --by-rules",
        });
      }
      const e = await call(
        client(o).approveEndpoint(id, {
          ...(o.policy ? { policy: String(o.policy) } : {}),
          ...(o.cvd ? { cvd: String(o.cvd) } : {}),
        }),
      );
      if (o.json) return printJson(e);
      out(
        `approved ${e.id} (${e.hostname}): CVD ${dash(e.cvdId)}; its agent starts protecting at its next check-in\n`,
      );
    });
  endpoints
    .command("disable")
    .description(
      "disable an endpoint: its credential stops working (except to learn it is disabled); its CVD is kept",
    )
    .argument("<id>", "endpoint id (ep_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const e = await call(client(o).disableEndpoint(id));
      if (o.json) return printJson(e);
      out(`disabled ${e.id} (${e.hostname}); its CVD ${dash(e.cvdId)} is kept\n`);
    });

  endpoints
    .command("sync")
    .description(
      "ask the endpoint's agent to upload now (it hears of it within a minute), even while snoozed; see `endpoints show`",
    )
    .argument("<id>", "endpoint id (ep_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const e = await call(client(o).syncEndpoint(id));
      if (o.json) return printJson(e);
      out(
        `asked ${e.id} (${e.hostname}) to upload now; its agent starts at its next check-in (within a minute)\n` +
          `\`strata endpoints show ${e.id}\` says when a snapshot newer than the request arrived\n`,
      );
    });
  endpoints
    .command("snooze")
    .description(
      "no uploads on the endpoint for DURATION (at most 24h; an upload in progress stops); --resume ends the snooze",
    )
    .argument("<id>", "endpoint id (ep_…)")
    .argument("[duration]", "30m, 2h, 1d (at most 24h)")
    .option("--resume", "end the snooze: uploads resume at the policy's interval")
    .action(async (id: string, duration: string | undefined, _o, cmd: Command) => {
      const o = opts(cmd);
      if (o.resume ? duration !== undefined : duration === undefined) {
        throw new StrataError("INVALID_ARGUMENT", "give a DURATION, or --resume", {
          hint: "strata endpoints snooze ep_… 2h   |   strata endpoints snooze ep_… --resume",
        });
      }
      const c = client(o);
      const e = await call(o.resume ? c.resumeEndpoint(id) : c.snoozeEndpoint(id, parseDuration(duration!)));
      if (o.json) return printJson(e);
      out(
        o.resume
          ? `${e.id} (${e.hostname}) is no longer snoozed; its agent hears of it within a minute\n`
          : `${e.id} (${e.hostname}) uploads nothing until ${dash(e.remote?.snoozedUntil)}; its agent hears of it within a minute\n`,
      );
    });

  // ---- CVDs ----------------------------------------------------------------
  const cvd = program
    .command("cvd")
    .description(
      "CVDs, the endpoints' centralized copies: list, show, snapshots, transactions, set-policy, history, revert, recover, restore-file, reference, layers, dry-run, apply",
    );
  cvd
    .command("list")
    .alias("ls")
    .description("list CVDs with their endpoint and policy")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listCvds());
      if (o.json) return printJson(list);
      out(list.length ? cvdRows(list) : "no CVDs; approving an endpoint creates one\n");
    });
  cvd
    .command("show")
    .description("show a CVD")
    .argument("<id>", "CVD id (cvd_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = await call(client(o).getCvd(id));
      if (o.json) return printJson(c);
      out(
        `CVD ${c.id}\n  endpoint: ${dash(c.endpointId)} ${c.hostname ? `(${c.hostname})` : ""}\n  policy:   ${c.policy} (version ${c.policyVersion})\n  created:  ${c.createdAt}\n  snoozed until: ${dash(c.snoozedUntil)}\n  tags:     ${c.tags.join(" ") || "-"}\n`,
      );
    });
  cvd
    .command("snapshots")
    .description("list a CVD's snapshots, newest first")
    .argument("<id>", "CVD id (cvd_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).cvdSnapshots(id));
      if (o.json) return printJson(list);
      out(
        list.length
          ? table([
              ["ID", "TIME", "KIND", "HOSTNAME", "FILES"],
              ...list.map((s) => [s.id.slice(0, 16), s.time, s.kind, s.hostname, String(s.totalFiles)]),
            ])
          : `CVD ${id} has no snapshots yet\n`,
      );
    });
  cvd
    .command("transactions")
    .description("a CVD's uploads and restores, newest first, with what they sent")
    .argument("<id>", "CVD id (cvd_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(
        client(o).request<TransactionRow[]>(
          "GET",
          `${API_PREFIX}/cvds/${encodeURIComponent(id)}/transactions`,
        ),
      );
      if (o.json) return printJson(list);
      out(
        list.length
          ? table([
              ["ID", "KIND", "STATE", "STARTED", "CHANGED", "SENT", "PROVED", "RETRIES"],
              ...list.map((t) => [
                t.id,
                t.kind,
                t.state,
                t.startedAt,
                t.changedFiles === null ? "-" : String(t.changedFiles),
                formatBytes(t.bytesSent),
                String(t.chunksProven),
                String(t.retries),
              ]),
            ])
          : `CVD ${id} has no transactions yet\n`,
      );
    });
  cvd
    .command("set-policy")
    .description("give a CVD another upload policy (its agent picks it up at its next check-in)")
    .argument("<id>", "CVD id (cvd_…)")
    .argument("<policy>", "policy name or id")
    .action(async (id: string, policy: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = await call(client(o).setCvdPolicy(id, policy));
      if (o.json) return printJson(c);
      out(`CVD ${c.id} now has policy ${c.policy} (version ${c.policyVersion})\n`);
    });

  // ---- upload policies -----------------------------------------------------
  const policy = program
    .command("policy")
    .description("upload policies: what endpoints protect, how often, how long");
  policy
    .command("list")
    .alias("ls")
    .description("list upload policies")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listPolicies());
      if (o.json) return printJson(list);
      out(
        table([
          ["NAME", "ID", "VERSION", "INTERVAL", "UPDATED"],
          ...list.map((p) => [
            p.name + (p.isDefault ? " (default)" : ""),
            p.id,
            String(p.version),
            `${p.intervalMinutes} min`,
            p.updatedAt,
          ]),
        ]),
      );
    });
  policy
    .command("show")
    .description("show a policy's rules and who uses it")
    .argument("<name>", "policy name or id")
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const p = await call(client(o).getPolicy(name));
      if (o.json) return printJson(p);
      out(showPolicy(p));
    });
  policy
    .command("create")
    .description(
      "create a policy from a JSON file (a policy object, or a `policy export` document); fields left out take defaults",
    )
    .requiredOption("--file <file>", "JSON file (- for stdin)")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const p = await call(client(o).createPolicy(readJsonFile(String(o.file))));
      if (o.json) return printJson(p);
      out(`created policy ${p.name} (${p.id})\n`);
    });
  policy
    .command("update")
    .description("replace a policy with a JSON file (edit a `policy export`; a stale version is refused)")
    .argument("<name>", "policy name or id")
    .requiredOption("--file <file>", "JSON file (- for stdin)")
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      await savePolicy(o, name, readJsonFile(String(o.file)));
    });
  policy
    .command("edit")
    .description(
      "edit a policy in $VISUAL or $EDITOR (its `policy export` document) and save it as the next version; --file: from a file instead",
    )
    .argument("<name>", "policy name or id")
    .option(
      "--file <file>",
      "the edited JSON document (- for stdin) instead of an editor, as `policy update`",
    )
    .addHelpText(
      "after",
      "\nWithout --file the policy is exported to a temporary file and opened in $VISUAL, $EDITOR or vi;\nsaved unchanged, nothing is updated. Another edit saved meanwhile makes this one stale: it is\nrefused and the file kept so you can merge and retry with --file.",
    )
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      if (o.file !== undefined) return savePolicy(o, name, readJsonFile(String(o.file)));
      const editor = process.env.VISUAL || process.env.EDITOR || "vi";
      const before = await call(client(o).exportPolicy(name));
      const dir = mkdtempSync(path.join(tmpdir(), "strata-policy-"));
      const file = path.join(dir, `${name.replace(/[^A-Za-z0-9._-]/g, "_")}.json`);
      writeFileSync(file, before, { mode: 0o600 });
      let keep = false;
      try {
        // Through the shell, so EDITOR may carry arguments ("code --wait").
        const r = spawnSync("sh", ["-c", `${editor} "$1"`, "sh", file], { stdio: "inherit" });
        if (r.status !== 0)
          throw new StrataError(
            "IO_ERROR",
            `the editor (${editor}) exited with ${r.signal ?? r.status}; the policy is unchanged`,
            {
              hint: "set VISUAL or EDITOR to an editor that waits until you close the file, or use --file",
            },
          );
        const after = readFileSync(file, "utf8");
        if (after === before) {
          if (o.json) printJson({ policy: name, changed: false });
          else out(`policy ${name} unchanged\n`);
          return;
        }
        let doc: unknown;
        try {
          doc = JSON.parse(after);
        } catch (e) {
          keep = true;
          throw new StrataError(
            "INVALID_ARGUMENT",
            `the edited policy is not JSON: ${(e as Error).message}`,
            {
              subject: file,
              hint: `fix ${file} and run \`strata policy edit ${name} --file ${file}\``,
            },
          );
        }
        try {
          await savePolicy(o, name, doc);
        } catch (e) {
          keep = true;
          process.stderr.write(`your edit is kept in ${file}\n`);
          throw e;
        }
      } finally {
        if (!keep) rmSync(dir, { recursive: true, force: true });
      }
    });
  policy
    .command("delete")
    .description("delete a policy no CVD or enrollment token uses")
    .argument("<name>", "policy name or id")
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      await call(client(o).deletePolicy(name));
      if (o.json) return printJson({ deleted: name });
      out(`deleted policy ${name}\n`);
    });
  policy
    .command("export")
    .description("print a policy as a portable JSON document (or write it with --output)")
    .argument("<name>", "policy name or id")
    .option("--output <file>", "write to FILE instead of stdout")
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const doc = await call(client(o).exportPolicy(name));
      if (o.output) {
        writeFileSync(String(o.output), doc);
        if (o.json) printJson({ exported: name, file: o.output });
        else out(`wrote ${o.output}\n`);
      } else out(doc);
    });
  policy
    .command("preview")
    .description(
      "what a policy protects on a CVD: files and bytes per area, with samples and the deciding rules",
    )
    .argument("[name]", "policy name or id (default: the CVD's own policy)")
    .requiredOption("--cvd <id>", "the CVD whose newest snapshot is listed")
    .action(async (name: string | undefined, _o, cmd: Command) => {
      const o = opts(cmd);
      const q = name ? `?policy=${encodeURIComponent(name)}` : "";
      const p = await call(
        client(o).request<PreviewResult>(
          "GET",
          `${API_PREFIX}/cvds/${encodeURIComponent(String(o.cvd))}/preview${q}`,
        ),
      );
      if (o.json) return printJson(p);
      const rows: string[][] = [["AREA", "FILES", "DIRS", "OTHER", "BYTES"]];
      for (const k of ["machine", "user", "excluded"] as const) {
        const c = p.counts[k];
        rows.push([k, String(c.files), String(c.dirs), String(c.other), formatBytes(c.bytes)]);
      }
      out(`policy ${p.policy} on ${p.cvd} (snapshot ${p.snapshot.slice(0, 12)}):\n`);
      out(table(rows));
      for (const k of ["user", "excluded"] as const) {
        if (!p.samples[k].length) continue;
        out(`\n${k} area, for example:\n`);
        for (const x of p.samples[k].slice(0, 10)) out(`  ${x.path}${x.reason ? `   (${x.reason})` : ""}\n`);
      }
    });
  policy
    .command("import")
    .description("create a policy from a `policy export` document")
    .requiredOption("--file <file>", "the exported document (- for stdin)")
    .option("--name <name>", "import it under this name")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const p = await call(
        client(o).importPolicy(readJsonFile(String(o.file)), o.name ? String(o.name) : undefined),
      );
      if (o.json) return printJson(p);
      out(`imported policy ${p.name} (${p.id})\n`);
    });
}

interface TransactionRow {
  id: string;
  kind: string;
  state: string;
  startedAt: string;
  changedFiles: number | null;
  bytesSent: number;
  chunksProven: number;
  retries: number;
}

interface PreviewResult {
  cvd: string;
  policy: string;
  snapshot: string;
  counts: Record<
    "machine" | "user" | "excluded",
    { files: number; dirs: number; other: number; bytes: number }
  >;
  samples: Record<"machine" | "user" | "excluded", { path: string; reason?: string }[]>;
}
