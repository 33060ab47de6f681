/**
 * What an apply must run after the files changed (docs/design/layers.md,
 * "Capture"): derived from the paths a layer adds, changes or removes.
 */
import type { Trigger } from "./types.js";

/** The order triggers run in: the linker cache before units that may start binaries. */
export const TRIGGER_ORDER: readonly Trigger[] = ["ldconfig", "systemd-daemon-reload"];

/** Library directories ldconfig(8) scans, by default or through Debian's ld.so.conf.d. */
const LIB_DIR = /^\/(?:lib[^/]*|usr\/lib[^/]*|usr\/local\/lib[^/]*)\//;
/** ldconfig only looks at files named lib*.so* (and the loader, ld-*.so*). */
const LIB_NAME = /^(?:lib|ld-).*\.so(?:\.|$)/;
const UNIT_DIRS = ["/etc/systemd/system/", "/lib/systemd/system/", "/usr/lib/systemd/system/"];

/**
 * The triggers `paths` need, in `TRIGGER_ORDER`:
 *
 * - `ldconfig`: a shared library (a `lib*.so*` or `ld-*.so*` file at any
 *   depth below /lib*, /usr/lib*, /usr/local/lib*), or /etc/ld.so.conf or
 *   anything below /etc/ld.so.conf.d;
 * - `systemd-daemon-reload`: anything below /etc/systemd/system,
 *   /lib/systemd/system or /usr/lib/systemd/system (units, drop-ins,
 *   `.wants` links).
 */
export function triggersFor(paths: Iterable<string>): Trigger[] {
  let ldconfig = false;
  let reload = false;
  for (const p of paths) {
    if (!ldconfig) {
      if (p === "/etc/ld.so.conf" || p.startsWith("/etc/ld.so.conf.d/")) ldconfig = true;
      else if (LIB_DIR.test(p) && LIB_NAME.test(p.slice(p.lastIndexOf("/") + 1))) ldconfig = true;
    }
    if (!reload && UNIT_DIRS.some((d) => p.startsWith(d))) reload = true;
    if (ldconfig && reload) break;
  }
  return TRIGGER_ORDER.filter((t) => (t === "ldconfig" ? ldconfig : reload));
}
