/**
 * The agent yields the machine to its user: CPU nice 19 and the idle I/O
 * class, for every thread. Both are per thread on Linux and inherited only
 * by threads created afterwards, so this walks /proc/self/task to reach the
 * threads that already exist (libuv's pool, V8's helpers) — call it early,
 * and threads created later inherit it. The systemd unit sets the same
 * (Nice=19, CPUSchedulingPolicy=idle, IOSchedulingClass=idle); this
 * covers `strata agent run` started any other way.
 *
 * One exception (agent.md, "Priority"): a `recover` task, which an
 * administrator started to bring this machine back, runs at normal
 * priority (`raisePriority`), and the agent goes back to idle after it.
 */
import { readdirSync, readFileSync } from "node:fs";
import { setPriority } from "node:os";
import { native } from "@strata/fs";

export const IDLE_NICE = 19;

const IOPRIO_CLASS_SHIFT = 13;
const IOPRIO_CLASS_BE = 2;
/** Best-effort level 4: what a thread at nice 0 gets by default. */
const IOPRIO_NORMAL = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 4;
const SCHED_OTHER = 0;
const SCHED_IDLE = 5;
const IO_CLASSES = ["none", "realtime", "best-effort", "idle"] as const;
export type IoClass = (typeof IO_CLASSES)[number];

export interface ThreadPriority {
  tid: number;
  nice: number;
  ioClass: IoClass;
  /** Scheduling policy: SCHED_IDLE (the systemd unit's) or not. */
  schedIdle: boolean;
}

export interface LowerPriorityResult {
  /** Threads now at nice 19 and in the idle I/O class. */
  threads: number;
  /** What could not be done (best effort: the agent runs anyway). */
  errors: string[];
}

function threadIds(): number[] {
  try {
    return readdirSync("/proc/self/task")
      .map(Number)
      .filter((n) => Number.isInteger(n) && n > 0);
  } catch {
    return [];
  }
}

/** Nice 19 and idle I/O for every thread of this process. Never throws. */
export function lowerPriority(): LowerPriorityResult {
  const errors: string[] = [];
  const tids = threadIds();
  for (const tid of tids.length ? tids : [0]) {
    try {
      setPriority(tid, IDLE_NICE);
    } catch (e) {
      // A thread that exited meanwhile (ESRCH) is not an error.
      if ((e as { code?: string }).code !== "ESRCH" && !/ESRCH/.test(String(e)))
        errors.push(`nice of thread ${tid}: ${(e as Error).message}`);
    }
  }
  try {
    native.ioprioIdle();
  } catch (e) {
    errors.push(`I/O class idle: ${(e as Error).message}`);
  }
  const now = readPriorities();
  return {
    threads: now.filter((t) => t.nice === IDLE_NICE && t.ioClass === "idle").length,
    errors,
  };
}

/** nice and I/O class of each thread, from /proc and ioprio_get. */
export function readPriorities(): ThreadPriority[] {
  const out: ThreadPriority[] = [];
  for (const tid of threadIds()) {
    try {
      // Field 19 is nice; the command name (field 2) may contain spaces and
      // parentheses, so count from the last ")".
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, "latin1");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const nice = Number(fields[19 - 3]);
      const ioClass = IO_CLASSES[native.ioprioGet(tid) >> IOPRIO_CLASS_SHIFT] ?? "none";
      out.push({ tid, nice, ioClass, schedIdle: native.schedPolicy(tid) === SCHED_IDLE });
    } catch {
      // The thread exited between readdir and read.
    }
  }
  return out;
}

export interface RaisedPriority {
  /** Threads now at nice 0, not in the idle I/O class. */
  threads: number;
  /** What could not be done (best effort: the task runs anyway, at whatever priority it has). */
  errors: string[];
  /** Back to idle: nice 19, the idle I/O class, and SCHED_IDLE when the process had it. Never throws. */
  restore(): LowerPriorityResult;
}

/**
 * Normal priority for every thread (nice 0, best-effort I/O, SCHED_OTHER)
 * while a task the machine's recovery waits for runs; threads created
 * meanwhile (the restore's workers) inherit it. Needs root (CAP_SYS_NICE)
 * to lower a nice value. Never throws.
 */
export function raisePriority(): RaisedPriority {
  const errors: string[] = [];
  let wasSchedIdle = false;
  try {
    wasSchedIdle = native.schedPolicy(0) === SCHED_IDLE;
    if (wasSchedIdle) native.schedSetAll(SCHED_OTHER);
  } catch (e) {
    errors.push(`scheduling policy: ${(e as Error).message}`);
  }
  const tids = threadIds();
  for (const tid of tids.length ? tids : [0]) {
    try {
      setPriority(tid, 0);
    } catch (e) {
      if ((e as { code?: string }).code !== "ESRCH" && !/ESRCH/.test(String(e)))
        errors.push(`nice of thread ${tid}: ${(e as Error).message}`);
    }
  }
  try {
    native.ioprioSet(IOPRIO_NORMAL);
  } catch (e) {
    errors.push(`I/O class best-effort: ${(e as Error).message}`);
  }
  return {
    threads: readPriorities().filter((t) => t.nice === 0 && t.ioClass !== "idle").length,
    errors,
    restore: () => {
      const back: string[] = [];
      if (wasSchedIdle) {
        try {
          native.schedSetAll(SCHED_IDLE);
        } catch (e) {
          back.push(`scheduling policy idle: ${(e as Error).message}`);
        }
      }
      const r = lowerPriority();
      return { threads: r.threads, errors: [...back, ...r.errors] };
    },
  };
}
