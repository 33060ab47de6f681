/**
 * The recovery tool's closing report: what the operator must still do
 * before the restored system boots, with the commands, tailored to what
 * the target holds (GRUB for BIOS or EFI, fstab's UUIDs against the disks
 * blkid sees, SSH host keys). A pure reading of the target and of the live
 * system: nothing is changed.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, realpathSync } from "node:fs";
import * as path from "node:path";

export interface ReportStep {
  /** Short id, stable for --json consumers. */
  id: "mount" | "bootloader" | "fstab" | "ssh-host-keys" | "initramfs" | "unmount";
  title: string;
  commands: string[];
  /** Why, or what to look at. */
  notes: string[];
}

export interface FstabCheck {
  /** The fstab line's source, e.g. UUID=…, and where it mounts. */
  spec: string;
  mountPoint: string;
  /** true: a device with it is present now; false: none is; null: not checked (no blkid). */
  found: boolean | null;
}

export interface BootInfo {
  /** The restored system has GRUB (TARGET/boot/grub). */
  grub: boolean;
  /** The restored system boots by EFI (an ESP in its fstab, or grub-efi installed). */
  efi: boolean;
  /** The live system was booted by EFI (/sys/firmware/efi). */
  liveEfi: boolean;
  /** The disk holding the target (e.g. /dev/sda), when it could be found. */
  disk: string | null;
}

export interface ClosingSteps {
  boot: BootInfo;
  fstab: FstabCheck[];
  steps: ReportStep[];
}

const q = (s: string) => (/^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`);

function read(file: string): string | null {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return null;
  }
}

/** fstab entries that name their device by UUID, PARTUUID, LABEL or PARTLABEL. */
export function parseFstab(text: string): { spec: string; mountPoint: string; type: string }[] {
  const out: { spec: string; mountPoint: string; type: string }[] = [];
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const [spec, mountPoint, type] = t.split(/\s+/);
    if (spec && mountPoint) out.push({ spec, mountPoint, type: type ?? "" });
  }
  return out;
}

/** `KEY=value` for every tag of every block device (blkid -o export), or null without blkid. */
function blkidTags(): Set<string> | null {
  const r = spawnSync("blkid", ["-o", "export"], { encoding: "utf8" });
  // Exit 2: no device has a tag. Anything else without output: blkid is missing or failed.
  if (r.error || (r.status !== 0 && r.status !== 2)) return null;
  const tags = new Set<string>();
  for (const line of r.stdout.split("\n")) {
    const m = /^(UUID|PARTUUID|LABEL|PARTLABEL)=(.*)$/.exec(line.trim());
    if (m) tags.add(`${m[1]}=${m[2]}`);
  }
  return tags;
}

/** The mount source of the filesystem holding `dir` (/proc/self/mountinfo), e.g. /dev/sda2. */
function mountSource(dir: string): string | null {
  const info = read("/proc/self/mountinfo");
  if (!info) return null;
  let real: string;
  try {
    real = realpathSync(dir);
  } catch {
    return null;
  }
  let best: { point: string; source: string } | null = null;
  for (const line of info.split("\n")) {
    const f = line.split(" ");
    const sep = f.indexOf("-");
    if (sep < 0 || f.length < sep + 3) continue;
    const point = f[4]!.replace(/\\040/g, " ");
    const inside = real === point || real.startsWith(point === "/" ? "/" : `${point}/`);
    if (inside && (!best || point.length >= best.point.length)) best = { point, source: f[sep + 2]! };
  }
  return best?.source ?? null;
}

/** The whole disk a partition is on (/dev/sda2 → /dev/sda, /dev/nvme0n1p2 → /dev/nvme0n1). */
function diskOf(device: string | null): string | null {
  if (!device?.startsWith("/dev/")) return null;
  const name = path.basename(device);
  const sys = `/sys/class/block/${name}`;
  if (!existsSync(sys)) return null;
  if (!existsSync(`${sys}/partition`)) return existsSync(`${sys}/device`) ? device : null;
  try {
    return `/dev/${path.basename(path.dirname(realpathSync(sys)))}`;
  } catch {
    return null;
  }
}

function hasSshHostKeys(target: string): boolean {
  try {
    return readdirSync(path.join(target, "etc/ssh")).some((n) => /^ssh_host_.*_key$/.test(n));
  } catch {
    return false;
  }
}

/** What is left to do in `target` after a recovery, with the commands. */
export function closingSteps(target: string): ClosingSteps {
  const T = q(target);
  const fstabText = read(path.join(target, "etc/fstab")) ?? "";
  const fstab = parseFstab(fstabText);
  const efiInFstab = fstab.some((e) => e.mountPoint === "/boot/efi");
  const boot: BootInfo = {
    grub: existsSync(path.join(target, "boot/grub")),
    efi:
      efiInFstab ||
      existsSync(path.join(target, "usr/lib/grub/x86_64-efi")) ||
      existsSync(path.join(target, "boot/efi/EFI")),
    liveEfi: existsSync("/sys/firmware/efi"),
    disk: diskOf(mountSource(target)),
  };
  const disk = boot.disk ?? "/dev/DISK";
  const steps: ReportStep[] = [];

  const mounts = ["dev", "proc", "sys"].map((d) => `mount --bind /${d} ${T}/${d}`);
  if (boot.efi && boot.liveEfi) mounts.push(`mount -t efivarfs efivarfs ${T}/sys/firmware/efi/efivars`);
  steps.push({
    id: "mount",
    title: "Give the restored system the live system's /dev, /proc and /sys",
    commands: mounts,
    notes: [],
  });

  if (boot.grub && boot.efi) {
    const esp = fstab.find((e) => e.mountPoint === "/boot/efi");
    steps.push({
      id: "bootloader",
      title: "Install the boot loader (GRUB for EFI)",
      commands: [
        `mount ${esp && !/^(UUID|PARTUUID|LABEL|PARTLABEL)=/.test(esp.spec) ? esp.spec : "/dev/ESP"} ${T}/boot/efi`,
        `chroot ${T} grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian && chroot ${T} update-grub`,
      ],
      notes: [
        "/dev/ESP is the new disk's EFI system partition (type EF00, vfat); its UUID belongs in etc/fstab",
        ...(boot.liveEfi
          ? []
          : [
              "the live system was not booted by EFI: grub-install cannot write the firmware's boot entry; add --removable",
            ]),
      ],
    });
  } else if (boot.grub) {
    steps.push({
      id: "bootloader",
      title: "Install the boot loader (GRUB, BIOS)",
      commands: [`chroot ${T} grub-install ${disk} && chroot ${T} update-grub`],
      notes: boot.disk
        ? [`${disk} is the disk holding ${target}`]
        : ["replace /dev/DISK with the disk the machine boots from (lsblk lists them)"],
    });
  } else {
    steps.push({
      id: "bootloader",
      title: "Install a boot loader",
      commands: [],
      notes: [
        `the restored system has no GRUB (${path.join(target, "boot/grub")} is missing): install the boot loader it uses`,
      ],
    });
  }

  const tags = blkidTags();
  const checks: FstabCheck[] = fstab
    .filter((e) => /^(UUID|PARTUUID|LABEL|PARTLABEL)=/.test(e.spec))
    .map((e) => ({
      spec: e.spec.replace(/^([A-Z]+)="?([^"]*)"?$/, "$1=$2"),
      mountPoint: e.mountPoint,
      found: tags ? tags.has(e.spec.replace(/^([A-Z]+)="?([^"]*)"?$/, "$1=$2")) : null,
    }));
  const missing = checks.filter((c) => c.found !== true);
  if (checks.length) {
    steps.push({
      id: "fstab",
      title:
        missing.length === 0
          ? "etc/fstab: every device it names is present"
          : "Check etc/fstab: the new disk's filesystems have new UUIDs",
      commands: missing.length ? ["blkid", `editor ${T}/etc/fstab`] : [],
      notes: missing.map(
        (c) =>
          `${c.spec} (${c.mountPoint}) ${c.found === false ? "is not on any disk now" : "could not be checked (no blkid)"}`,
      ),
    });
  }
  if (missing.length && existsSync(path.join(target, "etc/initramfs-tools/conf.d/resume"))) {
    steps.push({
      id: "initramfs",
      title: "Point resume at the new swap and rebuild the initramfs",
      commands: [`editor ${T}/etc/initramfs-tools/conf.d/resume`, `chroot ${T} update-initramfs -u`],
      notes: [],
    });
  }

  if (existsSync(path.join(target, "etc/ssh")) && !hasSshHostKeys(target)) {
    steps.push({
      id: "ssh-host-keys",
      title: "Create SSH host keys (a machine's own, never restored)",
      commands: [`chroot ${T} ssh-keygen -A`],
      notes: ["clients that knew the old machine will warn that its host key changed"],
    });
  }

  steps.push({
    id: "unmount",
    title: "Unmount and reboot",
    commands: [
      `umount ${[
        ...(boot.grub && boot.efi ? [`${T}/boot/efi`] : []),
        ...(boot.efi && boot.liveEfi ? [`${T}/sys/firmware/efi/efivars`] : []),
        `${T}/dev`,
        `${T}/proc`,
        `${T}/sys`,
      ].join(" ")}`,
      "reboot",
    ],
    notes: ["at first boot the system gets a new machine id, and the agent continues the CVD"],
  });
  return { boot, fstab: checks, steps };
}

/** The steps as text for a terminal. */
export function formatSteps(s: ClosingSteps): string {
  const lines: string[] = ["What is left to do:"];
  s.steps.forEach((st, i) => {
    lines.push("", `${i + 1}. ${st.title}`);
    for (const c of st.commands) lines.push(`     ${c}`);
    for (const n of st.notes) lines.push(`   (${n})`);
  });
  return `${lines.join("\n")}\n`;
}
