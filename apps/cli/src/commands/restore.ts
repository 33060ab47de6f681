/**
 * Restores from the administrator's side (docs/design/restore.md, "Tasks"
 * and "Single files"), over the stored login (`strata login`):
 *
 * - `strata cvd revert CVD [--snapshot S] [--full] [--wait]`
 * - `strata cvd recover CVD --endpoint E [--snapshot S] [--wait]`
 * - `strata cvd history CVD PATH`
 * - `strata cvd restore-file CVD PATH [--snapshot S | --at TIME] --to DIR`
 * - `strata task list | show ID [--wait] | cancel ID`
 *
 * Handlers fetch data and print it, as text or with --json as JSON.
 */
import { mkdirSync, rmSync } from "node:fs";
import * as path from "node:path";
import { StrataError } from "@strata/core";
import type { CvdBrowse, CvdHistory, ReinstallReport, StrataClient, Task } from "@strata/protocol";
import type { Command } from "commander";
import { formatBytes, isTTY, printJson } from "../output.js";
import { call, client, loginOf, type Opts, table } from "./server.js";

const opts = (cmd: Command) => cmd.optsWithGlobals() as Opts;
const out = (s: string) => process.stdout.write(s);
const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** "42% 1.2 GiB / 2.8 GiB, 120 / 300 files, usable" from a task's progress report. */
export function progressLine(t: Task): string {
  const p = t.progress ?? {};
  const parts: string[] = [];
  const rb = num(p.restoredBytes);
  const tb = num(p.totalBytes);
  if (tb !== null && tb > 0 && rb !== null) {
    const pct = Math.min(100, Math.floor((rb / tb) * 100));
    const w = 20;
    const fill = Math.round((pct / 100) * w);
    parts.push(
      `[${"#".repeat(fill)}${"-".repeat(w - fill)}] ${pct}% ${formatBytes(rb)} / ${formatBytes(tb)}`,
    );
  } else if (rb !== null) parts.push(formatBytes(rb));
  const rf = num(p.restoredFiles);
  const tf = num(p.totalFiles);
  if (rf !== null) parts.push(`${rf}${tf !== null ? ` / ${tf}` : ""} files`);
  if (typeof p.phase === "string") parts.push(p.phase);
  if (p.usable === true) parts.push("usable");
  return `${t.id} ${t.kind} ${t.state}${parts.length ? `: ${parts.join(", ")}` : ""}`;
}

/** A migration's reinstall of user packages, one line each. */
function reinstallLines(r: ReinstallReport): string[] {
  const out = ["  user packages reinstalled from the new release:"];
  if (r.repair)
    out.push(
      `    an interrupted dpkg was finished first (dpkg --configure -a)${r.repair.ok ? "" : `: ${r.repair.message ?? "failed"}`}`,
    );
  if (!r.update.ok) out.push(`    ${r.update.message ?? "apt-get update failed"}`);
  for (const p of r.packages) {
    const what =
      p.outcome === "reinstalled"
        ? `reinstalled ${p.from} → ${p.renamedTo ? `${p.renamedTo} ` : ""}${p.version ?? "?"}`
        : `${p.outcome} (${p.from}): ${p.message ?? ""}`;
    out.push(`    ${p.name}: ${what.split("\n").join("\n      ")}`);
  }
  if (!r.packages.length) out.push("    none (no user-installed package)");
  out.push(`    apt's output: ${r.log} on the endpoint`);
  return out;
}

export function showTask(t: Task): string {
  const lines = [
    `task ${t.id}`,
    `  kind:      ${t.kind}`,
    `  CVD:       ${t.cvd}`,
    `  endpoint:  ${t.endpoint}`,
    `  state:     ${t.state}`,
    t.kind === "apply"
      ? `  image:     ${String(t.params.image ?? "-")}${t.params.enforce && t.params.enforce !== "none" ? ` (enforce ${String(t.params.enforce)})` : ""}${t.params.atRestart ? " at restart" : ""}${t.params.migrate ? ` (OS migration${t.params.reinstallUserPackages ? ", reinstalling user packages" : ""})` : ""}`
      : `  snapshot:  ${String(t.params.snapshot ?? "-")}${t.params.time ? ` (${String(t.params.time)})` : ""}`,
    `  created:   ${t.createdAt} by ${t.createdBy}`,
    `  started:   ${t.startedAt ?? "-"}`,
    `  finished:  ${t.finishedAt ?? "-"}`,
  ];
  if (t.progress) lines.push(`  progress:  ${progressLine(t).replace(/^[^:]*: ?/, "") || "-"}`);
  if (t.result) lines.push(`  result:    ${JSON.stringify(t.result)}`);
  const triggers = t.kind === "apply" ? t.result?.triggers : undefined;
  if (Array.isArray(triggers) && triggers.length) {
    // What ran once the files were in place; a failure did not undo the apply.
    lines.push("  triggers:");
    for (const x of triggers as { trigger: string; ok: boolean; skipped?: boolean; output?: string }[]) {
      const state = x.skipped ? "skipped" : x.ok ? "ok" : "failed";
      const out = (x.output ?? "").split("\n").join("\n      ");
      lines.push(`    ${x.trigger}: ${state}${out ? `: ${out}` : ""}`);
    }
  }
  if (t.kind === "apply" && t.result?.reinstall)
    lines.push(...reinstallLines(t.result.reinstall as ReinstallReport));
  if (t.error) lines.push(`  error:     ${t.error.code}: ${t.error.message}`);
  if (t.state === "queued")
    lines.push(
      `\nthe endpoint's agent picks it up at its next check-in (\`strata agent sync-now\` on it hurries it)`,
    );
  return `${lines.join("\n")}\n`;
}

function taskRows(list: Task[]): string {
  return table([
    ["ID", "KIND", "STATE", "CVD", "ENDPOINT", "CREATED", "PROGRESS"],
    ...list.map((t) => {
      const p = t.progress ?? {};
      const rb = num(p.restoredBytes);
      const tb = num(p.totalBytes);
      return [
        t.id,
        t.kind,
        t.state,
        t.cvd,
        t.endpoint,
        t.createdAt,
        tb ? `${Math.floor(((rb ?? 0) / tb) * 100)}%${p.usable === true ? " usable" : ""}` : "-",
      ];
    }),
  ]);
}

/**
 * Poll a task until it ends, showing its progress (a bar on a terminal, a
 * line at each change otherwise; nothing with --json). Throws when it did
 * not end `done`, so the exit status tells.
 */
export async function waitForTask(c: StrataClient, id: string, json: boolean, pollMs = 1000): Promise<Task> {
  const tty = !json && isTTY();
  let last = "";
  for (;;) {
    const t = await call(c.getTask(id));
    const line = progressLine(t);
    if (!json && line !== last) {
      if (tty) process.stderr.write(`\r\x1b[K${line.slice(0, (process.stderr.columns || 100) - 1)}`);
      else process.stderr.write(`${line}\n`);
      last = line;
    }
    if (t.state === "done" || t.state === "failed" || t.state === "cancelled") {
      if (tty) process.stderr.write("\n");
      if (t.state === "done") return t;
      if (json) {
        // One JSON document: the caller prints the task, whose state and error say why; exit 1.
        process.exitCode = 1;
        return t;
      }
      throw new StrataError(
        t.state === "cancelled" ? "INVALID_ARGUMENT" : ((t.error?.code as "INTERNAL") ?? "INTERNAL"),
        `task ${t.id} ${t.state}${t.error ? `: ${t.error.message}` : ""}`,
        { hint: `see \`strata task show ${t.id}\`` },
      );
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

async function created(c: StrataClient, t: Task, o: Opts): Promise<void> {
  if (o.wait) {
    if (!o.json) out(`queued task ${t.id} (${t.kind}) for endpoint ${t.endpoint}; waiting for it\n`);
    const done = await waitForTask(c, t.id, o.json === true);
    if (o.json) return printJson(done);
    return void out(showTask(done));
  }
  if (o.json) return printJson(t);
  out(
    `queued task ${t.id}: ${t.kind} restore of CVD ${t.cvd} to snapshot ${String(t.params.snapshot).slice(0, 16)} on endpoint ${t.endpoint}\nfollow it with \`strata task show ${t.id} --wait\`\n`,
  );
}

function historyText(h: CvdHistory): string {
  if (!h.snapshots.length) return `CVD ${h.cvd} has no snapshots yet\n`;
  const present = h.snapshots.filter((s) => s.present).length;
  const head = `${h.path} across ${h.snapshots.length} snapshot(s), newest first (${present} hold the folder)\n`;
  if (!h.entries.length) return `${head}no entries\n`;
  const short = (id: string) => id.slice(0, 12);
  const timeOf = new Map(h.snapshots.map((s) => [s.id, s.time]));
  return (
    head +
    table([
      ["NAME", "TYPE", "SIZE", "IN", "LAST SEEN", "FIRST SEEN", "VERSIONS"],
      ...h.entries.map((e) => [
        e.name,
        e.type,
        e.type === "file" ? formatBytes(e.size) : "-",
        `${e.present.length}/${h.snapshots.length}`,
        e.present[0] === 0 ? "latest" : `${short(e.lastSeen)} ${timeOf.get(e.lastSeen) ?? ""}`,
        `${short(e.firstSeen)} ${timeOf.get(e.firstSeen) ?? ""}`,
        String(e.versions),
      ]),
    ]) +
    (h.next ? `older snapshots: --before ${h.next}\n` : "")
  );
}

/** `ls -l`-like: type and mode, owner, size, time, name (→ target). */
function browseText(b: CvdBrowse): string {
  const head = `${b.path} in snapshot ${b.snapshot.id.slice(0, 12)} (${b.snapshot.time}) of ${b.cvd}: ${b.total} entr${b.total === 1 ? "y" : "ies"}\n`;
  if (!b.entries.length) return head;
  const letter: Record<string, string> = {
    dir: "d",
    symlink: "l",
    fifo: "p",
    socket: "s",
    chardev: "c",
    blockdev: "b",
  };
  const perms = (m: number) =>
    [6, 3, 0]
      .map((s, i) => {
        const r = m & (4 << s) ? "r" : "-";
        const w = m & (2 << s) ? "w" : "-";
        const x = m & (1 << s);
        const special = m & (0o4000 >> i);
        const xs =
          i === 2 ? (special ? (x ? "t" : "T") : x ? "x" : "-") : special ? (x ? "s" : "S") : x ? "x" : "-";
        return r + w + xs;
      })
      .join("");
  return (
    head +
    table([
      ["MODE", "UID", "GID", "SIZE", "MODIFIED", "NAME"],
      ...b.entries.map((e) => [
        (letter[e.type] ?? "-") + perms(e.mode),
        String(e.uid),
        String(e.gid),
        e.type === "file" ? formatBytes(e.size) : "-",
        e.mtime ?? "?",
        e.name + (e.target !== undefined ? ` -> ${e.target}` : "") + (e.type === "dir" ? "/" : ""),
      ]),
    ]) +
    (b.truncated ? `first ${b.entries.length} of ${b.total} shown: raise --limit (at most 10000)\n` : "")
  );
}

/** The newest snapshot at or before `at` (an ISO time or a date), for `--at`. */
async function snapshotAt(c: StrataClient, cvd: string, at: string): Promise<string> {
  const t = new Date(at);
  if (Number.isNaN(t.getTime()))
    throw new StrataError("INVALID_ARGUMENT", `--at ${at} is not a time`, {
      hint: "e.g. 2026-03-01T09:00:00Z or 2026-03-01",
    });
  const snaps = await call(c.cvdSnapshots(cvd));
  const hit = snaps.find((s) => new Date(s.time) <= t); // newest first
  if (!hit)
    throw new StrataError("NOT_FOUND", `CVD ${cvd} has no snapshot at or before ${t.toISOString()}`, {
      hint: "list them with `strata cvd snapshots CVD`",
    });
  return hit.id;
}

export function registerRestoreCommands(program: Command): void {
  const cvd = program.commands.find((c) => c.name() === "cvd");
  if (!cvd) throw new Error("register the fleet commands first");

  const revert = cvd
    .command("revert")
    .description("queue a revert of the CVD's endpoint to a snapshot: system-only, or --full")
    .argument("<cvd>", "CVD id (cvd_…)")
    .option("--snapshot <id>", "snapshot id or unique prefix (default: latest)")
    .option("--full", "restore the user area too (default: the machine area only)")
    .option("--wait", "wait for the task to end, showing its progress")
    .addHelpText(
      "after",
      "\nThe endpoint's agent first uploads a safety snapshot (so the revert can itself be reverted),\nthen restores. A system revert never touches the user area.",
    )
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      const t = await call(
        c.revertCvd(id, {
          ...(o.snapshot ? { snapshot: String(o.snapshot) } : {}),
          ...(o.full ? { full: true } : {}),
        }),
      );
      await created(c, t, o);
    });
  void revert;

  cvd
    .command("recover")
    .description("give the CVD to a replacement endpoint and restore it there whole")
    .argument("<cvd>", "CVD id (cvd_…)")
    .requiredOption("--endpoint <id>", "the replacement endpoint (ep_…): newly enrolled, pending")
    .option("--snapshot <id>", "snapshot id or unique prefix (default: latest)")
    .option("--no-streaming", "restore everything before the machine is usable (default: minimal set first)")
    .option("--wait", "wait for the task to end, showing its progress")
    .addHelpText(
      "after",
      "\nThe CVD's previous endpoint is disabled (two machines must not upload into one CVD) and the\nreplacement is approved with the CVD. Needs restore.run, endpoints.approve and endpoints.write.",
    )
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      const t = await call(
        c.recoverCvd(id, {
          endpoint: String(o.endpoint),
          ...(o.snapshot ? { snapshot: String(o.snapshot) } : {}),
          ...(o.streaming === false ? { streaming: false } : {}),
        }),
      );
      await created(c, t, o);
    });

  cvd
    .command("history")
    .description("for a folder, each entry across the CVD's snapshots: when it appeared, changed, vanished")
    .argument("<cvd>", "CVD id (cvd_…)")
    .argument("<path>", "absolute folder path in the snapshots, e.g. /home/alice/docs")
    .option("--limit <n>", "snapshots per page (default 50, at most 500)")
    .option("--before <snapshot>", "continue with the snapshots older than this one")
    .action(async (id: string, p: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const limit = o.limit === undefined ? undefined : Number(o.limit);
      if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= 500))
        throw new StrataError("INVALID_ARGUMENT", `--limit ${String(o.limit)} is not 1-500`);
      const h = await call(
        client(o).cvdHistory(id, {
          path: p,
          ...(limit ? { limit } : {}),
          ...(o.before ? { before: String(o.before) } : {}),
        }),
      );
      if (o.json) return printJson(h);
      out(historyText(h));
    });

  cvd
    .command("browse")
    .description("list a folder of one of the CVD's snapshots (names, types, modes, owners, sizes, times)")
    .argument("<cvd>", "CVD id (cvd_…)")
    .argument("<snapshot>", "latest, a snapshot id or a unique prefix (see `strata cvd snapshots CVD`)")
    .argument("[path]", "absolute folder path in the snapshot", "/")
    .option("--limit <n>", "entries shown, in name order (default 1000, at most 10000)")
    .action(async (id: string, snapshot: string, p: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const limit = o.limit === undefined ? undefined : Number(o.limit);
      if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= 10_000))
        throw new StrataError("INVALID_ARGUMENT", `--limit ${String(o.limit)} is not 1-10000`);
      if (!p.startsWith("/"))
        throw new StrataError("INVALID_ARGUMENT", `${p} is not an absolute path`, {
          hint: `e.g. /${p}`,
        });
      const b = await call(client(o).cvdBrowse(id, { snapshot, path: p, ...(limit ? { limit } : {}) }));
      if (o.json) return printJson(b);
      out(browseText(b));
    });

  cvd
    .command("restore-file")
    .description("restore a file or folder of a CVD's snapshot into a local directory")
    .argument("<cvd>", "CVD id (cvd_…)")
    .argument("<path>", "absolute path in the snapshot (a file or a folder)")
    .requiredOption("--to <dir>", "directory to write it into (PATH /home/a/x gives DIR/x)")
    .option("--snapshot <id>", "snapshot id or unique prefix (default: latest)")
    .option("--at <time>", "the newest snapshot at or before this time")
    .action(async (id: string, p: string, _o, cmd: Command) => {
      const o = opts(cmd);
      if (o.snapshot && o.at) throw new StrataError("INVALID_ARGUMENT", "give --snapshot or --at, not both");
      const c = client(o);
      const snapshot = o.at
        ? await snapshotAt(c, id, String(o.at))
        : o.snapshot
          ? String(o.snapshot)
          : undefined;
      const a = await import("@strata/agent");
      const to = path.resolve(String(o.to));
      mkdirSync(to, { recursive: true });
      // The whole snapshot is opened (restore.run reaches the whole CVD anyway); the engine restores PATH only.
      const source = await a.RemoteRestoreSource.forUser(loginOf(o), id, snapshot ? { snapshot } : {});
      const runId = `files-${Date.now().toString(36)}`;
      const stateDir = path.join(to, `.strata-restore-${runId}`);
      const progressOn = !o.json && isTTY();
      try {
        const run = a.runRestore(source, {
          root: to,
          stateDir,
          id: runId,
          kind: "files",
          paths: [p],
          to,
          onProgress: (pr) => {
            if (progressOn)
              process.stderr.write(
                `\r\x1b[K${pr.phase}: ${pr.restoredFiles}/${pr.totalFiles} files, ${formatBytes(pr.restoredBytes)} / ${formatBytes(pr.totalBytes)}`,
              );
          },
          onError: (e) => process.stderr.write(`\n${e.path}: ${e.message}\n`),
        });
        const r = await run.done;
        if (progressOn) process.stderr.write("\r\x1b[K");
        const result = {
          ...r,
          cvd: id,
          path: p,
          to,
          session: source.session,
          bytesReceived: source.stats.bytesReceived,
        };
        if (o.json) return printJson(result);
        out(
          `restored ${p} of snapshot ${r.snapshot.slice(0, 16)} into ${to}: ${r.files} file(s), ${formatBytes(r.bytes)} (${formatBytes(source.stats.bytesReceived)} received)${r.errors.length ? `, ${r.errors.length} error(s)` : ""}\n`,
        );
        if (r.errors.length) process.exitCode = 1;
      } finally {
        await source.close();
        rmSync(stateDir, { recursive: true, force: true });
      }
    });

  const task = program
    .command("task")
    .description("tasks queued for endpoints (restores, layer applies, rollbacks): list, show, cancel");
  task
    .command("list")
    .alias("ls")
    .description("tasks, newest first")
    .option("--cvd <id>", "only this CVD's")
    .option("--state <state>", "queued, running, done, failed or cancelled")
    .action(async (_o, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(
        client(o).listTasks({
          ...(o.cvd ? { cvd: String(o.cvd) } : {}),
          ...(o.state ? { state: String(o.state) as Task["state"] } : {}),
        }),
      );
      if (o.json) return printJson(list);
      out(list.length ? taskRows(list) : "no tasks\n");
    });
  task
    .command("show")
    .description("show a task: its parameters, progress and result")
    .argument("<id>", "task id (task_…)")
    .option("--wait", "wait for it to end, showing its progress (exit status 1 unless it is done)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      const t = o.wait ? await waitForTask(c, id, o.json === true) : await call(c.getTask(id));
      if (o.json) return printJson(t);
      out(showTask(t));
    });
  task
    .command("cancel")
    .description("cancel a queued task, or stop a running one at its next progress report")
    .argument("<id>", "task id (task_…)")
    .action(async (id: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const t = await call(client(o).cancelTask(id));
      if (o.json) return printJson(t);
      out(`task ${t.id} is ${t.state}\n`);
    });
}
