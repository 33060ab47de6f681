/**
 * `strata agent run`: the long-running service that uploads the endpoint's
 * protected area into its CVD at the policy's interval, invisibly to the
 * user. It composes the scheduler (when), the watcher (what changed), the
 * throttle (how fast), the control socket (what the user asks) and
 * status.json (what it did). Talking to the server and the upload itself
 * are injected (`fetchSelf`, `uploadOnce`): the composition root wires the
 * real ones, tests pass their own. Rules: docs/design/agent.md.
 */
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import {
  type CompiledPolicy,
  compilePolicy,
  type PolicyContext,
  parsePasswd,
  parseProcSwaps,
  StrataError,
  type UploadPolicy,
} from "@strata/core";
import { type Clock, isAbort, systemClock } from "./clock.js";
import { type ControlRequest, startControlServer } from "./control.js";
import { DEFAULT_MAX_SNOOZE_MS, UploadScheduler } from "./scheduler.js";
import { ensureStateDir } from "./state.js";
import {
  type AgentActivity,
  type AgentStatus,
  type EndpointState,
  isoOrNull,
  readStatus,
  STATUS_VERSION,
  timeOf,
  type UploadRecord,
  writeStatus,
} from "./status.js";
import { type Throttle, TokenBucket } from "./throttle.js";
import { startUserServer, type UserHandler, type UserServer } from "./user-socket.js";
import { ChangeWatcher, type DirtySet } from "./watcher.js";

/** What `GET /agent/self` tells the agent, reduced to what the service needs. */
export interface AgentSelf {
  state: EndpointState;
  /** The CVD's upload policy; null while pending or disabled. */
  policy: UploadPolicy | null;
  /**
   * The CVD, for the upload (its id, the parent snapshot), with the
   * administrator's requests: `snoozedUntil` (a snooze) and
   * `syncRequestedAt` (upload now), acted on when they change.
   */
  cvd?: {
    id: string;
    latestSnapshot: string | null;
    snoozedUntil?: string | null;
    syncRequestedAt?: string | null;
  } | null;
  /** Queued and running tasks of this endpoint, oldest first (restore.md, "Tasks"). */
  tasks?: AgentTaskRef[];
}

/** A task as `GET /agent/self` lists it. */
export interface AgentTaskRef {
  id: string;
  kind: "system" | "full" | "recover" | "files" | "apply";
  state: "queued" | "running";
}

export interface TaskContext {
  /** Aborted when the agent stops: stop promptly (the engine leaves the old or the new state). */
  signal: AbortSignal;
  /** The server's answer the task was found in. */
  self: AgentSelf;
  /** The CVD's policy compiled with this endpoint's homes (null while there is none). */
  policy: CompiledPolicy | null;
  /** The endpoint's root and the agent's state directory. */
  root: string;
  stateDir: string;
  /** The agent-wide bandwidth cap (for the safety upload). */
  throttle: Throttle;
  /** Report progress (flat JSON; restored/total bytes and files, usable): kept in status.json. */
  onProgress: (p: object) => void;
}

/**
 * Runs one task to its end: claims it at the server, runs it, reports
 * progress and the end there. Resolves with a JSON summary for the status,
 * or throws. A task listed as running is one this agent claimed before a
 * restart: run it again (the engine resumes from its journal).
 */
export type RunTask = (task: AgentTaskRef, ctx: TaskContext) => Promise<unknown>;

export type FetchSelf = (opts: { signal: AbortSignal }) => Promise<AgentSelf>;

export interface UploadContext {
  /** Aborted when the agent stops or the user snoozes: stop promptly, leave what is stored. */
  signal: AbortSignal;
  /**
   * What changed since the last successful upload: directories (endpoint
   * paths) to rescan, or "full" to walk everything.
   */
  dirty: DirtySet;
  /**
   * Report progress (any flat JSON object; upload.ts's UploadProgress as
   * is). Cheap to call often: status.json is written at most once a second.
   */
  onProgress: (p: object) => void;
  /** The policy in force for this upload. */
  policy: UploadPolicy;
  /** The server's answer this upload was decided on (fetched just before it). */
  self: AgentSelf;
  /** The agent-wide bandwidth cap, already set to the policy's: pace every request body with it. */
  throttle: Throttle;
}

/** Uploads once; resolves with a JSON summary (snapshot id, counts) for the status, or throws. */
export type UploadOnce = (ctx: UploadContext) => Promise<unknown>;

/** pino-compatible, so a pino logger can be passed as is. */
export interface AgentLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const silentLogger: AgentLogger = { info() {}, warn() {}, error() {} };

export interface RunAgentOptions {
  /** The agent's state directory (created 0700 if missing): control.sock and status.json live here. */
  stateDir: string;
  fetchSelf: FetchSelf;
  uploadOnce: UploadOnce;
  /** Abort to stop: an upload in progress is aborted, then runAgent resolves. */
  signal: AbortSignal;
  clock?: Clock;
  /** The endpoint's root directory; policy paths are relative to it. Default "/". */
  root?: string;
  /** Watch the root for changes (default true). Off: every upload is full. */
  watch?: boolean;
  /**
   * How often the agent asks the server for its state, policy and tasks
   * between uploads. Default 1 min: a revert queued by an administrator
   * starts within a minute.
   */
  selfPollMs?: number;
  /** Longest single sleep, so a wall-clock jump (suspend, resume) is noticed. Default 60 s. */
  maxSleepMs?: number;
  /** First retry delay after a failed upload. Default 30 s. */
  retryBaseMs?: number;
  random?: () => number;
  /** The endpoint's facts for compiling the policy (homes, swap files). Default: read from `root`. */
  policyContext?: (stateDirInEndpoint: string) => PolicyContext;
  logger?: AgentLogger;
  /** Called once the control socket listens and status.json is written. */
  onReady?: (info: { socket: string; status: AgentStatus }) => void;
  /** Runs the tasks the server queues for this endpoint; without it tasks are left for an agent that can. */
  runTask?: RunTask;
  /**
   * Finish or roll back a restore a crash interrupted (the engine's
   * recoverPendingRestore), once, before anything else runs. Its outcome
   * is logged; if it throws, the agent does not start (the root may be
   * between two states).
   */
  recoverPendingRestore?: (stateDir: string, root: string) => Promise<unknown>;
  /**
   * Answers the user socket (user-socket.ts: restore-file, fetch for the
   * endpoint's unprivileged users); without it no user socket is opened.
   */
  userHandler?: (agent: { policy: () => CompiledPolicy | null }) => UserHandler;
}

/** The result of every control command: the status after it, and what it did. */
export interface ControlResult {
  status: AgentStatus;
  /**
   * - status: nothing changed
   * - starting: an upload starts now
   * - queued: an upload runs; one more follows it
   * - checking: the endpoint is not active; the agent asks the server again
   * - snoozed: no upload until status.snoozedUntil (the running one, if any, was stopped)
   * - resumed: the snooze is over
   */
  outcome: "status" | "starting" | "queued" | "checking" | "snoozed" | "resumed";
}

export const DEFAULT_SELF_POLL_MS = 60_000;
const PROGRESS_WRITE_MS = 1000;

function errorOf(e: unknown): { code: string; message: string } {
  if (e instanceof StrataError) return { code: e.code, message: e.message };
  return { code: "INTERNAL", message: (e as Error)?.message ?? String(e) };
}

/** Homes from the endpoint's /etc/passwd; swap files from /proc/swaps when the endpoint is this machine. */
function defaultPolicyContext(root: string): (agentStateDir: string) => PolicyContext {
  return (agentStateDir) => {
    const read = (f: string) => (existsSync(f) ? readFileSync(f, "utf8") : "");
    return {
      homes: parsePasswd(read(path.join(root, "etc/passwd"))),
      agentStateDir,
      swapFiles: root === "/" ? parseProcSwaps(read("/proc/swaps")) : [],
    };
  };
}

class Agent {
  private readonly clock: Clock;
  private readonly log: AgentLogger;
  private readonly root: string;
  private readonly scheduler: UploadScheduler;
  private readonly throttle: TokenBucket;
  private readonly status: AgentStatus;
  private self: AgentSelf | null = null;
  private lastFetchAt: number | null = null;
  /** The server was asked since the last sleep or upload: no need to ask again before an upload. */
  private fresh = false;
  private fetchFailures = 0;
  private refreshWanted = false;
  private watcher: ChangeWatcher | null = null;
  private watchedPolicy = "";
  private upload: AbortController | null = null;
  private task: AbortController | null = null;
  /** A task that failed here, and when: not retried before the backoff. */
  private failedTask: { id: string; at: number } | null = null;
  /** Tasks that ended here: never run twice by this process, whatever a stale answer lists. */
  private readonly endedTasks = new Set<string>();
  private warnedNoRunner = false;
  private kick = new AbortController();
  private lastWrite = 0;

  constructor(private readonly opts: RunAgentOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    this.root = path.resolve(opts.root ?? "/");
    const previous = readStatus(opts.stateDir);
    const now = this.clock.now();
    this.scheduler = new UploadScheduler({
      intervalMinutes: null,
      lastSuccessAt: timeOf(previous?.lastSuccessAt),
      // A snooze outlives a restart; one that has ended is dropped.
      snoozedUntil: (timeOf(previous?.snoozedUntil) ?? 0) > now ? timeOf(previous?.snoozedUntil) : null,
      ...(opts.retryBaseMs !== undefined ? { retryBaseMs: opts.retryBaseMs } : {}),
      ...(opts.random ? { random: opts.random } : {}),
    });
    this.throttle = new TokenBucket({ rateKBps: 0, clock: this.clock });
    this.status = {
      version: STATUS_VERSION,
      pid: process.pid,
      running: true,
      startedAt: new Date(now).toISOString(),
      updatedAt: new Date(now).toISOString(),
      stateDir: opts.stateDir,
      state: "unknown",
      activity: "starting",
      policy: null,
      current: null,
      lastUpload: previous?.lastUpload ?? null,
      lastSuccessAt: previous?.lastSuccessAt ?? null,
      consecutiveFailures: 0,
      nextUploadAt: null,
      snoozedUntil: null,
      syncRequested: false,
      remote: previous?.remote ?? null,
      server: { lastContactAt: null, error: null },
      changes: { watching: false, full: "nothing was watched before the agent started", dirs: 0 },
    };
  }

  // ---- status ----------------------------------------------------------

  private snapshot(): AgentStatus {
    const now = this.clock.now();
    const s = this.scheduler.snapshot(now);
    const st = this.status;
    st.updatedAt = new Date(now).toISOString();
    st.lastSuccessAt = isoOrNull(s.lastSuccessAt);
    st.consecutiveFailures = s.consecutiveFailures;
    st.snoozedUntil = isoOrNull(s.snoozedUntil);
    st.syncRequested = s.syncRequested;
    st.nextUploadAt = s.nextDueAt === null ? null : new Date(Math.max(now, s.nextDueAt)).toISOString();
    st.activity = this.activity(s.snoozedUntil !== null, s.consecutiveFailures > 0);
    const pending: DirtySet = this.watcher?.peek() ?? { kind: "full", reason: "changes are not watched" };
    st.changes = {
      watching: this.watcher !== null,
      full: pending.kind === "full" ? pending.reason : null,
      dirs: pending.kind === "dirs" ? pending.dirs.length : 0,
    };
    return structuredClone(st);
  }

  private activity(snoozed: boolean, failing: boolean): AgentActivity {
    if (!this.status.running) return "stopped";
    if (this.task) return "restoring";
    if (this.upload) return "uploading";
    if (this.status.state === "unknown" && this.lastFetchAt === null) return "starting";
    if (this.status.state !== "active" || !this.status.policy) return "inactive";
    if (snoozed) return "snoozed";
    return failing ? "retrying" : "idle";
  }

  /** Write status.json now (state changes) or at most once a second (progress). */
  private save(force = true): void {
    const now = this.clock.now();
    if (!force && now - this.lastWrite < PROGRESS_WRITE_MS) return;
    this.lastWrite = now;
    try {
      writeStatus(this.opts.stateDir, this.snapshot());
    } catch (e) {
      this.log.error({ err: errorOf(e) }, "cannot write status.json");
    }
  }

  private wake(): void {
    this.kick.abort();
  }

  // ---- server ----------------------------------------------------------

  /** Ask the server for state and policy. False when it could not be reached. */
  private async refresh(): Promise<boolean> {
    const now = this.clock.now();
    this.lastFetchAt = now;
    this.refreshWanted = false;
    let self: AgentSelf;
    try {
      self = await this.opts.fetchSelf({ signal: this.opts.signal });
    } catch (e) {
      if (this.opts.signal.aborted) return false;
      this.fetchFailures++;
      this.status.server.error = errorOf(e).message;
      this.log.warn({ err: errorOf(e) }, "cannot reach the server");
      this.save();
      return false;
    }
    this.fetchFailures = 0;
    this.fresh = true;
    this.status.server = { lastContactAt: new Date(this.clock.now()).toISOString(), error: null };
    await this.apply(self);
    this.save();
    return true;
  }

  private async apply(self: AgentSelf): Promise<void> {
    const before = this.self;
    this.self = self;
    this.status.state = self.state;
    const policy = self.state === "active" ? self.policy : null;
    if (before?.state !== self.state) this.log.info({ state: self.state }, "endpoint state");
    if (!policy) {
      this.status.policy = null;
      this.scheduler.setInterval(null);
      this.scheduler.dropSyncNow();
      await this.stopWatching();
      return;
    }
    this.status.policy = {
      id: policy.id,
      name: policy.name,
      version: policy.version,
      intervalMinutes: policy.intervalMinutes,
      bandwidthLimitKBps: policy.bandwidthLimitKBps,
    };
    this.scheduler.setInterval(policy.intervalMinutes);
    this.throttle.setRate(policy.bandwidthLimitKBps);
    this.applyRemote(self);
    const key = `${policy.id}\0${policy.version}`;
    if (key !== this.watchedPolicy) {
      this.log.info({ policy: policy.id, version: policy.version }, "upload policy");
      this.watchedPolicy = key;
      // New rules protect other files: what was watched under the old ones does not say what changed.
      try {
        await this.startWatching(policy);
      } catch (e) {
        this.log.error({ err: errorOf(e) }, "cannot watch for changes; every upload walks everything");
      }
    }
  }

  /**
   * The administrator's requests (agent.md, "Remote sync and snooze"),
   * acted on when agent/self says something new: a new snooze replaces the
   * one in force (and stops an upload, as the user's does); a snooze the
   * administrator ended (while it still ran) ends the one in force; a new
   * sync request is an upload now, once, even while snoozed.
   */
  private applyRemote(self: AgentSelf): void {
    const now = this.clock.now();
    const seen = this.status.remote ?? { snoozedUntil: null, syncRequestedAt: null };
    const snooze = self.cvd?.snoozedUntil ?? null;
    const sync = self.cvd?.syncRequestedAt ?? null;
    if (snooze !== seen.snoozedUntil) {
      const until = timeOf(snooze);
      if (until !== null && until > now) {
        this.scheduler.snooze(Math.min(until, now + DEFAULT_MAX_SNOOZE_MS), now);
        this.upload?.abort(new Error("snoozed by an administrator; it resumes when the snooze ends"));
        this.log.info({ until: snooze }, "snoozed by an administrator");
      } else if (snooze === null && (timeOf(seen.snoozedUntil) ?? 0) > now) {
        this.scheduler.resume();
        this.log.info({}, "snooze ended by an administrator");
      }
    }
    if (sync !== null && sync !== seen.syncRequestedAt) {
      // Not compared with the last upload's start: the two clocks need not agree.
      // (A status.json lost with a request outstanding costs one more upload.)
      this.scheduler.syncNow();
      this.log.info({ requestedAt: sync }, "sync requested by an administrator");
    }
    this.status.remote = { snoozedUntil: snooze, syncRequestedAt: sync };
  }

  // ---- watcher ---------------------------------------------------------

  private toEndpoint(real: string): string {
    const rel = path.relative(this.root, real);
    return rel === "" ? "/" : `/${rel}`;
  }

  private toReal(endpointPath: string): string {
    return path.join(this.root, endpointPath);
  }

  private async stopWatching(): Promise<void> {
    this.watchedPolicy = "";
    const w = this.watcher;
    this.watcher = null;
    await w?.close();
  }

  private async startWatching(policy: UploadPolicy): Promise<void> {
    await this.watcher?.close();
    this.watcher = null;
    if (this.opts.watch === false) return;
    const stateDir = path.resolve(this.opts.stateDir);
    const stateInEndpoint = path.relative(this.root, stateDir).startsWith("..")
      ? stateDir
      : this.toEndpoint(stateDir);
    let compiled: CompiledPolicy;
    try {
      const ctx = (this.opts.policyContext ?? defaultPolicyContext(this.root))(stateInEndpoint);
      compiled = compilePolicy(policy, ctx);
    } catch (e) {
      this.log.error({ err: errorOf(e) }, "cannot compile the upload policy; every upload walks everything");
      return;
    }
    // Whole subtrees the policy excludes (factory and unprotected rules, macros and globs
    // included) are not even watched: inotify watches are a kernel resource.
    this.watcher = await ChangeWatcher.start({
      roots: [this.root],
      ignoreDirs: [stateDir],
      skipDir: (d) => !compiled.shouldDescend(this.toEndpoint(d)),
      shouldIgnore: (p) => {
        const ep = this.toEndpoint(p);
        return compiled.classify(ep) === "excluded" || p === stateDir || p.startsWith(`${stateDir}/`);
      },
      onError: (e) =>
        this.log.warn({ err: errorOf(e) }, "watcher lost track; the next upload walks everything"),
    });
  }

  private async takeDirty(): Promise<DirtySet> {
    if (!this.watcher) return { kind: "full", reason: "changes are not watched" };
    const set = await this.watcher.take();
    return set.kind === "full" ? set : { kind: "dirs", dirs: set.dirs.map((d) => this.toEndpoint(d)) };
  }

  // ---- uploads -----------------------------------------------------------

  private async runUpload(self: AgentSelf, policy: UploadPolicy): Promise<void> {
    this.scheduler.started();
    this.fresh = false;
    const ac = new AbortController();
    const stop = () => ac.abort(new Error("the agent is stopping"));
    this.opts.signal.addEventListener("abort", stop, { once: true });
    // Registered before anything is awaited, so a snooze from now on stops it.
    this.upload = ac;
    const dirty = await this.takeDirty();
    const polling = new AbortController();
    const poller = this.pollDuringUpload(polling.signal);
    const started = this.clock.now();
    let full = dirty.kind === "full";
    let reason = dirty.kind === "full" ? dirty.reason : null;
    let dirtyDirs = dirty.kind === "dirs" ? dirty.dirs.length : 0;
    let dirsRead: number | undefined;
    this.status.current = {
      startedAt: new Date(started).toISOString(),
      full,
      reason,
      dirtyDirs,
      progress: {},
    };
    this.log.info({ full, reason, dirtyDirs }, "upload starts");
    this.save();
    let record: Omit<UploadRecord, "startedAt" | "finishedAt" | "full" | "reason" | "dirtyDirs">;
    try {
      if (ac.signal.aborted) throw ac.signal.reason;
      const summary = await this.opts.uploadOnce({
        signal: ac.signal,
        dirty,
        policy,
        self,
        throttle: this.throttle,
        onProgress: (p) => {
          if (this.status.current) this.status.current.progress = { ...p };
          this.save(false);
        },
      });
      this.scheduler.succeeded(this.clock.now());
      // The upload may have walked everything after all (it could not trust the set): say what it did.
      const scan = scanOf(summary);
      if (scan) {
        full = scan.full;
        reason = scan.reason;
        dirtyDirs = scan.full ? 0 : scan.dirtyDirs;
        dirsRead = scan.dirsRead;
      }
      record = { result: "ok", error: null, summary: summary ?? null };
      this.log.info({ summary }, "upload done");
    } catch (e) {
      // Whatever it did not finish is still dirty.
      if (dirty.kind === "full") this.watcher?.markFull(dirty.reason);
      else this.watcher?.putBack({ kind: "dirs", dirs: dirty.dirs.map((d) => this.toReal(d)) });
      if (ac.signal.aborted) {
        // Stopped or snoozed: not a failure, no backoff.
        const message = errorOf(ac.signal.reason).message;
        record = { result: "aborted", error: { code: "ABORTED", message }, summary: null };
        this.log.info({ reason: message }, "upload aborted");
      } else {
        this.scheduler.failed(this.clock.now());
        record = { result: "failed", error: errorOf(e), summary: null };
        this.log.error({ err: errorOf(e) }, "upload failed");
      }
    } finally {
      this.opts.signal.removeEventListener("abort", stop);
      this.upload = null;
      this.status.current = null;
      polling.abort();
      await poller;
    }
    this.status.lastUpload = {
      startedAt: new Date(started).toISOString(),
      finishedAt: new Date(this.clock.now()).toISOString(),
      full,
      reason,
      dirtyDirs,
      ...(dirsRead !== undefined ? { dirsRead } : {}),
      ...record,
    };
    this.save();
  }

  /**
   * While an upload runs, the loop does not ask the server; this does, every
   * `selfPollMs`, for the administrator's requests only (a snooze stops the
   * upload, a sync queues one more after it). State, policy and tasks wait
   * for the loop, after the upload.
   */
  private async pollDuringUpload(stop: AbortSignal): Promise<void> {
    const every = this.opts.selfPollMs ?? DEFAULT_SELF_POLL_MS;
    const until = AbortSignal.any([stop, this.opts.signal]);
    for (;;) {
      await this.clock.sleep(every, until).catch(() => {});
      if (until.aborted) return;
      try {
        const self = await this.opts.fetchSelf({ signal: until });
        if (until.aborted) return;
        this.status.server = { lastContactAt: new Date(this.clock.now()).toISOString(), error: null };
        if (self.state === "active" && self.policy) this.applyRemote(self);
        this.save(false);
      } catch (e) {
        if (until.aborted) return;
        this.log.warn({ err: errorOf(e) }, "cannot reach the server during the upload");
      }
    }
  }

  // ---- tasks -------------------------------------------------------------

  /** The next task to run now, if any (only while active; a task that just failed waits out the backoff). */
  private nextTask(): AgentTaskRef | null {
    const self = this.self;
    if (self?.state !== "active" || !self.tasks?.length) return null;
    if (!this.opts.runTask) {
      if (!this.warnedNoRunner)
        this.log.warn({ tasks: self.tasks.length }, "tasks are queued but this agent runs none");
      this.warnedNoRunner = true;
      return null;
    }
    const now = this.clock.now();
    const backoff = this.opts.retryBaseMs ?? 30_000;
    return (
      self.tasks.find(
        (t) =>
          !this.endedTasks.has(t.id) && !(this.failedTask?.id === t.id && now - this.failedTask.at < backoff),
      ) ?? null
    );
  }

  /** The CVD's policy compiled for this endpoint, as last fetched (null before the first answer). */
  currentPolicy(): CompiledPolicy | null {
    return this.compiledPolicy(this.self?.policy ?? null);
  }

  private compiledPolicy(policy: UploadPolicy | null): CompiledPolicy | null {
    if (!policy) return null;
    const stateDir = path.resolve(this.opts.stateDir);
    const stateInEndpoint = path.relative(this.root, stateDir).startsWith("..")
      ? stateDir
      : this.toEndpoint(stateDir);
    try {
      return compilePolicy(
        policy,
        (this.opts.policyContext ?? defaultPolicyContext(this.root))(stateInEndpoint),
      );
    } catch (e) {
      this.log.error({ err: errorOf(e) }, "cannot compile the upload policy for a task");
      return null;
    }
  }

  /** Run one task; uploads wait (the loop is sequential), snoozes do not stop it, stopping the agent does. */
  private async runTaskNow(self: AgentSelf, t: AgentTaskRef): Promise<void> {
    const ac = new AbortController();
    const stop = () => ac.abort(new Error("the agent is stopping"));
    this.opts.signal.addEventListener("abort", stop, { once: true });
    this.task = ac;
    this.fresh = false;
    const started = this.clock.now();
    this.status.task = { id: t.id, kind: t.kind, startedAt: new Date(started).toISOString(), progress: {} };
    this.log.info({ task: t.id, kind: t.kind, resumed: t.state === "running" }, "task starts");
    this.save();
    try {
      const summary = await this.opts.runTask!(t, {
        signal: ac.signal,
        self,
        policy: this.compiledPolicy(self.policy),
        root: this.root,
        stateDir: this.opts.stateDir,
        throttle: this.throttle,
        onProgress: (p) => {
          if (this.status.task) this.status.task.progress = { ...p };
          this.save(false);
        },
      });
      this.failedTask = null;
      this.endedTasks.add(t.id);
      this.status.lastTask = { id: t.id, kind: t.kind, result: "ok", error: null, summary: summary ?? null };
      this.log.info({ task: t.id, summary }, "task done");
    } catch (e) {
      const aborted = ac.signal.aborted;
      if (!aborted) this.failedTask = { id: t.id, at: this.clock.now() };
      this.status.lastTask = {
        id: t.id,
        kind: t.kind,
        result: aborted ? "aborted" : "failed",
        error: errorOf(e),
        summary: null,
      };
      this.log.error({ task: t.id, err: errorOf(e) }, aborted ? "task aborted" : "task failed");
    } finally {
      this.opts.signal.removeEventListener("abort", stop);
      this.task = null;
      this.status.task = null;
      // A restore or an apply rewrote parts of the endpoint (renames of
      // whole trees, staged swaps): the next upload does not rely on what
      // the watcher saw meanwhile.
      this.watcher?.markFull(`task ${t.id} (${t.kind}) changed the endpoint`);
      // The server's list changed (this task ended): ask again before anything else.
      this.refreshWanted = true;
    }
    this.save();
  }

  // ---- control -----------------------------------------------------------

  handle(req: ControlRequest): ControlResult {
    const now = this.clock.now();
    let outcome: ControlResult["outcome"] = "status";
    switch (req.cmd) {
      case "status":
        break;
      case "sync-now":
        this.scheduler.syncNow();
        if (this.upload || this.task) outcome = "queued";
        else if (this.status.state === "active" && this.status.policy) outcome = "starting";
        else {
          outcome = "checking";
          this.refreshWanted = true;
        }
        this.log.info({ outcome }, "sync-now");
        break;
      case "snooze":
        this.scheduler.snooze(now + req.ms, now);
        this.upload?.abort(new Error("snoozed by the user; it resumes when the snooze ends"));
        outcome = "snoozed";
        this.log.info({ until: new Date(now + req.ms).toISOString() }, "snoozed");
        break;
      case "resume":
        this.scheduler.resume();
        outcome = "resumed";
        this.log.info({}, "snooze ended");
        break;
    }
    if (outcome !== "status") {
      this.save();
      this.wake();
    }
    return { status: this.snapshot(), outcome };
  }

  // ---- the loop ----------------------------------------------------------

  private nextFetchAt(): number {
    const poll = this.opts.selfPollMs ?? DEFAULT_SELF_POLL_MS;
    if (this.lastFetchAt === null || this.refreshWanted) return this.clock.now();
    if (this.fetchFailures === 0) return this.lastFetchAt + poll;
    const base = this.opts.retryBaseMs ?? 30_000;
    return this.lastFetchAt + Math.min(poll, base * 2 ** (this.fetchFailures - 1));
  }

  async run(): Promise<void> {
    const { signal } = this.opts;
    while (!signal.aborted) {
      try {
        const now = this.clock.now();
        // A queued task (a restore) comes before uploads, which wait for it.
        const task = this.nextTask();
        if (task && this.self) {
          await this.runTaskNow(this.self, task);
          continue;
        }
        if (this.scheduler.isDue(now)) {
          // Before each upload: the endpoint may have been disabled, or its policy changed.
          if (!this.fresh && !(await this.refresh())) {
            if (signal.aborted) break;
            // The upload could not have reached the server either: back off the same way.
            this.scheduler.started();
            this.scheduler.failed(this.clock.now());
            this.save();
            continue;
          }
          const self = this.self;
          const policy = self?.state === "active" ? self.policy : null;
          if (self && policy && !signal.aborted && this.scheduler.isDue(this.clock.now()))
            await this.runUpload(self, policy);
          continue;
        }
        if (this.nextFetchAt() <= now) {
          await this.refresh();
          continue;
        }
        const due = this.scheduler.nextDueAt(now);
        // A task that failed here is tried again after the backoff (with a fresh answer).
        const retryTaskAt =
          this.failedTask && this.opts.runTask
            ? this.failedTask.at + (this.opts.retryBaseMs ?? 30_000)
            : Number.POSITIVE_INFINITY;
        if (retryTaskAt <= now) {
          this.failedTask = null;
          this.refreshWanted = true;
          continue;
        }
        const until = Math.min(due ?? Number.POSITIVE_INFINITY, this.nextFetchAt(), retryTaskAt);
        const ms = Math.min(Math.max(0, until - now), this.opts.maxSleepMs ?? 60_000);
        this.save();
        if (this.kick.signal.aborted) this.kick = new AbortController();
        this.fresh = false;
        await this.clock.sleep(ms, AbortSignal.any([signal, this.kick.signal])).catch(() => {});
      } catch (e) {
        if (isAbort(e, signal)) break;
        // A bug or a full disk must not end the service: log, pause, go on.
        this.log.error({ err: errorOf(e) }, "agent loop error");
        await this.clock.sleep(this.opts.retryBaseMs ?? 30_000, signal).catch(() => {});
      }
    }
  }

  async stop(): Promise<void> {
    await this.stopWatching();
    this.status.running = false;
    this.save();
  }
}

/** The `scan` an upload summary carries (upload.ts's UploadScan), if it is one. */
function scanOf(
  summary: unknown,
): { full: boolean; reason: string | null; dirtyDirs: number; dirsRead: number } | null {
  const s = (summary as { scan?: unknown } | null)?.scan as Record<string, unknown> | undefined;
  if (!s || typeof s !== "object" || typeof s.full !== "boolean" || typeof s.dirsRead !== "number")
    return null;
  return {
    full: s.full,
    reason: typeof s.reason === "string" ? s.reason : null,
    dirtyDirs: typeof s.dirtyDirs === "number" ? s.dirtyDirs : 0,
    dirsRead: s.dirsRead,
  };
}

/**
 * Run the agent until `signal` aborts. Resolves after a clean stop: the
 * upload in progress aborted, the watcher and control socket closed,
 * status.json saying `running: false`. Rejects only when it cannot start
 * (another agent owns the state directory: LOCKED).
 */
export async function runAgent(opts: RunAgentOptions): Promise<void> {
  ensureStateDir(opts.stateDir);
  const agent = new Agent(opts);
  // Fails (LOCKED) while another agent runs here: then nothing of its state is touched.
  const control = await startControlServer(opts.stateDir, (req) => agent.handle(req));
  let user: UserServer | null = null;
  try {
    if (opts.userHandler)
      user = await startUserServer(opts.stateDir, opts.userHandler({ policy: () => agent.currentPolicy() }));
    if (opts.recoverPendingRestore) {
      // Before anything else: a restore a crash interrupted is finished or rolled back.
      const outcome = await opts.recoverPendingRestore(opts.stateDir, path.resolve(opts.root ?? "/"));
      opts.logger?.info({ outcome }, "pending restore checked");
    }
    const ready = agent.handle({ cmd: "status" }).status;
    writeStatus(opts.stateDir, ready);
    opts.logger?.info({ socket: control.path, stateDir: opts.stateDir }, "strata agent started");
    opts.onReady?.({ socket: control.path, status: ready });
    await agent.run();
  } finally {
    await user?.close();
    await control.close();
    await agent.stop();
    opts.logger?.info({}, "strata agent stopped");
  }
}
