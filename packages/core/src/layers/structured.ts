/**
 * Paths layers treat specially (docs/design/layers.md): the structured
 * files (merged by entry, never in a layer tree), and the default rule
 * lists — capture noise, base capture, do-not-override — in the rule syntax
 * of upload policies (`{ dir, pattern? }`, see policy.ts), matched by the
 * same code (`compileRules`).
 */
import { type CompiledRules, compileRules, type Rule, type RuleContext, type RuleInput } from "../policy.js";

export type StructuredFileKind = "status" | "passwd" | "group" | "shadow" | "gshadow";

/** The files merged by entry, and the file each one's content comes from. */
export const STRUCTURED_FILE_KINDS: Readonly<Record<string, StructuredFileKind>> = Object.freeze({
  "/var/lib/dpkg/status": "status",
  "/etc/passwd": "passwd",
  "/etc/group": "group",
  "/etc/shadow": "shadow",
  "/etc/gshadow": "gshadow",
});

/**
 * Every structured path: the five files, their `-` backups (shadow's tools
 * write them) and dpkg's `status-old`. None of them is ever in a layer
 * tree; backups and status-old are left to the endpoint's tools.
 */
export const STRUCTURED_FILES: readonly string[] = Object.freeze([
  "/var/lib/dpkg/status",
  "/var/lib/dpkg/status-old",
  "/etc/passwd",
  "/etc/passwd-",
  "/etc/group",
  "/etc/group-",
  "/etc/shadow",
  "/etc/shadow-",
  "/etc/gshadow",
  "/etc/gshadow-",
]);

const STRUCTURED = new Set(STRUCTURED_FILES);

/** `p` (absolute, as in the endpoint's root) is a structured file or one of their backups. */
export function isStructuredPath(p: string): boolean {
  return STRUCTURED.has(p.length > 1 ? p.replace(/\/+$/, "") : p);
}

const freeze = (rules: Rule[]): readonly Rule[] => Object.freeze(rules.map((r) => Object.freeze(r)));
const STRUCTURED_RULES: Rule[] = STRUCTURED_FILES.map((dir) => ({ dir }));

/**
 * A machine's identity (restore.md "Identity files") plus its name and
 * hosts file: never copied from one machine to another.
 */
export const IDENTITY_RULES: readonly Rule[] = freeze([
  { dir: "/etc/machine-id" },
  { dir: "/var/lib/dbus/machine-id" },
  { dir: "/etc/ssh", pattern: "ssh_host_*" },
  { dir: "/etc/hostname" },
  { dir: "/etc/hosts" },
]);

/**
 * The files `depmod` writes into /lib/modules/VER (kmod 30–33). The kernel
 * package's own modules.order, modules.builtin and modules.builtin.modinfo
 * are not among them: they are the kernel's, and depmod reads them.
 */
export const DEPMOD_OUTPUTS: readonly string[] = [
  "modules.*.bin",
  "modules.dep",
  "modules.alias",
  "modules.softdep",
  "modules.weakdep",
  "modules.symbols",
  "modules.devname",
];

/**
 * The default kernel links linux-base's `linux-update-symlinks` keeps
 * (image_dest `/`, or `/boot` with `link_in_boot`; `vmlinux` where the
 * architecture's image is named so).
 */
export const KERNEL_LINKS: readonly string[] = ["/", "/boot/"].flatMap((d) =>
  ["vmlinuz", "vmlinuz.old", "vmlinux", "vmlinux.old", "initrd.img", "initrd.img.old"].map((n) => `${d}${n}`),
);

/**
 * What each endpoint derives itself, after an apply, by a trigger
 * (docs/design/layers.md, "Triggers"): never in a layer tree, never written
 * or deleted by an apply. The initramfs images (built on the reference, they
 * embed its crypttab and resume device: `update-initramfs` builds the
 * endpoint's own) and the alternatives database with its links in
 * /etc/alternatives (layers record alternatives in their manifest and
 * `update-alternatives` registers them, keeping the endpoint's choices).
 * And the index `depmod` writes for each kernel's modules (its own
 * modules and DKMS's may differ from the reference's), and the default
 * kernel links (`KERNEL_LINKS`: /vmlinuz, /initrd.img and their `.old`,
 * also in /boot) that `linux-update-symlinks` points at the endpoint's
 * own newest kernels when a kernel comes or goes. Part of both the
 * capture-noise and the base-capture rules; a base capture drops them even
 * when the administrator's rules do not name them.
 */
export const ENDPOINT_DERIVED_RULES: readonly Rule[] = freeze([
  { dir: "/boot", pattern: "initrd.img-*" },
  ...KERNEL_LINKS.map((dir) => ({ dir })),
  { dir: "/var/lib/dpkg/alternatives" },
  { dir: "/etc/alternatives" },
  ...["/lib/modules/*", "/usr/lib/modules/*"].flatMap((dir) =>
    DEPMOD_OUTPUTS.map((pattern) => ({ dir, pattern })),
  ),
]);

/**
 * What an app capture's diff ignores: logs, caches, package lists, dpkg's
 * lock and trigger bookkeeping, the linker cache (ldconfig rebuilds it on
 * the endpoint), scratch space, what endpoints derive themselves
 * (`ENDPOINT_DERIVED_RULES`) and the structured files (diffed by entry
 * instead). dpkg's locks are named one by one: a `lock*` name pattern
 * would also hide /var/lib/dpkg/info/lockfile-progs.list.
 */
export const CAPTURE_NOISE_RULES: readonly Rule[] = freeze([
  { dir: "/var/log", pattern: "**" },
  { dir: "/var/cache", pattern: "**" },
  { dir: "/var/lib/apt/lists", pattern: "**" },
  { dir: "/var/lib/apt/extended_states" },
  { dir: "/var/lib/dpkg/lock" },
  { dir: "/var/lib/dpkg/lock-frontend" },
  { dir: "/var/lib/dpkg/triggers", pattern: "**" },
  { dir: "/etc/ld.so.cache" },
  { dir: "/var/backups", pattern: "**" },
  { dir: "/tmp", pattern: "**" },
  { dir: "/var/tmp", pattern: "**" },
  ...ENDPOINT_DERIVED_RULES.map((r) => ({ ...r })),
  ...STRUCTURED_RULES,
]);

/**
 * What a base capture drops from the reference snapshot besides the CVD
 * policy's user area: identity, logs and caches, the structured files (they
 * go into the manifest). The agent's state is excluded by every policy, so
 * a snapshot never holds it.
 */
export const BASE_CAPTURE_RULES: readonly Rule[] = freeze([
  ...IDENTITY_RULES.map((r) => ({ ...r })),
  { dir: "/var/log", pattern: "**" },
  { dir: "/var/cache", pattern: "**" },
  { dir: "/var/tmp", pattern: "**" },
  { dir: "/var/lib/apt/lists", pattern: "**" },
  { dir: "/var/backups", pattern: "**" },
  ...ENDPOINT_DERIVED_RULES.map((r) => ({ ...r })),
  ...STRUCTURED_RULES,
]);

/**
 * Paths no layer writes or deletes by default: identity, and what each
 * machine configures for its own disks, network and boot — a reference
 * machine's fstab, crypttab or grub.cfg name its own disks' UUIDs and would
 * leave an endpoint unbootable.
 */
export const DEFAULT_DO_NOT_OVERRIDE: readonly Rule[] = freeze([
  ...IDENTITY_RULES.map((r) => ({ ...r })),
  { dir: "/etc/fstab" },
  { dir: "/etc/crypttab" },
  { dir: "/etc/mailname" },
  { dir: "/etc/resolv.conf" },
  { dir: "/etc/adjtime" },
  { dir: "/etc/krb5.keytab" },
  { dir: "/etc/network/interfaces" },
  { dir: "/etc/network/interfaces.d" },
  { dir: "/etc/NetworkManager/system-connections" },
  { dir: "/etc/netplan" },
  { dir: "/boot/grub/grub.cfg" },
  { dir: "/boot/grub/grubenv" },
  { dir: "/boot/efi" },
  { dir: "/var/lib/systemd/random-seed" },
  { dir: "/var/lib/systemd/credential.secret" },
]);

/**
 * A predicate over absolute paths: covered by one of `rules` (upload
 * policy semantics: a rule also covers the contents of what it matches).
 * Throws INVALID_ARGUMENT for an invalid rule. `compileRules` gives the
 * walker-side tests (`coversBelow`, `mayMatchBelow`) too.
 */
export function ruleMatcher(rules: readonly RuleInput[], ctx: RuleContext = {}): (path: string) => boolean {
  const compiled: CompiledRules = compileRules(rules, ctx);
  return (path) => compiled.matches(path);
}
