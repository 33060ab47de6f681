/**
 * A layer apply that replaces the endpoint's kernel, through the real
 * engine (kind `layer`) on a copy of a Debian root, as apps/cli's apply
 * task composes it (docs/design/layers.md, "Triggers", "Kernel hooks before
 * the commit"): /etc/kernel/prerm.d hooks of the kernel the commit removes
 * run while its files are still there, preinst.d hooks of the kernel it
 * adds before that kernel's files land; a failing one keeps the commit from
 * happening; a run stopped after its hooks and resumed does not run them
 * again; after the commit the removed kernel's depmod files and empty module
 * tree go, and the default links /vmlinuz, /initrd.img (and .old) follow
 * the kernels — by Strata's port of linux-update-symlinks, checked against
 * linux-base's own.
 */
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { depmodTargets, initramfsTargets, triggersFor } from "@strata/core";
import type { Repository } from "@strata/repo";
import { debCache, debianRoot, debianRootSkipReason } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  forgetKernelPreCommit,
  kernelLinksUpdate,
  kernelPreCommit,
  kernelVersionCmp,
  prepareLayerApply,
  runPendingTriggers,
  runTriggers,
  savePendingTriggers,
  type TriggerRun,
  updateKernelLinks,
} from "../src/layers/apply.js";
import { hasPendingRestore, recoverPendingRestore, runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { StagedOp } from "../src/restore/types.js";
import { applyPlanOf } from "./fixtures.js";
import { closeTestRepo, createTestRepo, put, settleDirs, snapshotOf, testPolicy } from "./restore-helpers.js";

const bookworm = await debianRoot("bookworm");
const reason =
  debianRootSkipReason("bookworm") ?? (process.getuid?.() === 0 ? undefined : "needs root (chroot)");
/** linux-base (linux-update-symlinks) from the Debian archive: Strata's port is checked against it. */
const linuxBase = await debCache("linux-base-bookworm", ["linux-base"]);
const dir = mkdtempSync(path.join(tmpdir(), "strata-kernel-hooks-"));
chmodSync(dir, 0o755);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A private root from the cached one: hard links; the tools run here replace files by rename. */
function copyRoot(name: string): string {
  const dst = path.join(dir, name);
  execFileSync("cp", ["-al", bookworm!, dst]);
  return dst;
}

const OLD = "6.1.0-98-amd64";
const NEW = "6.1.0-99-amd64";
/** The image times. */
const T1 = 1_710_000_000_000_000_000n;

/** What the previous image brought of the old kernel: the apply removes it (parents first, as the server lists). */
const OLD_PATHS = [
  `/boot/vmlinuz-${OLD}`,
  `/usr/lib/modules/${OLD}`,
  `/usr/lib/modules/${OLD}/kernel`,
  `/usr/lib/modules/${OLD}/kernel/a.ko`,
  `/usr/lib/modules/${OLD}/modules.order`,
];
const NEW_PATHS = [`/boot/vmlinuz-${NEW}`, `/usr/lib/modules/${NEW}/kernel/a.ko`];

const plan = applyPlanOf;

/** The apply of the new kernel's image over an endpoint running the old one. */
const kernelPlan = () =>
  plan(
    {
      triggers: triggersFor(NEW_PATHS),
      initramfs: initramfsTargets(NEW_PATHS)!,
      depmod: depmodTargets(NEW_PATHS)!,
    },
    { removals: OLD_PATHS },
  );

/**
 * A hook that appends to /tmp/order its name, its arguments, DEB_MAINT_PARAMS
 * and whether its kernel's image and modules are in place, then runs `more`.
 */
const hookScript = (name: string, more = "") =>
  [
    "#!/bin/sh",
    'if [ -e "/boot/vmlinuz-$1" ]; then k=present; else k=absent; fi',
    'if [ -e "/usr/lib/modules/$1/kernel/a.ko" ]; then m=present; else m=absent; fi',
    `echo "${name} $* $DEB_MAINT_PARAMS image:$k modules:$m" >> /tmp/order`,
    more,
    "",
  ].join("\n");

/** What DKMS's prerm.d hook does: the modules it built for the kernel go. */
const DKMS_PRERM = [
  'echo "dkms: removing: strata-demo 1.0 ($1)" >&2',
  'rm -rf "/lib/modules/$1/updates/dkms"',
  'rmdir "/lib/modules/$1/updates" 2>/dev/null || true',
].join("\n");

describe.skipIf(reason !== undefined)(`kernel hooks around an apply's commit (${reason ?? "chroot"})`, () => {
  let repo: Repository;
  let image: LocalRestoreSource;
  let n = 0;

  beforeAll(async () => {
    repo = await createTestRepo(path.join(dir, "repo"));
    // The new image: the new kernel (its initramfs is never in a layer).
    const img = path.join(dir, "image");
    put(img, `boot/vmlinuz-${NEW}`, "new kernel\n", { t: T1 });
    put(img, `usr/lib/modules/${NEW}/kernel/a.ko`, "new module\n", { t: T1 });
    put(img, `usr/lib/modules/${NEW}/modules.order`, "kernel/a.ko\n", { t: T1 });
    settleDirs(img, T1);
    image = await snapshotOf(repo, img);
  });
  afterAll(async () => {
    await closeTestRepo(repo);
  });

  /** An endpoint running the old kernel: its image, modules, initramfs, depmod's files, a DKMS module, the links. */
  function endpoint(): { root: string; state: string } {
    const root = copyRoot(`ep-${++n}`);
    const state = path.join(dir, `state-${n}`);
    mkdirSync(state);
    put(root, `boot/vmlinuz-${OLD}`, "old kernel\n");
    put(root, `boot/initrd.img-${OLD}`, "old initramfs\n");
    put(root, `usr/lib/modules/${OLD}/kernel/a.ko`, "old module\n");
    put(root, `usr/lib/modules/${OLD}/modules.order`, "kernel/a.ko\n");
    for (const f of ["modules.dep", "modules.dep.bin", "modules.alias", "modules.symbols.bin"])
      put(root, `usr/lib/modules/${OLD}/${f}`, "depmod's\n");
    put(root, `usr/lib/modules/${OLD}/updates/dkms/strata-demo.ko`, "built by DKMS\n");
    symlinkSync(`boot/vmlinuz-${OLD}`, path.join(root, "vmlinuz"));
    symlinkSync(`boot/vmlinuz-${OLD}`, path.join(root, "vmlinuz.old"));
    symlinkSync(`boot/initrd.img-${OLD}`, path.join(root, "initrd.img"));
    symlinkSync(`boot/initrd.img-${OLD}`, path.join(root, "initrd.img.old"));
    const hook = (d: string, name: string, body: string) =>
      put(root, `etc/kernel/${d}/${name}`, body, { mode: 0o755 });
    hook("prerm.d", "dkms", hookScript("prerm.d/dkms", DKMS_PRERM));
    hook("preinst.d", "check", hookScript("preinst.d/check"));
    hook("postinst.d", "dkms", hookScript("postinst.d/dkms"));
    hook("postrm.d", "cleanup", hookScript("postrm.d/cleanup"));
    // Strata runs these itself (update-initramfs, update-grub): never from the directories.
    hook("prerm.d", "initramfs-tools", hookScript("WRONG prerm.d/initramfs-tools"));
    hook("preinst.d", "zz-update-grub", hookScript("WRONG preinst.d/zz-update-grub"));
    return { root, state };
  }

  const order = (root: string) => {
    const f = path.join(root, "tmp/order");
    const out = existsSync(f) ? readFileSync(f, "utf8").trim().split("\n") : [];
    rmSync(f, { force: true });
    return out;
  };
  const links = (root: string, d = "") =>
    Object.fromEntries(
      ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"].map((l) => {
        try {
          return [l, readlinkSync(path.join(root, d, l))];
        } catch {
          return [l, null];
        }
      }),
    );

  /**
   * What apps/cli's apply task does: prepare, the engine with the hooks
   * before its commit, then the triggers. `stopAfterHooks`: the run stops
   * between the hooks and the commit (what a kill -9 there leaves once the
   * next start rolled the stage back).
   */
  async function apply(
    root: string,
    state: string,
    o: { id?: string; stopAfterHooks?: boolean; skipTriggers?: boolean; atRestart?: boolean } = {},
  ): Promise<TriggerRun[]> {
    const id = o.id ?? "task_k";
    const prep = prepareLayerApply(kernelPlan(), root, { space: null });
    const pre = kernelPreCommit(root, prep.triggerContext, { stateDir: state, id });
    expect(pre).not.toBeNull();
    const run = runRestore(image, {
      root,
      stateDir: state,
      id,
      kind: "layer",
      policy: testPolicy(),
      layer: {
        removable: prep.removable,
        doNotOverride: prep.doNotOverride,
        literals: prep.literals,
        watch: pre!.watch,
        beforeCommit: async (ops: StagedOp[]) => {
          await pre!.beforeCommit(ops);
          if (o.stopAfterHooks) throw new Error("stopped before the commit");
        },
      },
      ...(o.atRestart ? { deferApply: true } : {}),
    });
    const r = await run.done;
    if (o.atRestart) {
      expect(r.pending).toBe(true);
      savePendingTriggers(state, id, prep.triggers, {
        ...prep.triggerContext,
        kernelsBefore: pre!.kernelsBefore,
      });
      return pre!.runs;
    }
    if (o.skipTriggers) return pre!.runs;
    return [
      ...pre!.runs,
      ...(await runTriggers(root, prep.triggers, {
        ...prep.triggerContext,
        kernelsBefore: pre!.kernelsBefore,
        stateDir: state,
      })),
    ];
  }

  it("runs prerm.d while the old kernel is there, preinst.d before the new one lands, then purges and relinks", async () => {
    const { root, state } = endpoint();
    const runs = await apply(root, state);
    const img = (v: string) => `/boot/vmlinuz-${v}`;
    expect(order(root)).toEqual([
      // Before the commit: the old kernel's files are all there, the new one's are not yet.
      `prerm.d/dkms ${OLD} ${img(OLD)} remove image:present modules:present`,
      `preinst.d/check ${NEW} ${img(NEW)} install image:absent modules:absent`,
      // After it: the old kernel is gone, the new one in place.
      `postrm.d/cleanup ${OLD} ${img(OLD)} remove image:absent modules:absent`,
      `postinst.d/dkms ${NEW} ${img(NEW)} configure image:present modules:present`,
    ]);
    expect(runs.map((r) => [r.trigger, r.ok, r.skipped ?? false])).toEqual([
      ["kernel-prerm", true, false],
      ["kernel-preinst", true, false],
      ["kernel-postrm", true, false],
      ["depmod", true, true],
      ["kernel-postinst", true, false],
      ["update-initramfs", true, true],
      ["update-grub", true, true],
    ]);
    expect(runs[0]!.output).toBe(
      `/etc/kernel/prerm.d/dkms ${OLD} ${img(OLD)}: dkms: removing: strata-demo 1.0 (${OLD})`,
    );
    expect(runs[1]!.output).toBe(`/etc/kernel/preinst.d/check ${NEW} ${img(NEW)}`);
    // The old kernel's package would have been purged: the links leave it, its initramfs goes,
    // its postrm.d hooks run, then depmod's files and the emptied module tree go.
    expect(runs[2]!.output.split("\n")).toEqual([
      `I: /vmlinuz.old is now a symlink to boot/vmlinuz-${NEW}`,
      `I: /vmlinuz is now a symlink to boot/vmlinuz-${NEW}`,
      `/boot/initrd.img-${OLD} deleted (no initramfs-tools in the root)`,
      `/etc/kernel/postrm.d/cleanup ${OLD} ${img(OLD)}`,
      `/lib/modules/${OLD}: depmod's files deleted (modules.alias, modules.dep, modules.dep.bin, modules.symbols.bin)`,
      `/lib/modules/${OLD} deleted (empty)`,
    ]);
    expect(runs[4]!.output.split("\n")).toEqual([
      `I: /initrd.img.old is now a symlink to boot/initrd.img-${NEW}`,
      `I: /initrd.img is now a symlink to boot/initrd.img-${NEW}`,
      `/etc/kernel/postinst.d/dkms ${NEW} ${img(NEW)}`,
    ]);
    expect(existsSync(path.join(root, `usr/lib/modules/${OLD}`))).toBe(false);
    expect(existsSync(path.join(root, `boot/initrd.img-${OLD}`))).toBe(false);
    expect(readdirSync(path.join(root, `usr/lib/modules/${NEW}`)).sort()).toEqual([
      "kernel",
      "modules.order",
    ]);
    // As `apt install` of the new kernel then `apt remove` of the old one leave them: the initrd links
    // wait for update-initramfs to build the new kernel's initramfs.
    expect(links(root)).toEqual({
      vmlinuz: `boot/vmlinuz-${NEW}`,
      "vmlinuz.old": `boot/vmlinuz-${NEW}`,
      "initrd.img": `boot/initrd.img-${NEW}`,
      "initrd.img.old": `boot/initrd.img-${NEW}`,
    });
    // The record of the hooks stays until the task is reported.
    expect(existsSync(path.join(state, "kernel-hooks-task_k.json"))).toBe(true);
    forgetKernelPreCommit(state, "task_k");
    expect(existsSync(path.join(state, "kernel-hooks-task_k.json"))).toBe(false);
  });

  it("a failing prerm.d hook stops the hooks after it and the apply: nothing is committed", async () => {
    const { root, state } = endpoint();
    // Sorts before dkms: the hooks after it do not run (run-parts --exit-on-error).
    put(
      root,
      "etc/kernel/prerm.d/a-fails",
      hookScript("prerm.d/a-fails", 'echo "cannot remove $1" >&2\nexit 7'),
      { mode: 0o755 },
    );
    const err = await apply(root, state).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "CONFLICT", subject: "/etc/kernel/prerm.d" });
    expect((err as Error).message).toContain(
      `/etc/kernel/prerm.d/a-fails ${OLD} /boot/vmlinuz-${OLD} failed (exit 7): cannot remove ${OLD}`,
    );
    expect(order(root)).toEqual([
      `prerm.d/a-fails ${OLD} /boot/vmlinuz-${OLD} remove image:present modules:present`,
    ]);
    // The endpoint is as it was: the old kernel and its links, no new kernel, no journal, no stage.
    expect(existsSync(path.join(root, `boot/vmlinuz-${OLD}`))).toBe(true);
    expect(existsSync(path.join(root, `usr/lib/modules/${OLD}/kernel/a.ko`))).toBe(true);
    expect(existsSync(path.join(root, `usr/lib/modules/${OLD}/updates/dkms/strata-demo.ko`))).toBe(true);
    expect(existsSync(path.join(root, `boot/vmlinuz-${NEW}`))).toBe(false);
    expect(links(root).vmlinuz).toBe(`boot/vmlinuz-${OLD}`);
    expect(hasPendingRestore(state)).toBe(false);
    expect(readdirSync(path.join(state, "restore"))).toEqual([]);
  });

  it("a run stopped after its hooks, before the commit, resumes without running them again", async () => {
    const { root, state } = endpoint();
    await expect(apply(root, state, { stopAfterHooks: true })).rejects.toThrow("stopped before the commit");
    expect(order(root).map((l) => l.split(" ")[0])).toEqual(["prerm.d/dkms", "preinst.d/check"]);
    // Rolled back: the old files (less what the hook removed, as after a failed dpkg --remove).
    expect(existsSync(path.join(root, `boot/vmlinuz-${OLD}`))).toBe(true);
    expect(existsSync(path.join(root, `usr/lib/modules/${OLD}/updates`))).toBe(false);
    const runs = await apply(root, state);
    expect(runs.slice(0, 2)).toEqual([
      {
        trigger: "kernel-prerm",
        ok: true,
        output: `/etc/kernel/prerm.d/dkms ${OLD} /boot/vmlinuz-${OLD}: ran before the agent stopped, not run again`,
      },
      {
        trigger: "kernel-preinst",
        ok: true,
        output: `/etc/kernel/preinst.d/check ${NEW} /boot/vmlinuz-${NEW}: ran before the agent stopped, not run again`,
      },
    ]);
    expect(order(root).map((l) => l.split(" ")[0])).toEqual(["postrm.d/cleanup", "postinst.d/dkms"]);
    expect(existsSync(path.join(root, `usr/lib/modules/${OLD}`))).toBe(false);
  });

  it("a run stopped after the commit, before the triggers, resumes with the kernels it saw before", async () => {
    const { root, state } = endpoint();
    await apply(root, state, { skipTriggers: true });
    expect(order(root).map((l) => l.split(" ")[0])).toEqual(["prerm.d/dkms", "preinst.d/check"]);
    expect(existsSync(path.join(root, `boot/vmlinuz-${NEW}`))).toBe(true);
    // The same task again: the engine has nothing to do, the kernels before are the first run's.
    const runs = await apply(root, state);
    expect(runs.map((r) => r.trigger)).toEqual([
      "kernel-postrm",
      "depmod",
      "kernel-postinst",
      "update-initramfs",
      "update-grub",
    ]);
    expect(order(root).map((l) => l.split(" ")[0])).toEqual(["postrm.d/cleanup", "postinst.d/dkms"]);
    expect(links(root).vmlinuz).toBe(`boot/vmlinuz-${NEW}`);
    // Another task (the record forgotten) finds no kernel change: no hook runs.
    forgetKernelPreCommit(state, "task_k");
    const again = await apply(root, state, { id: "task_l" });
    expect(again.map((r) => r.trigger)).toEqual(["depmod", "update-initramfs", "update-grub"]);
    expect(order(root)).toEqual([]);
  });

  it("--at-restart: the hooks run before the commit, the files land (and the triggers run) at the next start", async () => {
    const { root, state } = endpoint();
    const runs = await apply(root, state, { atRestart: true });
    expect(runs.map((r) => r.trigger)).toEqual(["kernel-prerm", "kernel-preinst"]);
    expect(order(root).map((l) => l.split(" ").slice(0, 2).join(" "))).toEqual([
      `prerm.d/dkms ${OLD}`,
      `preinst.d/check ${NEW}`,
    ]);
    // Committed, not applied: the old kernel stays until the restart.
    expect(existsSync(path.join(root, `boot/vmlinuz-${OLD}`))).toBe(true);
    expect(existsSync(path.join(root, `boot/vmlinuz-${NEW}`))).toBe(false);
    // The next start: the roll-forward, then the triggers of the kernels before.
    await recoverPendingRestore(state, root);
    const later = await runPendingTriggers(state, root);
    expect(later.map((r) => r.trigger)).toContain("kernel-postrm");
    expect(order(root).map((l) => l.split(" ")[0])).toEqual(["postrm.d/cleanup", "postinst.d/dkms"]);
    expect(existsSync(path.join(root, `usr/lib/modules/${OLD}`))).toBe(false);
    expect(links(root).vmlinuz).toBe(`boot/vmlinuz-${NEW}`);
  });

  describe.skipIf(linuxBase.reason !== undefined)(
    `the default links, as linux-base's linux-update-symlinks makes them (${linuxBase.reason ?? "linux-base"})`,
    () => {
      /** Each step on both roots: linux-base's program on one, Strata's port on the other. */
      const steps: ["install" | "remove", string][] = [
        ["install", "6.1.0-9-amd64"],
        ["install", "6.1.0-10-amd64"],
        ["install", "6.1.0-9-amd64"],
        ["install", "6.5.0-0.deb12.1-amd64"],
        ["install", "6.6.0-rc3-amd64"],
        ["remove", "6.5.0-0.deb12.1-amd64"],
        ["remove", "6.6.0-rc3-amd64"],
        ["remove", "6.1.0-9-amd64"],
        ["remove", "6.1.0-10-amd64"],
      ];
      for (const inBoot of [false, true])
        it(`${inBoot ? "link_in_boot = yes: in /boot" : "in /"}, step by step`, async () => {
          const real = copyRoot(`links-real-${inBoot}`);
          const ours = copyRoot(`links-ours-${inBoot}`);
          mkdirSync(path.join(real, "tmp/debs"), { recursive: true });
          for (const f of linuxBase.cache!.files) {
            cpSync(f, path.join(real, "tmp/debs", path.basename(f)));
            execFileSync("dpkg-deb", ["-x", f, real]);
          }
          for (const r of [real, ours])
            if (inBoot) writeFileSync(path.join(r, "etc/kernel-img.conf"), "link_in_boot = yes\n");
          const d = inBoot ? "boot" : "";
          for (const [change, v] of steps) {
            for (const r of [real, ours]) {
              if (change === "install") {
                put(r, `boot/vmlinuz-${v}`, "kernel\n");
                // An initramfs for some only: their initrd links go.
                if (!v.includes("rc")) put(r, `boot/initrd.img-${v}`, "initramfs\n");
              } else {
                rmSync(path.join(r, `boot/vmlinuz-${v}`));
                rmSync(path.join(r, `boot/initrd.img-${v}`), { force: true });
              }
            }
            const a = await updateKernelLinks(real, change, v);
            const b = await updateKernelLinks(ours, change, v);
            expect(a.ok, `${change} ${v}: ${a.output.join("; ")}`).toBe(true);
            expect(b.ok).toBe(true);
            expect(links(ours, d), `${change} ${v}`).toEqual(links(real, d));
            // The same messages (linux-base's are prefixed with its command line).
            const prefix = `linux-update-symlinks ${change} ${v} /boot/vmlinuz-${v}: `;
            expect(b.output).toEqual(a.output.map((l) => l.slice(prefix.length)));
          }
          expect(links(ours, d)).toEqual({
            vmlinuz: null,
            "vmlinuz.old": null,
            "initrd.img": null,
            "initrd.img.old": null,
          });
        });
    },
  );
});

describe("kernel versions as linux-base orders them", () => {
  it("numbers as numbers, release candidates before their release", () => {
    const vs = [
      "6.1.0-10-amd64",
      "6.6.0-rc3-amd64",
      "6.1.0-9-amd64",
      "6.6.0-1-amd64",
      "5.10.0-28-amd64",
      "6.6.0",
    ];
    expect([...vs].sort(kernelVersionCmp)).toEqual([
      "5.10.0-28-amd64",
      "6.1.0-9-amd64",
      "6.1.0-10-amd64",
      "6.6.0-rc3-amd64",
      "6.6.0",
      "6.6.0-1-amd64",
    ]);
  });

  it("do_symlinks = no in kernel-img.conf: no link is made", () => {
    const root = mkdtempSync(path.join(tmpdir(), "strata-links-"));
    try {
      mkdirSync(path.join(root, "etc"));
      put(root, "boot/vmlinuz-6.1.0-9-amd64", "kernel\n");
      writeFileSync(path.join(root, "etc/kernel-img.conf"), "do_symlinks = no # the endpoint's\n");
      expect(kernelLinksUpdate(root, "install", "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")).toEqual([]);
      expect(existsSync(path.join(root, "vmlinuz"))).toBe(false);
      rmSync(path.join(root, "etc/kernel-img.conf"));
      expect(kernelLinksUpdate(root, "install", "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")).toEqual([
        "I: /vmlinuz.old is now a symlink to boot/vmlinuz-6.1.0-9-amd64",
        "I: /initrd.img.old is now a symlink to boot/initrd.img-6.1.0-9-amd64",
        "I: /vmlinuz is now a symlink to boot/vmlinuz-6.1.0-9-amd64",
        "I: /initrd.img is now a symlink to boot/initrd.img-6.1.0-9-amd64",
      ]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
