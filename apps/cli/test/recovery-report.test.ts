/**
 * The recovery tool's closing report, read from real target directories:
 * GRUB for BIOS or EFI, fstab UUIDs that no disk has, SSH host keys.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { closingSteps, formatSteps, parseFstab } from "../src/recovery/report.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-recovery-report-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function target(name: string, files: Record<string, string>, dirs: string[] = []): string {
  const t = path.join(dir, name);
  for (const d of dirs) mkdirSync(path.join(t, d), { recursive: true });
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(t, f)), { recursive: true });
    writeFileSync(path.join(t, f), text);
  }
  return t;
}

const UUID = "0b5f4c1e-2f7a-4d7b-9a61-000000000001"; // on no disk of this machine
const step = (s: ReturnType<typeof closingSteps>, id: string) => s.steps.find((x) => x.id === id);

describe("closing report", () => {
  it("BIOS GRUB: bind mounts, grub-install on the disk, fstab UUIDs no disk has, ssh-keygen -A", () => {
    const t = target(
      "bios",
      {
        "etc/fstab": `# <file system> <mount point>\nUUID=${UUID} / ext4 errors=remount-ro 0 1\n/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\n`,
      },
      ["boot/grub", "etc/ssh", "dev", "proc", "sys"],
    );
    const s = closingSteps(t);
    expect(s.boot).toMatchObject({ grub: true, efi: false });
    expect(step(s, "mount")!.commands).toEqual([
      `mount --bind /dev ${t}/dev`,
      `mount --bind /proc ${t}/proc`,
      `mount --bind /sys ${t}/sys`,
    ]);
    const disk = s.boot.disk ?? "/dev/DISK";
    expect(step(s, "bootloader")!.commands).toEqual([
      `chroot ${t} grub-install ${disk} && chroot ${t} update-grub`,
    ]);
    expect(s.fstab).toHaveLength(1);
    expect(s.fstab[0]).toMatchObject({ spec: `UUID=${UUID}`, mountPoint: "/" });
    expect(s.fstab[0]!.found).not.toBe(true); // false, or null where blkid is missing
    expect(step(s, "fstab")!.commands).toEqual(["blkid", `editor ${t}/etc/fstab`]);
    expect(step(s, "ssh-host-keys")!.commands).toEqual([`chroot ${t} ssh-keygen -A`]);
    expect(step(s, "unmount")!.commands[0]).toBe(`umount ${t}/dev ${t}/proc ${t}/sys`);
    const text = formatSteps(s);
    expect(text).toContain(`chroot ${t} grub-install`);
    expect(text).toContain("ssh-keygen -A");
  });

  it("EFI GRUB: the ESP is mounted and grub-install targets EFI; present host keys need nothing", () => {
    const t = target(
      "efi",
      {
        "etc/fstab": `UUID=${UUID} / ext4 defaults 0 1\nUUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n`,
        "etc/ssh/ssh_host_ed25519_key": "k",
      },
      ["boot/grub", "usr/lib/grub/x86_64-efi"],
    );
    const s = closingSteps(t);
    expect(s.boot).toMatchObject({ grub: true, efi: true });
    const boot = step(s, "bootloader")!;
    expect(boot.commands[0]).toBe(`mount /dev/ESP ${t}/boot/efi`);
    expect(boot.commands[1]).toBe(
      `chroot ${t} grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian && chroot ${t} update-grub`,
    );
    expect(s.fstab.map((f) => f.spec)).toEqual([`UUID=${UUID}`, "UUID=ABCD-1234"]);
    expect(step(s, "ssh-host-keys")).toBeUndefined();
    expect(step(s, "unmount")!.commands[0]).toContain(`${t}/boot/efi`);
  });

  it("no GRUB: says so instead of giving a command that cannot work; paths with blanks are quoted", () => {
    const t = target("no grub here", { "etc/hostname": "x\n" });
    const s = closingSteps(t);
    expect(step(s, "bootloader")!.commands).toEqual([]);
    expect(step(s, "bootloader")!.notes[0]).toContain("no GRUB");
    expect(step(s, "mount")!.commands[0]).toBe(`mount --bind /dev '${t}'/dev`);
    expect(step(s, "fstab")).toBeUndefined();
  });

  it("parses fstab: comments and blank lines skipped", () => {
    expect(parseFstab("# c\n\nUUID=a /  ext4 d 0 1\n\tLABEL=b\t/home xfs d 0 2\n")).toEqual([
      { spec: "UUID=a", mountPoint: "/", type: "ext4" },
      { spec: "LABEL=b", mountPoint: "/home", type: "xfs" },
    ]);
  });
});
