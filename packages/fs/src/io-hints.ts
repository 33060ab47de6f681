import { native } from "./native.js";

/**
 * Lower this process to the idle I/O class so background scans and restores
 * yield the disk to the user. Best effort: returns false where not permitted.
 */
export function setIdlePriority(): boolean {
  try {
    native.ioprioIdle();
    return true;
  } catch {
    return false;
  }
}

/**
 * Tell the kernel the pages of this range will not be read again, so a backup
 * pass does not push the user's working set out of the page cache.
 */
export function dropCache(fd: number, offset = 0, len = 0): void {
  try {
    native.fadviseDontneed(fd, offset, len);
  } catch {
    // Advice only: ignoring failure costs cache, never correctness.
  }
}

/**
 * Tell the kernel this range will be read soon: it starts reading it into
 * the page cache in the background, so the read finds it there.
 */
export function readAhead(fd: number, offset: number, len: number): void {
  try {
    native.fadviseWillneed(fd, offset, len);
  } catch {
    // Advice only: ignoring failure costs time, never correctness.
  }
}

/**
 * Allocator settings for Strata's processes (CLI, agent, server), applied
 * once at start, before worker threads exist: at most two glibc malloc
 * arenas. Worker threads hand megabyte buffers to each other all the time;
 * with glibc's default (up to eight arenas per core) each thread's freed
 * buffers stay in its own arena. On the benchmark's first backup of data
 * set A this saved ~15–25 MB of resident memory at no measurable cost;
 * a fixed mmap threshold saved a little more but made every large buffer
 * an mmap/munmap pair and the backup slower, so it is left alone. A value
 * given in the environment (MALLOC_ARENA_MAX) wins. Best effort: returns
 * false where it could not apply it.
 */
export function tuneMemory(env: NodeJS.ProcessEnv = process.env): boolean {
  try {
    return native.mallocTune(env.MALLOC_ARENA_MAX ? 0 : 2, 0, 0);
  } catch {
    return false;
  }
}

let lastTrim = 0;

/**
 * Give freed heap memory back to the kernel (glibc `malloc_trim(0)`, which
 * releases free pages inside every arena, not only at the top). Buffers
 * that move between worker threads are freed in whatever arena they were
 * allocated from, and glibc keeps those pages otherwise: on the first
 * backup of the benchmark's data set A, trimming after each pack lowered
 * the peak resident memory by 35–40 MB (260 → 220 MB). At most once per
 * `minIntervalMs` (a trim walks every arena); best effort.
 */
export function trimMemory(minIntervalMs = 250): void {
  const now = Date.now();
  if (now - lastTrim < minIntervalMs) return;
  lastTrim = now;
  try {
    native.mallocTrim();
  } catch {
    // not glibc, or the addon lacks it: nothing to give back
  }
}
