/**
 * `strata agent restore-file` and `strata agent fetch`: what an endpoint's
 * users run themselves, without root. They talk to the running agent over
 * its user socket (packages/agent/src/user-socket.ts); the agent checks who
 * asks. restore-file writes the files in this process, so they are written
 * as the user, with the user's permissions (docs/design/restore.md,
 * "Single files").
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import * as path from "node:path";
import { StrataError } from "@strata/core";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { formatBytes, Progress, printJson } from "../output.js";
import { STATE_HELP, stateDirOf } from "./agent-state.js";

type Opts = GlobalOptions & { state?: string; at?: string; snapshot?: string; to?: string };

export function registerAgentUserCommands(agent: Command): void {
  const rf = agent
    .command("restore-file")
    .description("restore one of your files or folders from this machine's CVD (no root needed)")
    .argument("<path>", "the file or folder, as it was on this machine (absolute, or relative to here)")
    .option("--at <time>", "from the newest snapshot taken at or before TIME (e.g. 2026-11-20T09:00)")
    .option("--snapshot <id>", "from this snapshot (id or unique prefix)")
    .option("--to <dir>", "write it into DIR instead of back in its place")
    .option("--state <dir>", STATE_HELP)
    .addHelpText(
      "after",
      "\nYou may restore only paths in your own user area (your home folder). Without --to the file or\nfolder is put back where it was, replacing what is there now; files you created since are kept.\nExit status 3 when some entries could not be restored (each is named).",
    )
    .action(async (p: string) => {
      const o = rf.optsWithGlobals() as Opts;
      if (o.at && o.snapshot) throw new StrataError("INVALID_ARGUMENT", "give --at or --snapshot, not both");
      const a = await import("@strata/agent");
      const stateDir = stateDirOf(o, a.DEFAULT_STATE_DIR);
      const wanted = path.resolve(p);
      const opened = await a.openUserRestore(stateDir, wanted, {
        ...(o.at ? { at: o.at } : {}),
        ...(o.snapshot ? { snapshot: o.snapshot } : {}),
      });
      const to = path.resolve(o.to ?? path.join(opened.agentRoot, path.posix.dirname(opened.path)));
      const name = path.posix.basename(opened.path);
      // The stage must be on `to`'s filesystem and writable by this user: inside `to`.
      let work: string;
      try {
        work = mkdtempSync(path.join(to, ".strata-restore-user-"));
      } catch (e) {
        await opened.source.close?.();
        throw new StrataError("PERMISSION_DENIED", `cannot write into ${to}: ${(e as Error).message}`, {
          subject: to,
          hint: "give a folder you can write to with --to",
        });
      }
      const progress = new Progress(!o.json);
      try {
        const run = a.runRestore(opened.source, {
          root: "/",
          stateDir: work,
          id: `user-${randomBytes(6).toString("hex")}`,
          kind: "files",
          paths: [`/${name}`],
          to,
          onProgress: (pr) =>
            progress.update(
              `restoring ${opened.path}: ${pr.restoredFiles}/${pr.totalFiles} files, ${formatBytes(pr.restoredBytes)}`,
            ),
          onError: (e) => {
            if (!o.json) process.stderr.write(`strata: ${e.path}: ${e.message}\n`);
          },
        });
        const r = await run.done;
        progress.done();
        const out = {
          path: opened.path,
          restoredTo: path.join(to, name),
          snapshot: opened.source.snapshot.id,
          snapshotTime: opened.source.snapshot.time,
          files: r.files,
          bytes: r.bytes,
          errors: r.errors,
        };
        if (o.json) printJson(out);
        else
          process.stdout.write(
            `restored ${out.path} from snapshot ${out.snapshot.slice(0, 8)} (${out.snapshotTime}) to ${out.restoredTo}: ${r.files} files, ${formatBytes(r.bytes)}\n`,
          );
        if (r.errors.length) process.exitCode = 3;
      } finally {
        progress.done();
        rmSync(work, { recursive: true, force: true });
        await opened.source.close?.();
      }
    });

  const fetch = agent
    .command("fetch")
    .description("during a streaming restore: restore PATH next, before the rest")
    .argument("<path>", "the file or folder (absolute)")
    .option("--state <dir>", STATE_HELP)
    .action(async (p: string) => {
      const o = fetch.optsWithGlobals() as Opts;
      const a = await import("@strata/agent");
      const client = await a.UserSocketClient.connect(stateDirOf(o, a.DEFAULT_STATE_DIR));
      try {
        const r = await client.request<{ path: string; restored: boolean }>({
          cmd: "fetch",
          path: path.resolve(p),
        });
        if (o.json) printJson(r);
        else process.stdout.write(`${r.path} is restored\n`);
      } finally {
        client.close();
      }
    });
}
