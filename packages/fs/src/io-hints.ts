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
