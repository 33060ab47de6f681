/**
 * Layers from the administrator's side (docs/design/layers.md), over the
 * stored login:
 *
 * - `strata layer ls | show LAYER | capture-base | assign`
 * - `strata cvd reference CVD [--off]`
 * - `strata cvd layers CVD`, `strata cvd dry-run CVD`
 * - `strata cvd apply CVD [--enforce keep|remove] [--at-restart] [--wait]`
 *
 * App layers are captured on the reference endpoint (`strata agent
 * capture`). The `layer` and `cvd` groups are found or created (other files
 * add their own subcommands to them).
 */
import { StrataError } from "@strata/core";
import type {
  AssignmentInfo,
  CvdLayersInfo,
  DryRunReport,
  LayerInfo,
  LayerRef,
  LayerVersionInfo,
  Task,
} from "@strata/protocol";
import type { Command } from "commander";
import { formatBytes, printJson } from "../output.js";
import { showTask, waitForTask } from "./restore.js";
import { call, client, type Opts, table } from "./server.js";
import { subcommand } from "./targeting.js";

const opts = (cmd: Command) => cmd.optsWithGlobals() as Opts;
const out = (s: string) => process.stdout.write(s);
const collect = (v: string, prev: string[] = []) => [...prev, v];
const os = (v: LayerVersionInfo) => (v.os ? `${v.os.id} ${v.os.versionId}`.trim() : "-");

/** `NAME` or `NAME@VERSION` (a version number; absent: always the newest). */
export function parseLayerRef(spec: string, flag: string): LayerRef {
  const at = spec.lastIndexOf("@");
  if (at < 0) return { layer: spec };
  const layer = spec.slice(0, at);
  const v = spec.slice(at + 1);
  if (!layer || !/^[1-9]\d{0,8}$/.test(v))
    throw new StrataError("INVALID_ARGUMENT", `${flag} ${spec} is not LAYER or LAYER@VERSION`, {
      hint: `e.g. ${flag} debian or ${flag} debian@2 (a version number from \`strata layer show\`)`,
    });
  return { layer, version: Number(v) };
}

function layerRows(list: LayerInfo[]): string {
  return table([
    ["NAME", "KIND", "VERSIONS", "NEWEST", "OS", "FILES", "SIZE", "CREATED"],
    ...list.map((l) => {
      const v = l.versions[l.versions.length - 1];
      return [
        l.name,
        l.kind,
        String(l.versions.length),
        v ? `${v.version} (${v.label})` : "-",
        v ? os(v) : "-",
        v ? String(v.stats.files) : "-",
        v ? formatBytes(v.stats.bytes) : "-",
        l.createdAt,
      ];
    }),
  ]);
}

function showLayer(l: LayerInfo): string {
  const head = `layer ${l.name} (${l.id})\n  kind:        ${l.kind}\n  description: ${l.description || "-"}\n  created:     ${l.createdAt}\n`;
  if (!l.versions.length) return `${head}no versions yet\n`;
  return `${head}\n${table([
    ["VERSION", "LABEL", "OS", "FILES", "SIZE", "PACKAGES", "SOURCE", "CREATED", "BY"],
    ...l.versions.map((v) => [
      String(v.version),
      v.label,
      os(v),
      String(v.stats.files),
      formatBytes(v.stats.bytes),
      String(v.stats.packages),
      v.source.cvd ?? "-",
      v.createdAt,
      v.createdBy,
    ]),
  ])}`;
}

const refText = (r: LayerRef, names: Map<string, string>) =>
  `${names.get(r.layer) ?? r.layer}${r.version ? `@${r.version}` : ""}`;

function assignmentText(a: AssignmentInfo, names: Map<string, string>): string {
  const apps = a.apps.map((r) => refText(r, names)).join(", ") || "-";
  return `${a.target.kind} ${a.target.id}: base ${a.base ? refText(a.base, names) : "-"}, apps ${apps} (${a.assignedAt} by ${a.assignedBy})`;
}

function cvdLayersText(i: CvdLayersInfo, names: Map<string, string>): string {
  const lines = [`CVD ${i.cvd}`];
  if (!i.effective) lines.push("  no layers assigned");
  else {
    const e = i.effective;
    lines.push(
      `  assignment:  ${e.id} (to ${e.target.kind} ${e.target.id}, ${e.assignedAt} by ${e.assignedBy})`,
      `  base:        ${e.base ? refText(e.base, names) : "- (the base the endpoint runs)"}`,
      `  apps:        ${e.apps.map((r) => refText(r, names)).join(", ") || "-"}`,
    );
  }
  for (const d of i.drivers)
    lines.push(`  drivers:     ${d.profile}: ${d.folders.map((f) => names.get(f) ?? f).join(", ")}`);
  lines.push(
    `  target image:  ${i.targetImage ?? "-"}`,
    `  applied image: ${i.appliedImage ?? "-"}${i.appliedAt ? ` (${i.appliedAt})` : ""}`,
  );
  if (i.effective && i.targetImage && i.targetImage === i.appliedImage) lines.push("  up to date");
  else if (i.effective) lines.push(`  apply it with \`strata cvd apply ${i.cvd}\``);
  if (i.overridden.length) {
    lines.push("  overridden:");
    for (const a of i.overridden) lines.push(`    ${assignmentText(a, names)}`);
  }
  return `${lines.join("\n")}\n`;
}

function dryRunText(cvd: string, r: DryRunReport): string {
  const lines = [`dry-run of image ${r.image.slice(0, 16)} on CVD ${cvd} (against its newest snapshot)`];
  lines.push(
    `  files:    ${r.files.added} added, ${r.files.updated} updated, ${r.files.removed} removed; ${formatBytes(r.bytesToWrite)} to write`,
    r.disk
      ? `  disk:     needs ${formatBytes(r.disk.neededBytes)}, ${formatBytes(r.disk.freeBytes)} free of ${formatBytes(r.disk.totalBytes)} on ${r.disk.path} (reported ${r.disk.reportedAt})`
      : "  disk:     free space unknown (the endpoint's agent has not reported it)",
  );
  const sample = (what: string, list: string[], n: number) => {
    if (!list.length) return;
    lines.push(`  ${what}:`);
    for (const p of list.slice(0, 10)) lines.push(`    ${p}`);
    if (n > 10) lines.push(`    … ${n - 10} more (--json lists ${Math.min(n, 100)})`);
  };
  sample("added", r.files.samples.added, r.files.added);
  sample("updated", r.files.samples.updated, r.files.updated);
  sample("removed", r.files.samples.removed, r.files.removed);
  const p = r.packages;
  lines.push(
    `  packages: ${p.added.length} added, ${p.updated.length} updated, ${p.removed.length} removed, ${p.userInstalled.length} user-installed kept`,
  );
  for (const u of p.updated.slice(0, 20)) lines.push(`    ${u.name} ${u.from} → ${u.to}`);
  if (r.doNotOverride.length)
    lines.push(`  kept as on the endpoint (do-not-override): ${r.doNotOverride.slice(0, 10).join(", ")}`);
  if (r.triggers?.length) lines.push(`  then runs: ${r.triggers.join(", ")}`);
  if (!r.problems.length) lines.push("  no problems");
  else {
    lines.push(
      "",
      table([
        ["PROBLEM", "BLOCKING", "SUBJECT", "MESSAGE"],
        ...r.problems.map((x) => [x.kind, x.blocking ? "yes" : "no", x.subject, x.message]),
      ]).trimEnd(),
    );
  }
  lines.push(
    r.blocked
      ? "\nblocked: an apply would fail until the blocking problems are solved"
      : "\nan apply may go ahead",
  );
  return `${lines.join("\n")}\n`;
}

/** Layer ids → names, for printing assignments. */
async function layerNames(o: Opts): Promise<Map<string, string>> {
  return new Map((await call(client(o).listLayers())).map((l) => [l.id, l.name]));
}

/** A queued task: printed, or waited for with --wait. */
async function endWith(
  c: ReturnType<typeof client>,
  t: Task,
  o: Opts & { wait?: boolean },
  what: string,
): Promise<void> {
  if (o.wait) {
    if (!o.json) out(`queued task ${t.id} (${what}) for endpoint ${t.endpoint}; waiting for it\n`);
    const done = await waitForTask(c, t.id, o.json === true);
    if (o.json) return printJson(done);
    return void out(showTask(done));
  }
  if (o.json) return printJson(t);
  out(
    `queued task ${t.id} (${what}) on CVD ${t.cvd}, endpoint ${t.endpoint}\nfollow it with \`strata task show ${t.id} --wait\`\n`,
  );
}

export function registerLayerCommands(program: Command): void {
  const layer = subcommand(program, "layer", "base, app and driver layers");

  layer
    .command("list")
    .alias("ls")
    .description("list layers with their newest version")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listLayers());
      if (o.json) return printJson(list);
      out(
        list.length
          ? layerRows(list)
          : "no layers yet: `strata layer capture-base` makes a base layer, `strata agent capture` an app layer\n",
      );
    });

  layer
    .command("show")
    .description("show a layer and its versions")
    .argument("<layer>", "layer name or id (lay_…)")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const l = await call(client(o).getLayer(ref));
      if (o.json) return printJson(l);
      out(showLayer(l));
    });

  layer
    .command("capture-base")
    .description("capture a base layer version from a reference CVD's snapshot")
    .requiredOption("--name <name>", "the base layer (created on its first version)")
    .requiredOption("--cvd <id>", "the reference CVD (`strata cvd reference CVD` marks one)")
    .option("--snapshot <id>", "snapshot id or unique prefix (default: latest)")
    .option("--label <label>", "version label, e.g. 12.8 (default: the version number)")
    .option("--description <text>", "what the layer is (kept with a new layer)")
    .addHelpText(
      "after",
      "\nThe server takes the snapshot without the user area, identity files, logs and caches (the\nbase-capture rules, `strata layer rules`) and the structured files (dpkg status, account files),\nwhich go into the layer's manifest. Nothing happens on the endpoint.",
    )
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const r = await call(
        client(o).captureBase({
          name: String(o.name),
          cvd: String(o.cvd),
          ...(o.snapshot ? { snapshot: String(o.snapshot) } : {}),
          ...(o.label ? { label: String(o.label) } : {}),
          ...(o.description ? { description: String(o.description) } : {}),
        }),
      );
      if (o.json) return printJson(r);
      const v = r.version;
      out(
        `captured ${r.layer.name} version ${v.version} (${v.label}) from CVD ${o.cvd} snapshot ${v.source.snapshots[0]?.slice(0, 16)}: ${v.stats.files} files, ${formatBytes(v.stats.bytes)}, ${v.stats.packages} packages, ${os(v)}\n`,
      );
    });

  layer
    .command("assign")
    .description("assign a base and app layers to a CVD or a collection (its newest assignment wins)")
    .option(
      "--base <layer[@version]>",
      "the base layer (default: none, the apps go on the base the endpoint runs)",
    )
    .option("--app <layer[@version]>", "an app layer, repeatable, in order (later ones win)", collect)
    .option("--cvd <id>", "assign to this CVD")
    .option("--collection <name>", "assign to this collection")
    .addHelpText(
      "after",
      "\nWithout @version a layer is always its newest version. Every app layer must have been captured\non the base's OS release (or, without --base, the CVD's): otherwise the server refuses (CONFLICT).\nThe assignment takes effect at the next `strata cvd apply`.",
    )
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      if (Boolean(o.cvd) === Boolean(o.collection))
        throw new StrataError("INVALID_ARGUMENT", "give --cvd or --collection (one of them)");
      const apps = ((o.app as string[] | undefined) ?? []).map((a) => parseLayerRef(a, "--app"));
      const base = o.base ? parseLayerRef(String(o.base), "--base") : null;
      if (!base && !apps.length)
        throw new StrataError("INVALID_ARGUMENT", "give --base, --app or both", {
          hint: "e.g. strata layer assign --base debian --app jq --cvd CVD",
        });
      const c = client(o);
      const a = await call(
        c.assignLayers({
          target: o.cvd ? { cvd: String(o.cvd) } : { collection: String(o.collection) },
          ...(base ? { base } : {}),
          apps,
        }),
      );
      if (o.json) return printJson(a);
      out(`assigned ${assignmentText(a, await layerNames(o))}\n`);
      if (a.target.kind === "cvd") out(`apply it with \`strata cvd apply ${a.target.id}\`\n`);
    });

  const cvd = subcommand(program, "cvd", "CVDs, the endpoints' centralized copies");

  cvd
    .command("reference")
    .description("mark a CVD as a reference CVD (layers are captured from those), or --off to unmark it")
    .argument("<cvd>", "CVD id (cvd_…)")
    .option("--off", "unmark it")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const r = await call(client(o).setReference(id, !o.off));
      if (o.json) return printJson(r);
      out(`CVD ${r.cvd} is ${r.reference ? "a reference CVD" : "no longer a reference CVD"}\n`);
    });

  cvd
    .command("layers")
    .description("the CVD's effective layer assignment, what it overrode, and its target and applied images")
    .argument("<cvd>", "CVD id (cvd_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const i = await call(client(o).cvdLayers(id));
      if (o.json) return printJson(i);
      out(cvdLayersText(i, await layerNames(o)));
    });

  cvd
    .command("dry-run")
    .description("what applying the CVD's layers would do, against its newest snapshot (exit 1 when blocked)")
    .argument("<cvd>", "CVD id (cvd_…)")
    .option("--enforce <mode>", "the report of an apply with this enforcement: keep or remove")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const enforce = o.enforce === undefined ? undefined : String(o.enforce);
      if (enforce !== undefined && enforce !== "keep" && enforce !== "remove")
        throw new StrataError("INVALID_ARGUMENT", `--enforce ${enforce} is not keep or remove`);
      const r = await call(client(o).dryRun(id, enforce ? { enforce } : {}));
      if (r.blocked) process.exitCode = 1;
      if (o.json) return printJson(r);
      out(dryRunText(id, r));
    });

  cvd
    .command("apply")
    .description("queue an apply of the CVD's layers on its endpoint (a task of kind apply)")
    .argument("<cvd>", "CVD id (cvd_…)")
    .option("--enforce <mode>", "keep: repair drift, keep user-installed software; remove: delete it too")
    .option("--at-restart", "stage now, change the disk at the agent's next start")
    .option("--wait", "wait for the task to end, showing its progress")
    .addHelpText(
      "after",
      "\nThe agent uploads a safety snapshot (kind pre-apply), checks the dry-run against the live\nsystem (blocking problems fail the task), then applies atomically. The user area is never touched.",
    )
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const enforce = o.enforce === undefined ? undefined : String(o.enforce);
      if (enforce !== undefined && enforce !== "keep" && enforce !== "remove")
        throw new StrataError("INVALID_ARGUMENT", `--enforce ${enforce} is not keep or remove`);
      const c = client(o);
      const t: Task = await call(
        c.applyLayers(id, {
          ...(enforce ? { enforce } : {}),
          ...(o.atRestart ? { atRestart: true } : {}),
        }),
      );
      if (o.wait) {
        if (!o.json) out(`queued task ${t.id} (apply) for endpoint ${t.endpoint}; waiting for it\n`);
        const done = await waitForTask(c, t.id, o.json === true);
        if (o.json) return printJson(done);
        return void out(showTask(done));
      }
      if (o.json) return printJson(t);
      out(
        `queued task ${t.id}: apply of image ${String(t.params.image).slice(0, 16)} to CVD ${t.cvd} on endpoint ${t.endpoint}\nfollow it with \`strata task show ${t.id} --wait\`\n`,
      );
    });

  cvd
    .command("migrate")
    .description(
      "move the CVD's endpoint to another OS release in place: a new base layer (and its app layers)",
    )
    .argument("<cvd>", "CVD id (cvd_…)")
    .option("--base <layer[@version]>", "the base layer of the new release")
    .option("--app <layer[@version]>", "an app layer captured on the new release (repeat)", collect, [])
    .option("--at-restart", "stage now, swap the system at the agent's next start (the reboot point)")
    .option(
      "--reinstall-user-packages",
      "afterwards, install the new release's version of each user-installed package the endpoint's apt sources provide",
    )
    .option(
      "--confirm",
      "confirm the last migration instead: its old system is no longer kept for a rollback",
    )
    .option("--wait", "wait for the task to end, showing its progress")
    .addHelpText(
      "after",
      "\nThe agent uploads a safety snapshot first and keeps the user area, the user accounts and the\nsoftware the user installed (listed in the task's result as userInstalled). The old system stays\nrestorable with `strata cvd rollback CVD` until `strata cvd migrate CVD --confirm`.\n\nWith --reinstall-user-packages the agent then runs apt in the endpoint's root (apt-get update, then\napt-get install of the new release's versions, non-interactive, keeping changed configuration\nfiles, removing nothing) with the endpoint's own apt sources; the task's result lists each package\nas reinstalled, unavailable or failed (with apt's message) under reinstall, and apt's whole output\nstays on the endpoint (reinstall.log). A failure does not undo the migration. Not with --at-restart.",
    )
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      if (o.confirm) {
        const t: Task = await call(c.confirmMigration(id));
        if (o.json) return printJson(t);
        return void out(
          `migration of task ${t.id} on CVD ${t.cvd} confirmed: its old system is no longer kept\n`,
        );
      }
      if (!o.base)
        throw new StrataError(
          "INVALID_ARGUMENT",
          "give the new release's base layer with --base LAYER[@VERSION]",
          {
            hint: "list base layers with `strata layer ls`",
          },
        );
      const apps = ((o.app as string[] | undefined) ?? []).map((a) => parseLayerRef(a, "--app"));
      const before = await call(c.cvdLayers(id));
      await call(
        c.assignLayers({ target: { cvd: id }, base: parseLayerRef(String(o.base), "--base"), apps }),
      );
      let t: Task;
      try {
        t = await call(
          c.applyLayers(id, {
            migrate: true,
            ...(o.atRestart ? { atRestart: true } : {}),
            ...(o.reinstallUserPackages ? { reinstallUserPackages: true } : {}),
          }),
        );
      } catch (e) {
        // Refused (no applied base, a task running): the CVD keeps the layers it had.
        const prev = before.effective;
        if (prev)
          await c.assignLayers({ target: { cvd: id }, base: prev.base, apps: prev.apps }).catch(() => {});
        throw e;
      }
      await endWith(c, t, o, "migration");
    });

  cvd
    .command("rollback")
    .description(
      "undo the CVD's last layer apply or unconfirmed migration: a system revert to its safety snapshot",
    )
    .argument("<cvd>", "CVD id (cvd_…)")
    .option("--wait", "wait for the task to end, showing its progress")
    .addHelpText(
      "after",
      "\nThe user area is not touched. The assignment the previous image was made from is assigned again,\nso the next apply does not redo what was rolled back.",
    )
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      const t: Task = await call(c.rollbackLayers(id));
      await endWith(c, t, o, "rollback");
    });
}
