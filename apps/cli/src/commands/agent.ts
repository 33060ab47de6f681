/**
 * `strata agent …`: the endpoint side. `run` is the long-running service
 * (systemd's strata-agent.service); `status`, `sync-now`, `snooze` and
 * `resume` talk to it over its control socket. Enrollment adds its own
 * subcommand (agent-enroll.ts).
 */

import * as path from "node:path";
import type {
  AgentLogger,
  AgentStatus,
  ControlRequest,
  ControlResult,
  DirtySet,
  FetchSelf,
  RestoreRun,
  RunAgentOptions,
  RunTask,
  TaskContext,
  UploadOnce,
} from "@strata/agent";
import { defaultPolicy, parsePolicy, StrataError } from "@strata/core";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { formatBytes, printJson } from "../output.js";
import type { SafetyUpload } from "../restore-task.js";
import { STATE_HELP, stateDirOf } from "./agent-state.js";
import { registerAgentUserCommands } from "./agent-user.js";
import { parseDuration } from "./repo.js";

type Opts = GlobalOptions & { state?: string; root?: string };

/**
 * How `strata agent run` reaches the server and uploads. The integrator
 * sets `connect` once enrollment (client.ts) and the upload (upload.ts)
 * land; until then `run` refuses to start, except in the test mode below.
 */
export interface AgentHooks {
  connect?: (ctx: { stateDir: string; root: string; logger: AgentLogger }) => Promise<AgentWiring>;
}

/** What `strata agent run` hands runAgent besides its own options. */
export interface AgentWiring {
  fetchSelf: FetchSelf;
  uploadOnce: UploadOnce;
  runTask?: RunTask;
  recoverPendingRestore?: (stateDir: string, root: string) => Promise<unknown>;
  userHandler?: RunAgentOptions["userHandler"];
}
export const agentHooks: AgentHooks = {};

/**
 * Test mode, for the CLI's own tests only: `STRATA_AGENT_TEST_UPLOAD=noop`
 * makes `strata agent run` talk to no server (the endpoint is active with
 * the default policy) and upload nothing (each upload succeeds at once and
 * returns `{ noop: true, upload: N }`). Never set it on an endpoint.
 */
export const TEST_UPLOAD_ENV = "STRATA_AGENT_TEST_UPLOAD";

/**
 * How often `strata agent run` asks the server for its state, policy, tasks
 * and an administrator's sync or snooze between uploads (agent.md,
 * "Scheduling"): `STRATA_AGENT_POLL_SECONDS`, 5 to 3600, default 60.
 */
export const POLL_ENV = "STRATA_AGENT_POLL_SECONDS";
function pollSeconds(): number {
  const v = process.env[POLL_ENV];
  if (v === undefined || v === "") return 60;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 5 || n > 3600)
    throw new StrataError("INVALID_ARGUMENT", `${POLL_ENV}=${v}: give whole seconds from 5 to 3600`, {
      hint: "the default, 60, answers an administrator within a minute",
    });
  return n;
}

function noopHooks(): { fetchSelf: FetchSelf; uploadOnce: UploadOnce } {
  const policy = defaultPolicy("test-noop", `test mode (${TEST_UPLOAD_ENV}=noop)`);
  let n = 0;
  return {
    fetchSelf: async () => ({ state: "active", policy }),
    uploadOnce: async ({ onProgress }) => {
      onProgress({ phase: "noop" });
      n++;
      return { noop: true, upload: n };
    },
  };
}

/**
 * The real hooks: the endpoint's state, policy and tasks from `GET
 * /agent/self`, the facts sent again while active (at start, then hourly
 * when they changed: FactsReporter); one protection run (protect.ts) paced by the policy's
 * bandwidth cap; restore tasks (restore.md, "Tasks") run by the engine
 * through RemoteRestoreSource; a pending restore finished at start.
 */
async function serverHooks(ctx: {
  stateDir: string;
  root: string;
  logger: AgentLogger;
}): Promise<AgentWiring> {
  const a = await import("@strata/agent");
  const client = a.endpointClient(ctx.stateDir);
  const facts = new a.FactsReporter({
    gather: () =>
      a.gatherFacts({ root: ctx.root, agentVersion: a.AGENT_VERSION, agentStateDir: ctx.stateDir }),
    send: (f) => client.reportFacts(f),
  });
  /** The restore a task is running (streaming: `strata agent fetch` reaches it). */
  let current: RestoreRun | null = null;
  const protect = (
    signal: AbortSignal,
    pace: TaskContext["throttle"] | null,
    onProgress: (p: object) => void,
    kind?: "pre-restore" | "pre-apply",
    dirty?: DirtySet,
  ) =>
    a.protectOnce({
      stateDir: ctx.stateDir,
      root: ctx.root,
      signal,
      ...(kind ? { kind } : {}),
      ...(dirty ? { dirty } : {}),
      ...(pace ? { pace: (body: AsyncIterable<Buffer>) => a.throttleIterable(body, pace, { signal }) } : {}),
      onProgress: (p) =>
        onProgress({
          files: p.files,
          bytesRead: p.bytesRead,
          bytesSent: p.bytesSent,
          chunksProven: p.chunksProven,
          current: p.current,
        }),
    });
  return {
    fetchSelf: async () => {
      const s = await client.agentSelf();
      if (s.state === "active") {
        // Collections and driver profiles match on these: keep the server's copy current.
        // Not awaited: a queued task (a recover) need not wait for them.
        void facts.report().then(
          (sent) => sent && ctx.logger.info({}, "facts sent"),
          (e: unknown) =>
            ctx.logger.warn({ err: (e as Error).message }, "cannot send the facts; trying again later"),
        );
      }
      return {
        state: s.state,
        policy: s.cvd ? parsePolicy(s.cvd.policy) : null,
        cvd: s.cvd
          ? {
              id: s.cvd.id,
              latestSnapshot: s.cvd.latestSnapshot,
              snoozedUntil: s.cvd.snoozedUntil ?? null,
              syncRequestedAt: s.cvd.syncRequestedAt ?? null,
            }
          : null,
        tasks: s.tasks ?? [],
      };
    },
    uploadOnce: async (u) => {
      const r = await protect(u.signal, u.throttle, u.onProgress, undefined, u.dirty);
      return {
        scan: r.scan,
        snapshot: r.snapshot,
        cvd: r.cvdId,
        files: r.stats.totalFiles,
        changedFiles: r.stats.filesNew + r.stats.filesChanged,
        bytesSent: r.bytesSent,
        chunksSent: r.chunksSent,
        chunksProven: r.chunksProven,
        errors: r.errors.length,
      };
    },
    runTask: async (task, t) => {
      if (task.kind === "apply") {
        const { runApplyTask } = await import("../apply-task.js");
        const o = await runApplyTask(client, task, t, protect);
        if ("skipped" in o) return o;
        return {
          image: o.image,
          pending: o.pending,
          files: o.result.files,
          bytesReceived: o.result.bytesReceived,
          safetySnapshot: o.safetySnapshot,
          ...(o.reinstall
            ? {
                reinstalled: o.reinstall.packages.filter((p) => p.outcome === "reinstalled").length,
                reinstallFailed: o.reinstall.packages.filter((p) => p.outcome === "failed").length,
              }
            : {}),
        };
      }
      const { runRestoreTask } = await import("../restore-task.js");
      // A recover is an administrator bringing this machine back: it does not yield the machine
      // to its (absent) user. Normal priority for the task, idle again after it (agent.md, "Priority").
      const raised = task.kind === "recover" ? a.raisePriority() : null;
      if (raised) {
        for (const err of raised.errors) ctx.logger.warn({ err }, "cannot raise priority for the recover");
        ctx.logger.info({ threads: raised.threads }, "recover runs at normal priority");
      }
      try {
        // The safety upload's file cache vouches for the files it just read (vouch.ts).
        const safety: SafetyUpload = async (signal, pace, onProgress, kind) => {
          const r = await protect(signal, pace, onProgress, kind);
          return { snapshot: r.snapshot, cacheVouch: () => a.agentCacheVouch(ctx.stateDir, r.snapshot) };
        };
        const o = await runRestoreTask(client, task, t, safety, (run) => {
          current = run;
        });
        if ("skipped" in o) return o;
        return {
          snapshot: o.result.snapshot,
          files: o.result.files,
          bytesReceived: o.bytesReceived,
          safetySnapshot: o.safetySnapshot,
        };
      } finally {
        current = null;
        if (raised) {
          const back = raised.restore();
          for (const err of back.errors) ctx.logger.warn({ err }, "cannot lower priority after the recover");
          ctx.logger.info({ threads: back.threads }, "back to idle priority");
        }
      }
    },
    // A restore or an apply staged for this start reaches the disk, then what the apply must run after it.
    recoverPendingRestore: async (stateDir, root) => {
      const outcome = await a.recoverPendingRestore(stateDir, root);
      const triggers = await a.runPendingTriggers(stateDir, root);
      return triggers.length ? { ...outcome, triggers } : outcome;
    },
    userHandler: ({ policy }) => {
      const restore = a.userRestoreHandler({
        root: ctx.root,
        policy,
        open: async (sel, dir) => {
          const self = await client.agentSelf();
          if (!self.cvd)
            throw new StrataError("NOT_FOUND", "this endpoint has no CVD yet: nothing to restore from");
          return a.RemoteRestoreSource.forEndpoint(ctx.stateDir, self.cvd.id, {
            ...(sel.snapshot ? { snapshot: sel.snapshot } : {}),
            ...(sel.at ? { at: isoTime(sel.at) } : {}),
            path: dir,
          });
        },
      });
      return async (req, conn, part) => {
        if (req.cmd !== "fetch") return restore(req, conn, part);
        if (typeof req.path !== "string" || !req.path.startsWith("/"))
          throw new StrataError("INVALID_ARGUMENT", "fetch needs an absolute path");
        const run = current;
        if (!run)
          throw new StrataError("NOT_FOUND", "no restore is running on this endpoint", {
            hint: "fetch is for a streaming restore in progress; see `strata agent status`",
          });
        await run.fetch(req.path);
        return { path: req.path, restored: true };
      };
    },
  };
}

/** A time as the user typed it (2026-11-20T09:00, a date) as RFC 3339. */
function isoTime(at: string): string {
  const t = new Date(at);
  if (Number.isNaN(t.getTime()))
    throw new StrataError("INVALID_ARGUMENT", `${JSON.stringify(at)} is not a time`, {
      hint: "e.g. 2026-11-20T09:00 or 2026-11-20",
    });
  return t.toISOString();
}

/** Log lines on stderr (journald keeps them): text, or one JSON object per line with --json. */
function stderrLogger(json: boolean): AgentLogger {
  const line = (level: string) => (obj: object, msg?: string) => {
    if (json) {
      process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...obj })}\n`);
      return;
    }
    const fields = Object.keys(obj).length ? ` ${JSON.stringify(obj)}` : "";
    process.stderr.write(`strata-agent ${level}: ${msg ?? ""}${fields}\n`);
  };
  return { info: line("info"), warn: line("warn"), error: line("error") };
}

// ---- human output ----------------------------------------------------------

function ago(ms: number): string {
  const a = Math.abs(ms);
  if (a < 60_000) return `${Math.round(a / 1000)} s`;
  if (a < 3_600_000) return `${Math.round(a / 60_000)} min`;
  if (a < 86_400_000) {
    const minutes = Math.round(a / 60_000);
    const h = Math.floor(minutes / 60);
    const m = minutes % 60;
    return m ? `${h} h ${m} min` : `${h} h`;
  }
  return `${(a / 86_400_000).toFixed(1)} d`;
}

/** "14:05:00 (in 57 min)" or "09:00:00 (3 min ago)"; the date too when it is not today. */
export function when(iso: string, now = Date.now()): string {
  const t = new Date(iso);
  const pad = (n: number) => String(n).padStart(2, "0");
  const time = `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
  const sameDay = t.toDateString() === new Date(now).toDateString();
  const date = sameDay ? "" : `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} `;
  const d = t.getTime() - now;
  const rel = Math.abs(d) < 1000 ? "now" : d > 0 ? `in ${ago(d)}` : `${ago(d)} ago`;
  return `${date}${time} (${rel})`;
}

/** One line: what the agent will do next. */
export function whatNext(s: AgentStatus, now = Date.now()): string {
  if (!s.running) return "the agent is not running";
  if (s.current) {
    const p = s.current.progress;
    const parts = [
      typeof p.phase === "string" ? p.phase : undefined,
      typeof p.files === "number" ? `${p.files} files` : undefined,
      typeof p.bytesSent === "number" ? `${formatBytes(p.bytesSent)} sent` : undefined,
    ].filter(Boolean);
    return `uploading now, since ${when(s.current.startedAt, now)}${parts.length ? `: ${parts.join(", ")}` : ""}`;
  }
  if (s.state === "unknown")
    return s.server.error
      ? `cannot reach the server (${s.server.error}); trying again`
      : "asking the server for this endpoint's policy";
  if (s.state === "pending")
    return "waiting for an administrator to approve this endpoint; no uploads until then";
  if (s.state === "disabled") return "this endpoint is disabled on the server; no uploads";
  if (!s.nextUploadAt) return "no upload planned";
  if (s.snoozedUntil)
    return `snoozed until ${when(s.snoozedUntil, now)}; next upload at ${when(s.nextUploadAt, now)}`;
  if (s.consecutiveFailures > 0)
    return `the last ${s.consecutiveFailures > 1 ? `${s.consecutiveFailures} uploads` : "upload"} failed; retrying at ${when(s.nextUploadAt, now)}`;
  return Date.parse(s.nextUploadAt) <= now
    ? "upload starting now"
    : `next upload at ${when(s.nextUploadAt, now)}`;
}

function formatStatus(s: AgentStatus, now = Date.now()): string {
  const rows: [string, string][] = [];
  const p = s.policy;
  rows.push(["agent", `${s.running ? `running (pid ${s.pid})` : "not running"}, endpoint ${s.state}`]);
  if (p)
    rows.push([
      "policy",
      `"${p.name}" v${p.version}: every ${p.intervalMinutes} min, ${p.bandwidthLimitKBps ? `at most ${p.bandwidthLimitKBps} KiB/s` : "no bandwidth cap"}`,
    ]);
  const last = s.lastUpload;
  if (last) {
    const read = last.dirsRead !== undefined ? `, ${last.dirsRead} read` : "";
    const what = last.full
      ? `full walk${last.reason && last.result === "ok" ? ` (${last.reason})` : ""}`
      : `${last.dirtyDirs} changed directories${read}`;
    const err = last.error ? `: ${last.error.message}` : "";
    rows.push(["last upload", `${last.result} at ${when(last.finishedAt, now)}, ${what}${err}`]);
  } else rows.push(["last upload", "none yet"]);
  if (s.lastSuccessAt && last?.result !== "ok") rows.push(["last success", when(s.lastSuccessAt, now)]);
  if (s.snoozedUntil)
    rows.push([
      "snoozed",
      `until ${when(s.snoozedUntil, now)}${s.remote?.snoozedUntil === s.snoozedUntil ? " by an administrator" : ""} (\`strata agent resume\` ends it)`,
    ]);
  if (s.state === "active" && !s.current)
    rows.push([
      "changes",
      s.changes.full
        ? `the next upload walks everything: ${s.changes.full}`
        : `${s.changes.dirs} changed directories since the last upload`,
    ]);
  if (s.server.error) rows.push(["server", `unreachable: ${s.server.error}`]);
  rows.push(["next", whatNext(s, now)]);
  const w = Math.max(...rows.map(([k]) => k.length)) + 1;
  return `${rows.map(([k, v]) => `${`${k}:`.padEnd(w)} ${v}`).join("\n")}\n`;
}

function outcomeLines(r: ControlResult, now = Date.now()): string {
  const s = r.status;
  const lines: string[] = [];
  switch (r.outcome) {
    case "starting":
      lines.push("upload starting now");
      break;
    case "queued":
      lines.push(
        "an upload is running; another one follows right after it, with the changes made since it started",
      );
      break;
    case "checking":
      lines.push(`the endpoint is ${s.state}: asking the server again; the agent uploads once it is active`);
      break;
    case "snoozed":
      lines.push(`uploads snoozed until ${when(s.snoozedUntil ?? s.nextUploadAt ?? "", now)}`);
      if (s.current)
        lines.push(
          "the upload in progress is being stopped; it starts over when the snooze ends, without re-sending what it stored",
        );
      break;
    case "resumed":
      lines.push(`snooze ended; ${whatNext(s, now)}`);
      break;
    case "status":
      lines.push(whatNext(s, now));
  }
  if (s.snoozedUntil && (r.outcome === "starting" || r.outcome === "queued"))
    lines.push(
      `the snooze until ${when(s.snoozedUntil, now)} stays in effect for later uploads (\`strata agent resume\` ends it)`,
    );
  return `${lines.join("\n")}\n`;
}

// ---- commands ---------------------------------------------------------------

async function send(o: Opts, req: ControlRequest): Promise<ControlResult> {
  const agent = await import("@strata/agent");
  const stateDir = stateDirOf(o, agent.DEFAULT_STATE_DIR);
  try {
    return await agent.controlRequest<ControlResult>(stateDir, req);
  } catch (e) {
    if (e instanceof StrataError && e.code === "NOT_FOUND") {
      const last = agent.readStatus(stateDir);
      if (last) {
        const upload = last.lastUpload
          ? `, last upload ${last.lastUpload.result} at ${when(last.lastUpload.finishedAt)}`
          : "";
        throw new StrataError(e.code, `${e.message}; it last ran at ${when(last.updatedAt)}${upload}`, {
          ...(e.hint ? { hint: e.hint } : {}),
          ...(e.subject ? { subject: e.subject } : {}),
        });
      }
    }
    throw e;
  }
}

export function registerAgentCommands(program: Command): Command {
  const agent = program
    .command("agent")
    .description("run and control the endpoint agent (enroll, run, status, sync-now, snooze)");

  const run = agent
    .command("run")
    .description("run the agent service: upload this endpoint's protected area at its policy's interval")
    .option("--state <dir>", STATE_HELP)
    .option("--root <dir>", "the endpoint's root directory (default /; for chroots and tests)")
    .addHelpText(
      "after",
      "\nRuns until SIGTERM or SIGINT, at nice 19 in the idle I/O class. Usually started by systemd\n(strata-agent.service). Logs go to stderr (one JSON object a line with --json). Control it with\n`strata agent status|sync-now|snooze|resume`.",
    )
    .action(async () => {
      const o = run.optsWithGlobals() as Opts;
      const a = await import("@strata/agent");
      const stateDir = stateDirOf(o, a.DEFAULT_STATE_DIR);
      // The root recorded at enrollment unless --root says otherwise.
      const root = path.resolve(o.root ?? a.readState(stateDir)?.root ?? "/");
      const logger = stderrLogger(o.json === true);
      const testMode = process.env[TEST_UPLOAD_ENV];
      let hooks: AgentWiring;
      if (testMode === "noop") {
        logger.warn({ env: TEST_UPLOAD_ENV }, "test mode: no server, no upload");
        hooks = noopHooks();
      } else if (testMode !== undefined) {
        throw new StrataError(
          "INVALID_ARGUMENT",
          `${TEST_UPLOAD_ENV}=${testMode}: the only test mode is "noop"`,
        );
      } else {
        hooks = await (agentHooks.connect ?? serverHooks)({ stateDir, root, logger });
      }
      const prio = a.lowerPriority();
      for (const err of prio.errors) logger.warn({ err }, "cannot lower priority");
      const ac = new AbortController();
      const stop = (sig: string) => {
        logger.info({ signal: sig }, "stopping");
        ac.abort(new Error(`stopped by ${sig}`));
      };
      process.once("SIGTERM", () => stop("SIGTERM"));
      process.once("SIGINT", () => stop("SIGINT"));
      await a.runAgent({
        stateDir,
        root,
        selfPollMs: pollSeconds() * 1000,
        // The no-op upload needs no change list; do not watch a whole machine for it.
        watch: testMode !== "noop",
        signal: ac.signal,
        logger,
        ...hooks,
      });
    });

  const status = agent
    .command("status")
    .description("show what the agent is doing and what it does next")
    .option("--state <dir>", STATE_HELP)
    .action(async () => {
      const o = status.optsWithGlobals() as Opts;
      const r = await send(o, { cmd: "status" });
      if (o.json) printJson(r.status);
      else process.stdout.write(formatStatus(r.status));
    });

  const control = (
    name: string,
    description: string,
    req: (arg?: string) => ControlRequest,
    arg?: string,
  ) => {
    const c = agent.command(name).description(description).option("--state <dir>", STATE_HELP);
    if (arg) c.argument(arg);
    c.action(async (a?: string) => {
      const o = c.optsWithGlobals() as Opts;
      const r = await send(o, req(typeof a === "string" ? a : undefined));
      if (o.json) printJson(r);
      else process.stdout.write(outcomeLines(r));
    });
    return c;
  };
  control("sync-now", "upload now (also during a snooze, which stays in effect for later uploads)", () => ({
    cmd: "sync-now",
  }));
  control(
    "snooze",
    "no uploads for DURATION (e.g. 30m, 2h; at most 24h); stops an upload in progress",
    (d) => {
      const ms = parseDuration(d ?? "");
      if (!(ms > 0))
        throw new StrataError("INVALID_ARGUMENT", "the snooze must last longer than 0", {
          hint: "e.g. 30m or 2h",
        });
      return { cmd: "snooze", ms };
    },
    "<duration>",
  );
  control("resume", "end a snooze now", () => ({ cmd: "resume" }));
  registerAgentUserCommands(agent);
  return agent;
}
