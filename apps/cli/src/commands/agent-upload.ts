/**
 * `strata agent upload`: one upload of the protected area now, in the
 * foreground, with progress — what the running agent does at each interval
 * (the first one centralizes the endpoint). For a first centralization by
 * hand, for scripts and cron, and for tests.
 */
import { DEFAULT_STATE_DIR, protectOnce } from "@strata/agent";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { formatBytes, Progress, printJson } from "../output.js";

export function registerAgentUpload(agent: Command): void {
  const cmd = agent
    .command("upload")
    .description("upload the protected area to this endpoint's CVD now, in the foreground")
    .option("--state <dir>", "the agent's state directory", DEFAULT_STATE_DIR)
    .option("--root <dir>", "the endpoint's root directory (default: the one given at enrollment)")
    .addHelpText(
      "after",
      "\nOnly what the server lacks is sent: chunks any endpoint already stored are proved, not sent,\nand an interrupted upload resumes where it stopped. Exit status 3: uploaded, but some files\ncould not be read (they are listed).",
    )
    .action(async () => {
      const o = cmd.optsWithGlobals() as GlobalOptions & { state: string; root?: string };
      const progress = new Progress(!o.json);
      const r = await protectOnce({
        stateDir: o.state,
        ...(o.root ? { root: o.root } : {}),
        onProgress: (p) =>
          progress.update(
            `${p.files} files, ${formatBytes(p.bytesRead)} read, ${formatBytes(p.bytesSent)} sent, ${p.chunksProven} proved  ${p.current}`,
          ),
        onError: (e) => {
          progress.done();
          if (!o.json) process.stderr.write(`warning: ${e.path}: ${e.message}\n`);
        },
      });
      progress.done();
      if (r.errors.length) process.exitCode = 3;
      if (o.json) return printJson({ ...r, policy: r.policy.name });
      process.stdout.write(
        `snapshot ${r.snapshot.slice(0, 12)} of ${r.cvdId}${r.resumed ? " (resumed session)" : ""}: ` +
          `${r.stats.totalFiles} files, ${formatBytes(r.stats.totalBytes)}; ` +
          `${r.stats.filesNew + r.stats.filesChanged} new or changed; ` +
          `sent ${formatBytes(r.bytesSent)} (${r.chunksSent} chunks, ${r.treesSent} trees), ${r.chunksProven} chunks proved\n`,
      );
      if (r.errors.length)
        process.stdout.write(`${r.errors.length} files could not be read (listed above)\n`);
    });
}
