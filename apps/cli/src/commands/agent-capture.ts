/**
 * `strata agent capture start|finish|status|cancel`: record an app layer (or a
 * driver folder) on a reference endpoint (docs/design/layers.md, "App
 * layer"). `start` uploads a capture-pre snapshot and opens the capture on
 * the server; the administrator installs software; `finish` uploads a
 * capture-post snapshot and the server turns the difference into a layer
 * version. The open capture is remembered in STATE/capture.json.
 */
import { existsSync, readFileSync, rmSync } from "node:fs";
import * as path from "node:path";
import { DEFAULT_STATE_DIR, endpointClient, protectOnce, writeFileAtomic } from "@strata/agent";
import { StrataError } from "@strata/core";
import type { CaptureFinishResponse, CaptureInfo } from "@strata/protocol";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { formatBytes, Progress, printJson } from "../output.js";
import { STATE_HELP, stateDirOf } from "./agent-state.js";

const CAPTURE_FILE = "capture.json";

interface OpenCapture {
  id: string;
  cvd: string;
  preSnapshot: string;
  startedAt: string;
}

function readOpen(stateDir: string): OpenCapture | null {
  const f = path.join(stateDir, CAPTURE_FILE);
  if (!existsSync(f)) return null;
  try {
    return JSON.parse(readFileSync(f, "utf8")) as OpenCapture;
  } catch (e) {
    throw new StrataError("DATA_CORRUPT", `${f} is not readable: ${(e as Error).message}`, {
      subject: f,
      hint: "run `strata agent capture cancel` and start again",
    });
  }
}

type Opts = GlobalOptions & { state?: string; root?: string };

/** One upload of the given kind with progress on a terminal. */
async function uploadKind(o: Opts, kind: "capture-pre" | "capture-post") {
  const progress = new Progress(!o.json);
  const r = await protectOnce({
    stateDir: stateDirOf(o, DEFAULT_STATE_DIR),
    ...(o.root ? { root: o.root } : {}),
    kind,
    onProgress: (p) =>
      progress.update(
        `${kind === "capture-pre" ? "pre-scan" : "post-scan"}: ${p.files} files, ${formatBytes(p.bytesRead)} read, ${formatBytes(p.bytesSent)} sent  ${p.current}`,
      ),
    onError: (e) => {
      progress.done();
      if (!o.json) process.stderr.write(`warning: ${e.path}: ${e.message}\n`);
    },
  });
  progress.done();
  if (r.errors.length)
    throw new StrataError(
      "IO_ERROR",
      `${r.errors.length} files could not be read during the ${kind === "capture-pre" ? "pre" : "post"}-scan (first: ${r.errors[0]!.path}: ${r.errors[0]!.message})`,
      { subject: r.errors[0]!.path, hint: "a capture must see every file; fix them and run the step again" },
    );
  return r;
}

export function registerAgentCapture(agent: Command): void {
  const capture = agent
    .command("capture")
    .description("record an app layer or driver folder on this (reference) endpoint: start, install, finish");

  const start = capture
    .command("start")
    .description("pre-scan: upload the endpoint's state and open a capture on the server")
    .option("--state <dir>", STATE_HELP)
    .option("--root <dir>", "the endpoint's root directory (default: the one given at enrollment)")
    .addHelpText(
      "after",
      "\nThe endpoint's CVD must be marked reference (`strata cvd reference CVD`). Then install the\nsoftware (e.g. `apt-get install -y jq`) and run `strata agent capture finish --name N`.",
    )
    .action(async () => {
      const o = start.optsWithGlobals() as Opts;
      const stateDir = stateDirOf(o, DEFAULT_STATE_DIR);
      const open = readOpen(stateDir);
      if (open)
        throw new StrataError("ALREADY_EXISTS", `capture ${open.id} is already open on this endpoint`, {
          subject: open.id,
          hint: "finish it with `strata agent capture finish --name N`, or `strata agent capture cancel`",
        });
      const r = await uploadKind(o, "capture-pre");
      const info: CaptureInfo = await endpointClient(stateDir).startCapture({ snapshot: r.snapshot });
      const rec: OpenCapture = {
        id: info.id,
        cvd: info.cvd,
        preSnapshot: info.preSnapshot,
        startedAt: info.createdAt,
      };
      writeFileAtomic(path.join(stateDir, CAPTURE_FILE), `${JSON.stringify(rec, null, 2)}\n`, 0o600);
      if (o.json) return printJson(info);
      process.stdout.write(
        `capture ${info.id} started on ${info.cvd} (pre-scan ${info.preSnapshot.slice(0, 12)}: ${r.stats.totalFiles} files)\n` +
          "install the software now, then run `strata agent capture finish --name NAME [--label V]`\n",
      );
    });

  const finish = capture
    .command("finish")
    .description("post-scan: upload the new state; the server stores the difference as a layer version")
    .requiredOption("--name <name>", "the layer's name (a new layer, or a new version of this one)")
    .option("--label <label>", "the version label, e.g. 1.6 (default: the version number)")
    .option("--kind <kind>", "app or driver", "app")
    .option("--description <text>", "what the layer holds")
    .option("--state <dir>", STATE_HELP)
    .option("--root <dir>", "the endpoint's root directory (default: the one given at enrollment)")
    .action(async () => {
      const o = finish.optsWithGlobals() as Opts & {
        name: string;
        label?: string;
        kind: string;
        description?: string;
      };
      if (o.kind !== "app" && o.kind !== "driver")
        throw new StrataError(
          "INVALID_ARGUMENT",
          `--kind must be app or driver, not ${JSON.stringify(o.kind)}`,
        );
      const stateDir = stateDirOf(o, DEFAULT_STATE_DIR);
      const open = readOpen(stateDir);
      if (!open)
        throw new StrataError("NOT_FOUND", "no capture is open on this endpoint", {
          hint: "start one with `strata agent capture start`",
        });
      const r = await uploadKind(o, "capture-post");
      const done: CaptureFinishResponse = await endpointClient(stateDir).finishCapture(open.id, {
        snapshot: r.snapshot,
        name: o.name,
        kind: o.kind,
        ...(o.label ? { label: o.label } : {}),
        ...(o.description ? { description: o.description } : {}),
      });
      rmSync(path.join(stateDir, CAPTURE_FILE), { force: true });
      if (o.json) return printJson(done);
      const c = done.diff.counts;
      const v = done.version;
      process.stdout.write(
        `layer ${done.layer.name} version ${v.version} (${v.label}) captured from ${open.cvd}: ` +
          `${c.added} added, ${c.changed} changed, ${c.removed} removed; ${v.stats.packages} packages, ` +
          `${v.stats.files} files, ${formatBytes(v.stats.bytes)}` +
          `${v.os ? ` (on ${v.os.id} ${v.os.versionId})` : ""}\n`,
      );
    });

  const status = capture
    .command("status")
    .description("show the capture open on this endpoint, if any")
    .option("--state <dir>", STATE_HELP)
    .action(async () => {
      const o = status.optsWithGlobals() as Opts;
      const open = readOpen(stateDirOf(o, DEFAULT_STATE_DIR));
      if (o.json) return printJson({ open });
      process.stdout.write(
        open
          ? `capture ${open.id} open since ${open.startedAt} (pre-scan ${open.preSnapshot.slice(0, 12)})\n`
          : "no capture is open\n",
      );
    });

  const cancel = capture
    .command("cancel")
    .description("cancel the open capture on this endpoint and at the server (nothing is stored as a layer)")
    .option("--state <dir>", STATE_HELP)
    .action(async () => {
      const o = cancel.optsWithGlobals() as Opts;
      const stateDir = stateDirOf(o, DEFAULT_STATE_DIR);
      const open = readOpen(stateDir);
      // The server closes it too; a capture it no longer knows is forgotten here all the same.
      if (open)
        await endpointClient(stateDir)
          .cancelCapture(open.id)
          .catch(() => undefined);
      rmSync(path.join(stateDir, CAPTURE_FILE), { force: true });
      if (o.json) return printJson({ cancelled: open?.id ?? null });
      process.stdout.write(open ? `capture ${open.id} forgotten\n` : "no capture was open\n");
    });
}
