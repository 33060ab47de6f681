/**
 * What an apply must run after the files changed (docs/design/layers.md,
 * "Capture" and "Triggers"): derived from the paths a layer adds, changes or
 * removes.
 */
import type { InitramfsTargets, Trigger } from "./types.js";

/**
 * The order triggers run in: the linker cache first (everything after it may
 * start binaries), then the alternatives links, then what a removed kernel
 * leaves (its initramfs, its /etc/kernel/postrm.d hooks: /boot gets room
 * before new initramfs are built), then the modules' index (the initramfs
 * copies modules by it), then a new kernel's /etc/kernel/postinst.d hooks
 * (DKMS builds its modules: after depmod, as Debian's kernel packages run
 * them, and before the initramfs that may include them), then the
 * initramfs (its hooks run binaries and copy libraries), then the boot menu
 * (it lists the kernels and their initramfs), then systemd's view of the
 * units.
 */
export const TRIGGER_ORDER: readonly Trigger[] = [
  "ldconfig",
  "update-alternatives",
  "kernel-postrm",
  "depmod",
  "kernel-postinst",
  "update-initramfs",
  "update-grub",
  "systemd-daemon-reload",
];

/** What a kernel image (/boot/vmlinuz-VER) added, changed or removed asks for. */
const KERNEL_IMAGE_TRIGGERS: readonly Trigger[] = ["kernel-postrm", "kernel-postinst", "update-grub"];

/** Library directories ldconfig(8) scans, by default or through Debian's ld.so.conf.d. */
const LIB_DIR = /^\/(?:lib[^/]*|usr\/lib[^/]*|usr\/local\/lib[^/]*)\//;
/** ldconfig only looks at files named lib*.so* (and the loader, ld-*.so*). */
const LIB_NAME = /^(?:lib|ld-).*\.so(?:\.|$)/;
const UNIT_DIRS = ["/etc/systemd/system/", "/lib/systemd/system/", "/usr/lib/systemd/system/"];
/** dpkg's alternatives database and the links update-alternatives(1) keeps. */
const ALTERNATIVES_DIRS = ["/var/lib/dpkg/alternatives/", "/etc/alternatives/"];

/** A kernel's own files: its image in /boot and its modules tree. */
const KERNEL_IMAGE = /^\/boot\/vmlinuz-([^/]+)$/;
const KERNEL_MODULES = /^\/(?:usr\/)?lib\/modules\/([^/]+)(?:\/|$)/;
/**
 * What every initramfs holds whatever the kernel: initramfs-tools' own
 * configuration and hooks, and firmware (Debian's firmware packages trigger
 * update-initramfs too: early drivers load it from the initramfs).
 */
const INITRAMFS_DIRS = [
  "/etc/initramfs-tools/",
  "/usr/share/initramfs-tools/",
  "/lib/firmware/",
  "/usr/lib/firmware/",
];
const INITRAMFS_ROOTS = new Set(INITRAMFS_DIRS.map((d) => d.slice(0, -1)));

/**
 * The triggers `paths` need, in `TRIGGER_ORDER`:
 *
 * - `ldconfig`: a shared library (a `lib*.so*` or `ld-*.so*` file at any
 *   depth below /lib*, /usr/lib*, /usr/local/lib*), or /etc/ld.so.conf or
 *   anything below /etc/ld.so.conf.d;
 * - `update-alternatives`: anything below /var/lib/dpkg/alternatives or
 *   /etc/alternatives (a capture names the administrative files of the
 *   groups it changed; the files themselves are never in a layer tree);
 * - `depmod`: anything below /lib/modules/VER or /usr/lib/modules/VER
 *   (a kernel's modules: `depmodTargets`);
 * - `update-initramfs`: what `initramfsTargets` finds;
 * - `kernel-postrm`, `kernel-postinst` and `update-grub`: a kernel image,
 *   /boot/vmlinuz-VER (the kernel hooks run for a kernel the endpoint loses
 *   or gains by the apply, which only the agent knows; GRUB's menu lists
 *   the kernels);
 * - `systemd-daemon-reload`: anything below /etc/systemd/system,
 *   /lib/systemd/system or /usr/lib/systemd/system (units, drop-ins,
 *   `.wants` links).
 */
export function triggersFor(paths: Iterable<string>): Trigger[] {
  const found = new Set<Trigger>();
  for (const p of paths) {
    if (!found.has("ldconfig")) {
      if (p === "/etc/ld.so.conf" || p.startsWith("/etc/ld.so.conf.d/")) found.add("ldconfig");
      else if (LIB_DIR.test(p) && LIB_NAME.test(p.slice(p.lastIndexOf("/") + 1))) found.add("ldconfig");
    }
    if (!found.has("update-alternatives") && ALTERNATIVES_DIRS.some((d) => p.startsWith(d)))
      found.add("update-alternatives");
    if (!found.has("depmod") && modulesVersion(p) !== null) found.add("depmod");
    if (!found.has("update-initramfs") && initramfsPath(p) !== null) found.add("update-initramfs");
    if (!found.has("update-grub") && kernelVersion(KERNEL_IMAGE, p) !== null)
      for (const t of KERNEL_IMAGE_TRIGGERS) found.add(t);
    if (!found.has("systemd-daemon-reload") && UNIT_DIRS.some((d) => p.startsWith(d)))
      found.add("systemd-daemon-reload");
    if (found.size === TRIGGER_ORDER.length) break;
  }
  return TRIGGER_ORDER.filter((t) => found.has(t));
}

/**
 * What an apply runs, in `TRIGGER_ORDER`: the image's recorded triggers and
 * those its removals need (`triggersFor` of the removal set). A layer
 * captured before the kernel hooks were recorded asked for `update-grub`
 * on a kernel image: the kernel hooks come with it.
 */
export function applyTriggers(
  recorded: readonly Trigger[],
  fromRemovals: readonly Trigger[] = [],
): Trigger[] {
  const has = (t: Trigger) => recorded.includes(t) || fromRemovals.includes(t);
  return TRIGGER_ORDER.filter((t) => has(t) || (KERNEL_IMAGE_TRIGGERS.includes(t) && has("update-grub")));
}

/** The version `re` captures from `p` (a kernel image or modules path), null when none. */
function kernelVersion(re: RegExp, p: string): string | null {
  const k = re.exec(p);
  return k && k[1] !== "." && k[1] !== ".." ? k[1]! : null;
}

/** The kernel whose module tree holds `p` (/lib/modules/VER or below, also under /usr), or null. */
const modulesVersion = (p: string) => kernelVersion(KERNEL_MODULES, p);

/** The kernel version a path belongs to, "*" for every kernel's initramfs, null when no initramfs holds it. */
function initramfsPath(p: string): string | null {
  const k = kernelVersion(KERNEL_IMAGE, p) ?? modulesVersion(p);
  if (k) return k;
  if (INITRAMFS_ROOTS.has(p) || INITRAMFS_DIRS.some((d) => p.startsWith(d))) return "*";
  return null;
}

/**
 * The kernels whose module tree `paths` change (/lib/modules/VER/…, also
 * below /usr/lib): `depmod -a VER` rebuilds their index (modules.dep,
 * aliases). Null when none. Versions are sorted.
 */
export function depmodTargets(paths: Iterable<string>): InitramfsTargets | null {
  const kernels = new Set<string>();
  for (const p of paths) {
    const v = modulesVersion(p);
    if (v !== null) kernels.add(v);
  }
  return kernels.size ? { kernels: [...kernels].sort(), all: false } : null;
}

/**
 * Whose initramfs `paths` make stale: the versions of the kernels whose
 * image (/boot/vmlinuz-VER) or modules (/lib/modules/VER/…, also below
 * /usr/lib) they touch, and `all` when they touch initramfs-tools'
 * configuration or hooks (/etc/initramfs-tools, /usr/share/initramfs-tools)
 * or firmware (/lib/firmware, /usr/lib/firmware). Null when none: no
 * `update-initramfs` trigger. Versions are sorted.
 */
export function initramfsTargets(paths: Iterable<string>): InitramfsTargets | null {
  const kernels = new Set<string>();
  let all = false;
  let any = false;
  for (const p of paths) {
    const v = initramfsPath(p);
    if (v === null) continue;
    any = true;
    if (v === "*") all = true;
    else kernels.add(v);
  }
  return any ? { kernels: [...kernels].sort(), all } : null;
}

/** Two targets as one (null when both are). */
export function mergeInitramfsTargets(
  a: InitramfsTargets | null | undefined,
  b: InitramfsTargets | null | undefined,
): InitramfsTargets | null {
  if (!a) return b ? { kernels: [...b.kernels], all: b.all } : null;
  if (!b) return { kernels: [...a.kernels], all: a.all };
  return { kernels: [...new Set([...a.kernels, ...b.kernels])].sort(), all: a.all || b.all };
}
