/**
 * The triggers an apply runs once the files are in place (layers/apply.ts,
 * docs/design/layers.md "Triggers"), on real Debian roots in a chroot:
 * alternatives registered by the endpoint's own update-alternatives, by
 * dpkg's rules (auto mode takes the best priority, the endpoint's manual
 * choice survives, a layer's manual choice applies where the endpoint made
 * none, a removed alternative leaves), update-initramfs for the right
 * kernels (a recording stand-in: a minbase root has no kernel), depmod with
 * kmod installed from the Debian archive on a compiled module,
 * update-grub (noted as skipped where the root has no GRUB), and the
 * /etc/kernel/postinst.d and postrm.d hooks of a kernel an apply adds or
 * removes (fabricated hooks and stand-ins that record what ran, in order).
 */
import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import {
  composeAlternatives,
  depmodTargets,
  diffAlternatives,
  initramfsTargets,
  triggersFor,
} from "@strata/core";
import { debCache, debianRoot, debianRootSkipReason } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  prepareLayerApply,
  readAlternatives,
  runPendingTriggers,
  runTriggers,
  savePendingTriggers,
} from "../src/layers/apply.js";
import { applyPlanOf } from "./fixtures.js";

const bookworm = await debianRoot("bookworm");
const reason =
  debianRootSkipReason("bookworm") ?? (process.getuid?.() === 0 ? undefined : "needs root (chroot)");
/** kmod (depmod) for the root: minbase has none. */
const kmod = await debCache("kmod-bookworm", ["kmod", "libkmod2", "libssl3"]);
/** A real (tiny) ELF module is compiled: depmod reads its .modinfo. */
const gcc = spawnSync("gcc", ["--version"], { stdio: "ignore" }).status === 0;
const kmodReason = kmod.reason ?? (gcc ? undefined : "needs gcc (to build a test kernel module)");
const dir = mkdtempSync(path.join(tmpdir(), "strata-layer-triggers-"));
chmodSync(dir, 0o755);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A private root from the cached one: hard links (cheap), except what the
 * tools run here may write in place — /var/log (update-alternatives appends
 * to its log) and ldconfig's caches. Everything else they change (the
 * alternatives' administrative files and links) is replaced by rename,
 * which never reaches the cached root's inodes.
 */
function copyRoot(name: string): string {
  const dst = path.join(dir, name);
  execFileSync("cp", ["-al", bookworm!, dst]);
  for (const rel of ["var/log", "var/cache/ldconfig", "etc/ld.so.cache"]) {
    if (!existsSync(path.join(bookworm!, rel))) continue;
    rmSync(path.join(dst, rel), { recursive: true, force: true });
    cpSync(path.join(bookworm!, rel), path.join(dst, rel), { recursive: true, preserveTimestamps: true });
  }
  return dst;
}

const inRoot = (root: string, ...argv: string[]) =>
  execFileSync("chroot", [root, ...argv], {
    encoding: "utf8",
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
  });
const ua = (root: string, ...args: string[]) => inRoot(root, "update-alternatives", ...args);
/** `update-alternatives --query NAME` as fields (the first stanza: the group's). */
function query(root: string, name: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of ua(root, "--query", name).split("\n\n")[0]!.split("\n")) {
    const i = line.indexOf(": ");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 2);
  }
  return out;
}

function put(root: string, rel: string, content: string, mode = 0o644): void {
  const p = path.join(root, rel);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, content, { mode });
}

const plan = applyPlanOf;

const DEMO_FILES = [
  "usr/bin/strata-demo-a",
  "usr/bin/strata-demo-b",
  "usr/share/man/man1/strata-demo-a.1.gz",
];
const b = (p: string) => Buffer.from(p);

describe.skipIf(reason !== undefined)(`triggers on a Debian root (${reason ?? "chroot"})`, () => {
  let ref: string;
  let ep: string;
  const state = path.join(dir, "state");
  beforeAll(() => {
    ref = copyRoot("ref");
    ep = copyRoot("ep");
    mkdirSync(state);
  });

  it("registers a layer's alternatives with the endpoint's update-alternatives, keeping its own choices", async () => {
    // The reference: the admin installs software that registers a group (capture).
    const pre = readAlternatives(ref);
    for (const f of DEMO_FILES) put(ref, f, `#!/bin/sh\necho ${path.basename(f)}\n`, 0o755);
    ua(
      ref,
      "--install",
      "/usr/bin/strata-demo",
      "strata-demo",
      "/usr/bin/strata-demo-a",
      "50",
      "--slave",
      "/usr/share/man/man1/strata-demo.1.gz",
      "strata-demo.1.gz",
      "/usr/share/man/man1/strata-demo-a.1.gz",
    );
    ua(ref, "--install", "/usr/bin/strata-demo", "strata-demo", "/usr/bin/strata-demo-b", "20");
    const post1 = readAlternatives(ref);
    const v1 = diffAlternatives(pre, post1);
    expect(v1.groups.map((g) => g.name)).toEqual(["strata-demo"]);
    expect(v1.groups[0]!.choices.map((c) => [c.path, c.priority])).toEqual([
      ["/usr/bin/strata-demo-a", 50],
      ["/usr/bin/strata-demo-b", 20],
    ]);
    expect(v1.removed).toEqual([]);

    // The endpoint: its user chose by hand in a group of its own (the lower priority).
    for (const f of ["usr/bin/strata-other-x", "usr/bin/strata-other-y"]) put(ep, f, "#!/bin/sh\n", 0o755);
    ua(ep, "--install", "/usr/bin/strata-other", "strata-other", "/usr/bin/strata-other-x", "10");
    ua(ep, "--install", "/usr/bin/strata-other", "strata-other", "/usr/bin/strata-other-y", "90");
    ua(ep, "--set", "strata-other", "/usr/bin/strata-other-x");
    const pagerBefore = query(ep, "pager");

    const prep = prepareLayerApply(plan({ triggers: ["update-alternatives"], alternatives: v1 }), ep, {
      space: null,
    });
    expect(prep.triggers).toEqual(["update-alternatives"]);
    // The generic links are update-alternatives' (the layer's and the endpoint's own): the engine leaves them.
    for (const p of [
      "/usr/bin/strata-demo",
      "/usr/share/man/man1/strata-demo.1.gz",
      "/usr/bin/strata-other",
      "/usr/bin/pager",
    ])
      expect(prep.doNotOverride(b(p)), p).toBe(true);
    for (const p of [
      "/etc/alternatives/pager",
      "/var/lib/dpkg/alternatives/pager",
      "/boot/initrd.img-6.1.0-13-amd64",
    ])
      expect(prep.doNotOverride(b(p)), p).toBe(true);
    expect(prep.doNotOverride(b("/usr/bin/strata-demo-a"))).toBe(false);

    // What the engine writes: the layer's files (never the links nor the database).
    for (const f of DEMO_FILES) cpSync(path.join(ref, f), path.join(ep, f), { preserveTimestamps: true });
    const ctx = { ...prep.triggerContext, stateDir: state };
    const runs = await runTriggers(ep, prep.triggers, ctx);
    expect(runs).toEqual([{ trigger: "update-alternatives", ok: true, output: "" }]);
    const q = query(ep, "strata-demo");
    expect(q).toMatchObject({
      Name: "strata-demo",
      Link: "/usr/bin/strata-demo",
      Status: "auto",
      Best: "/usr/bin/strata-demo-a",
      Value: "/usr/bin/strata-demo-a",
    });
    expect(inRoot(ep, "readlink", "-f", "/usr/bin/strata-demo").trim()).toBe("/usr/bin/strata-demo-a");
    expect(inRoot(ep, "strata-demo").trim()).toBe("strata-demo-a");
    expect(inRoot(ep, "readlink", "-f", "/usr/share/man/man1/strata-demo.1.gz").trim()).toBe(
      "/usr/share/man/man1/strata-demo-a.1.gz",
    );
    // The endpoint's own choices are untouched.
    expect(query(ep, "strata-other")).toMatchObject({ Status: "manual", Value: "/usr/bin/strata-other-x" });
    expect(query(ep, "pager")).toEqual(pagerBefore);
    // A second apply changes nothing.
    const admin = readFileSync(path.join(ep, "var/lib/dpkg/alternatives/strata-demo"), "utf8");
    expect(await runTriggers(ep, prep.triggers, ctx)).toEqual(runs);
    expect(readFileSync(path.join(ep, "var/lib/dpkg/alternatives/strata-demo"), "utf8")).toBe(admin);

    // The next capture: the admin chooses by hand, in the new group and in one the endpoint chose in too.
    for (const f of ["usr/bin/strata-other-x", "usr/bin/strata-other-y"]) put(ref, f, "#!/bin/sh\n", 0o755);
    ua(ref, "--set", "strata-demo", "/usr/bin/strata-demo-b");
    ua(ref, "--install", "/usr/bin/strata-other", "strata-other", "/usr/bin/strata-other-x", "10");
    ua(ref, "--install", "/usr/bin/strata-other", "strata-other", "/usr/bin/strata-other-y", "90");
    ua(ref, "--set", "strata-other", "/usr/bin/strata-other-y");
    const post2 = readAlternatives(ref);
    const v2 = diffAlternatives(post1, post2);
    expect(v2.groups.map((g) => [g.name, g.manual])).toEqual([
      ["strata-demo", "/usr/bin/strata-demo-b"],
      ["strata-other", "/usr/bin/strata-other-y"],
    ]);
    const image2 = composeAlternatives([v1, v2]);
    const prep2 = prepareLayerApply(plan({ triggers: ["update-alternatives"], alternatives: image2 }), ep, {
      space: null,
    });
    expect((await runTriggers(ep, prep2.triggers, { ...prep2.triggerContext, stateDir: state }))[0]!.ok).toBe(
      true,
    );
    // The layer's choice where the endpoint made none; the endpoint's own where it did.
    expect(query(ep, "strata-demo")).toMatchObject({ Status: "manual", Value: "/usr/bin/strata-demo-b" });
    expect(query(ep, "strata-other")).toMatchObject({ Status: "manual", Value: "/usr/bin/strata-other-x" });

    // A third capture removes an alternative (its package went): the endpoint drops it once its file is gone.
    ua(ref, "--remove", "strata-demo", "/usr/bin/strata-demo-b");
    rmSync(path.join(ref, "usr/bin/strata-demo-b"));
    const v3 = diffAlternatives(post2, readAlternatives(ref));
    expect(v3.removed).toEqual([{ name: "strata-demo", path: "/usr/bin/strata-demo-b" }]);
    const image3 = composeAlternatives([v1, v2, v3]);
    const prep3 = prepareLayerApply(
      plan({ triggers: ["update-alternatives"], alternatives: image3, removed: ["/usr/bin/strata-demo-b"] }),
      ep,
      { space: null },
    );
    rmSync(path.join(ep, "usr/bin/strata-demo-b")); // the engine's removal
    const runs3 = await runTriggers(ep, prep3.triggers, { ...prep3.triggerContext, stateDir: state });
    expect(runs3[0]!.ok, runs3[0]!.output).toBe(true);
    const q3 = query(ep, "strata-demo");
    expect(q3).toMatchObject({ Status: "auto", Value: "/usr/bin/strata-demo-a" });
    expect(ua(ep, "--list", "strata-demo").trim()).toBe("/usr/bin/strata-demo-a");
    expect(query(ep, "strata-other")).toMatchObject({ Status: "manual", Value: "/usr/bin/strata-other-x" });
  });

  it("an alternative whose path an apply removes leaves its group even without a layer's record of it", async () => {
    // The endpoint registered a layer's file long ago; the new image no longer owns it.
    put(ep, "usr/bin/strata-gone", "#!/bin/sh\n", 0o755);
    ua(ep, "--install", "/usr/bin/strata-other", "strata-other", "/usr/bin/strata-gone", "5");
    const prep = prepareLayerApply(plan({}, { removals: ["/usr/bin/strata-gone"] }), ep, { space: null });
    expect(prep.triggers).toEqual(["update-alternatives"]);
    expect(prep.triggerContext.alternatives?.removed).toEqual([
      { name: "strata-other", path: "/usr/bin/strata-gone" },
    ]);
    rmSync(path.join(ep, "usr/bin/strata-gone"));
    const runs = await runTriggers(ep, prep.triggers, prep.triggerContext);
    expect(runs[0]!.ok, runs[0]!.output).toBe(true);
    expect(ua(ep, "--list", "strata-other").trim().split("\n")).toEqual([
      "/usr/bin/strata-other-x",
      "/usr/bin/strata-other-y",
    ]);
    expect(query(ep, "strata-other")).toMatchObject({ Status: "manual", Value: "/usr/bin/strata-other-x" });
  });

  it("rebuilds the initramfs of the kernels the layers touched: -c without one, -u with one, once per image", async () => {
    const calls = path.join(ep, "tmp/update-initramfs.calls");
    // A stand-in that records its arguments and, like the real one, leaves an initramfs behind.
    put(
      ep,
      "usr/sbin/update-initramfs",
      '#!/bin/sh\necho "$*" >> /tmp/update-initramfs.calls\n' +
        '[ "$3" = 6.1.0-96-fail ] && { echo "E: cannot build for $3" >&2; exit 1; }\n' +
        ': > "/boot/initrd.img-$3"\n',
      0o755,
    );
    for (const v of ["6.1.0-96-fail", "6.1.0-98-amd64", "6.1.0-99-amd64"])
      put(ep, `boot/vmlinuz-${v}`, "kernel\n");
    put(ep, "boot/initrd.img-6.1.0-98-amd64", "the endpoint's own\n");
    const read = () => {
      const c = existsSync(calls) ? readFileSync(calls, "utf8").trim().split("\n") : [];
      rmSync(calls, { force: true });
      return c;
    };
    const ctx = (kernels: string[], all: boolean, image: string) => ({
      initramfs: { kernels, all },
      image,
      stateDir: state,
    });

    // Named kernels only: the one without an initramfs is created; one not on the endpoint is skipped.
    let runs = await runTriggers(
      ep,
      ["update-initramfs"],
      ctx(["6.1.0-99-amd64", "6.1.0-97-amd64"], false, "img_a"),
    );
    // A new initramfs changes GRUB's menu too: update-grub, which this root lacks (a note, not a failure).
    expect(runs).toEqual([
      { trigger: "update-initramfs", ok: true, output: "" },
      {
        trigger: "update-grub",
        ok: true,
        skipped: true,
        output: "update-grub is not installed in the root (no GRUB): not run",
      },
    ]);
    expect(read()).toEqual(["-c -k 6.1.0-99-amd64"]);
    // Every kernel (initramfs-tools' configuration changed): a failure is reported, the others still built.
    runs = await runTriggers(ep, ["update-initramfs"], ctx([], true, "img_a"));
    expect(runs[0]!.ok).toBe(false);
    expect(runs[0]!.output).toContain(
      "update-initramfs -c -k 6.1.0-96-fail: E: cannot build for 6.1.0-96-fail",
    );
    // 99 was built for this image already.
    expect(read()).toEqual(["-c -k 6.1.0-96-fail", "-u -k 6.1.0-98-amd64"]);
    rmSync(path.join(ep, "boot/vmlinuz-6.1.0-96-fail"));
    // The same image again: nothing to build; another image: all again.
    expect(await runTriggers(ep, ["update-initramfs"], ctx([], true, "img_a"))).toEqual([]);
    expect(read()).toEqual([]);
    await runTriggers(ep, ["update-initramfs"], ctx([], true, "img_b"));
    expect(read()).toEqual(["-u -k 6.1.0-98-amd64", "-u -k 6.1.0-99-amd64"]);

    // Derived by the apply from the manifest and from what it removes; kept for the restart with --at-restart.
    const prep = prepareLayerApply(
      plan(
        {
          triggers: ["ldconfig", "update-initramfs"],
          initramfs: { kernels: ["6.1.0-99-amd64"], all: false },
        },
        {
          image: { id: "img_c", snapshot: "0".repeat(64) },
          removals: ["/usr/lib/modules/6.1.0-98-amd64/extra/x.ko"],
        },
      ),
      ep,
      { space: null },
    );
    expect(prep.triggers).toEqual(["ldconfig", "depmod", "update-initramfs"]);
    expect(prep.triggerContext.initramfs).toEqual({
      kernels: ["6.1.0-98-amd64", "6.1.0-99-amd64"],
      all: false,
    });
    expect(prep.triggerContext.depmod).toEqual({ kernels: ["6.1.0-98-amd64"], all: false });
    // An earlier deferred apply waits with its own triggers: one restart runs both.
    savePendingTriggers(state, "task_o", ["update-alternatives"], {
      alternatives: { groups: [], removed: [{ name: "strata-demo", path: "/usr/bin/strata-gone-too" }] },
      initramfs: { kernels: ["6.1.0-98-amd64"], all: false },
      image: "img_o",
    });
    savePendingTriggers(state, "task_p", prep.triggers, { ...prep.triggerContext, stateDir: state });
    const saved = JSON.parse(readFileSync(path.join(state, "pending-triggers.json"), "utf8"));
    expect(saved).toMatchObject({
      id: "task_p",
      triggers: ["ldconfig", "update-alternatives", "depmod", "update-initramfs"],
      context: {
        alternatives: { groups: [], removed: [{ name: "strata-demo", path: "/usr/bin/strata-gone-too" }] },
        initramfs: { kernels: ["6.1.0-98-amd64", "6.1.0-99-amd64"], all: false },
        depmod: { kernels: ["6.1.0-98-amd64"], all: false },
        image: "img_c",
      },
    });
    expect(saved.context.stateDir).toBeUndefined();
    expect(read()).toEqual([]);
    const pending = await runPendingTriggers(state, ep);
    expect(pending.map((r) => [r.trigger, r.ok])).toEqual([
      ["ldconfig", true],
      ["update-alternatives", true],
      ["update-initramfs", true],
    ]);
    expect(read()).toEqual(["-u -k 6.1.0-98-amd64", "-u -k 6.1.0-99-amd64"]);
    expect(existsSync(path.join(state, "pending-triggers.json"))).toBe(false);
    expect(await runPendingTriggers(state, ep)).toEqual([]);

    // Without initramfs-tools in the root nothing is rebuilt, and the report says so.
    rmSync(path.join(ep, "usr/sbin/update-initramfs"));
    expect(await runTriggers(ep, ["update-initramfs"], ctx([], true, "img_d"))).toEqual([
      {
        trigger: "update-initramfs",
        ok: true,
        skipped: true,
        output:
          "update-initramfs is not installed in the root (initramfs-tools): not run for 6.1.0-98-amd64, 6.1.0-99-amd64",
      },
    ]);
  });

  it.skipIf(kmodReason !== undefined)(
    `indexes a driver folder's kernel module with the root's depmod; update-grub follows a kernel (${kmodReason ?? "kmod, gcc"})`,
    async () => {
      // A root with kmod installed by dpkg (its own database: dpkg writes there).
      const root = copyRoot("kmod");
      rmSync(path.join(root, "var/lib/dpkg"), { recursive: true });
      cpSync(path.join(bookworm!, "var/lib/dpkg"), path.join(root, "var/lib/dpkg"), {
        recursive: true,
        preserveTimestamps: true,
      });
      mkdirSync(path.join(root, "tmp/debs"), { recursive: true });
      for (const f of kmod.cache!.files) cpSync(f, path.join(root, "tmp/debs", path.basename(f)));
      inRoot(root, "sh", "-c", "dpkg -i /tmp/debs/*.deb >/dev/null");
      const v = "6.1.0-99-amd64";
      const ko = `/usr/lib/modules/${v}/extra/strata_demo.ko`;
      // What the engine writes from the driver folder: a module (a real ELF object with its .modinfo).
      const src = path.join(dir, "strata_demo.c");
      writeFileSync(
        src,
        ['"license=GPL"', '"alias=strata:demo"', '"name=strata_demo"']
          .map(
            (x, i) =>
              `__attribute__((section(".modinfo"), used, aligned(1))) static const char m${i}[] = ${x};`,
          )
          .concat("int init_module(void) { return 0; }")
          .join("\n"),
      );
      mkdirSync(path.dirname(path.join(root, ko)), { recursive: true });
      execFileSync("gcc", ["-c", "-O2", "-o", path.join(root, ko), src]);
      // The capture's manifest (core derives it from the paths, as the server does).
      const m = {
        triggers: triggersFor([ko]),
        depmod: depmodTargets([ko])!,
        initramfs: initramfsTargets([ko])!,
      };
      expect(m.triggers).toEqual(["depmod", "update-initramfs"]);
      const prep = prepareLayerApply(plan(m), root, { space: null });
      expect(prep.triggers).toEqual(["depmod", "update-initramfs"]);
      const runs = await runTriggers(root, prep.triggers, { ...prep.triggerContext, stateDir: state });
      // No kernel image for it here: no initramfs to build (and nothing to say).
      expect(runs.map((r) => [r.trigger, r.ok, r.skipped ?? false])).toEqual([["depmod", true, false]]);
      const modulesDep = () => readFileSync(path.join(root, `usr/lib/modules/${v}/modules.dep`), "utf8");
      expect(modulesDep()).toMatch(/^extra\/strata_demo\.ko:$/m);
      expect(readFileSync(path.join(root, `usr/lib/modules/${v}/modules.alias`), "utf8")).toMatch(
        /^alias strata:demo strata_demo$/m,
      );
      // modprobe's tools find it by name through the index.
      expect(inRoot(root, "modinfo", "-k", v, "-F", "alias", "strata_demo").trim()).toBe("strata:demo");

      // The folder no longer has it: the apply removes it, depmod forgets it.
      rmSync(path.join(root, ko));
      const prep2 = prepareLayerApply(plan({}, { removals: [ko] }), root, { space: null });
      expect(prep2.triggers).toEqual(["depmod", "update-initramfs"]);
      const runs2 = await runTriggers(root, prep2.triggers, prep2.triggerContext);
      expect(runs2.map((r) => [r.trigger, r.ok])).toEqual([["depmod", true]]);
      expect(modulesDep()).not.toMatch(/strata_demo/);

      // A kernel image: its initramfs and GRUB's menu. A minbase root has neither tool: noted, not failed.
      put(root, `boot/vmlinuz-${v}`, "kernel\n");
      const kernel = plan({
        triggers: triggersFor([`/boot/vmlinuz-${v}`]),
        initramfs: initramfsTargets([`/boot/vmlinuz-${v}`])!,
      });
      expect(kernel.manifest.triggers).toEqual([
        "kernel-postrm",
        "kernel-postinst",
        "update-initramfs",
        "update-grub",
      ]);
      const prep3 = prepareLayerApply(kernel, root, { space: null });
      // The endpoint had the kernel before this apply: no kernel hooks (and nothing to say about them).
      const runs3 = await runTriggers(root, prep3.triggers, prep3.triggerContext);
      expect(runs3).toEqual([
        {
          trigger: "update-initramfs",
          ok: true,
          skipped: true,
          output: `update-initramfs is not installed in the root (initramfs-tools): not run for ${v}`,
        },
        {
          trigger: "update-grub",
          ok: true,
          skipped: true,
          output: "update-grub is not installed in the root (no GRUB): not run",
        },
      ]);
      // Where GRUB is installed (a stand-in that records the call): it runs, its output in the report.
      put(
        root,
        "usr/sbin/update-grub",
        '#!/bin/sh\necho run >> /tmp/update-grub.calls\necho "Generating grub configuration file ..." >&2\n',
        0o755,
      );
      const runs4 = await runTriggers(root, prep3.triggers, prep3.triggerContext);
      expect(runs4.at(-1)).toEqual({
        trigger: "update-grub",
        ok: true,
        output: "Generating grub configuration file ...",
      });
      expect(readFileSync(path.join(root, "tmp/update-grub.calls"), "utf8")).toBe("run\n");
    },
  );

  it("skips depmod with a note when the root has no kmod", async () => {
    put(ep, "usr/lib/modules/6.1.0-99-amd64/extra/x.ko", "module\n");
    expect(
      await runTriggers(ep, ["depmod"], { depmod: { kernels: ["6.1.0-99-amd64"], all: false } }),
    ).toEqual([
      {
        trigger: "depmod",
        ok: true,
        skipped: true,
        output: "depmod is not installed in the root (kmod): not run for 6.1.0-99-amd64",
      },
    ]);
    // A kernel whose module tree the endpoint does not have: nothing to index.
    expect(
      await runTriggers(ep, ["depmod"], { depmod: { kernels: ["6.1.0-42-amd64"], all: false } }),
    ).toEqual([]);
  });

  describe("the hooks of a kernel an apply adds or removes", () => {
    const v = "6.1.0-99-amd64";
    const old = "6.1.0-98-amd64";
    let root: string;
    const hookState = path.join(dir, "state-kernel");
    /** What ran, in order, one line each (every stand-in and hook appends to /tmp/order); then forgotten. */
    const order = () => {
      const f = path.join(root, "tmp/order");
      const out = existsSync(f) ? readFileSync(f, "utf8").trim().split("\n") : [];
      rmSync(f, { force: true });
      return out;
    };
    const log = (what: string) => `#!/bin/sh\necho "${what}" >> /tmp/order\n`;
    const hook = (dir: string, name: string, body: string, mode = 0o755) =>
      put(root, `etc/kernel/${dir}/${name}`, body, mode);
    const paths = [`/boot/vmlinuz-${v}`, `/usr/lib/modules/${v}/kernel/drivers/x.ko`];
    const manifest = () => ({
      triggers: triggersFor(paths),
      initramfs: initramfsTargets(paths)!,
      depmod: depmodTargets(paths)!,
    });
    /** What the engine writes for the kernel's layer (the reference's initramfs is never in it). */
    const writeKernel = (ver: string) => {
      put(root, `boot/vmlinuz-${ver}`, "kernel\n");
      put(root, `usr/lib/modules/${ver}/kernel/drivers/x.ko`, "module\n");
    };

    beforeAll(() => {
      root = copyRoot("kernel-hooks");
      mkdirSync(hookState);
      // Stand-ins for kmod, initramfs-tools and GRUB (a minbase root has none): they record their call.
      put(root, "usr/sbin/depmod", log("depmod $*"), 0o755);
      put(
        root,
        "usr/sbin/update-initramfs",
        `${log("update-initramfs $*")}case "$1" in -d) rm -f "/boot/initrd.img-$3" ;; *) : > "/boot/initrd.img-$3" ;; esac\n`,
        0o755,
      );
      put(root, "usr/sbin/update-grub", log("update-grub"), 0o755);
      // DKMS's hook, and what the packages of initramfs-tools and grub2 ship: Strata runs those two itself.
      hook("postinst.d", "dkms", log("dkms $* $DEB_MAINT_PARAMS"));
      hook("postinst.d", "initramfs-tools", log("WRONG postinst.d/initramfs-tools $*"));
      hook("postinst.d", "zz-update-grub", log("WRONG postinst.d/zz-update-grub $*"));
      // A failing hook (it sorts first), a symlink whose absolute target is the root's, and what run-parts leaves out.
      hook(
        "postinst.d",
        "a-fails",
        '#!/bin/sh\necho "a-fails $1" >> /tmp/order\necho "cannot build for $1" >&2\nexit 3\n',
      );
      put(root, "usr/local/lib/strata-hook", log("linked $* $DEB_MAINT_PARAMS"), 0o755);
      symlinkSync("/usr/local/lib/strata-hook", path.join(root, "etc/kernel/postinst.d/linked"));
      hook("postinst.d", "dkms.dpkg-old", log("WRONG dkms.dpkg-old"));
      hook("postinst.d", "not-executable", log("WRONG not-executable"), 0o644);
      hook("postrm.d", "strata-rm", log("strata-rm $* $DEB_MAINT_PARAMS"));
      hook("postrm.d", "initramfs-tools", log("WRONG postrm.d/initramfs-tools $*"));
      hook("postrm.d", "zz-update-grub", log("WRONG postrm.d/zz-update-grub $*"));
      // The endpoint's own kernel, with its initramfs.
      writeKernel(old);
      put(root, `boot/initrd.img-${old}`, "initramfs\n");
    });

    it("a new kernel: its postinst.d hooks after depmod and before update-initramfs, less initramfs-tools and zz-update-grub", async () => {
      // Decided before the engine writes: the kernels the endpoint has then.
      const prep = prepareLayerApply(plan(manifest()), root, { space: null });
      expect(prep.triggers).toEqual([
        "kernel-postrm",
        "depmod",
        "kernel-postinst",
        "update-initramfs",
        "update-grub",
      ]);
      expect(prep.triggerContext.kernelsBefore).toEqual([old]);
      writeKernel(v);
      const runs = await runTriggers(root, prep.triggers, { ...prep.triggerContext, stateDir: hookState });
      const img = `/boot/vmlinuz-${v}`;
      expect(order()).toEqual([
        `depmod -a ${v}`,
        `a-fails ${v}`,
        `dkms ${v} ${img} configure`,
        `linked ${v} ${img} configure`,
        `update-initramfs -c -k ${v}`,
        "update-grub",
      ]);
      // No kernel went: nothing about kernel-postrm. The failing hook is in the report, the others still ran.
      expect(runs.map((r) => [r.trigger, r.ok, r.skipped ?? false])).toEqual([
        ["depmod", true, false],
        ["kernel-postinst", false, false],
        ["update-initramfs", true, false],
        ["update-grub", true, false],
      ]);
      // The default links point at the new kernel first (Strata's linux-update-symlinks: the root has no linux-base).
      expect(runs[1]!.output.split("\n")).toEqual([
        `I: /vmlinuz.old is now a symlink to boot/vmlinuz-${old}`,
        `I: /initrd.img.old is now a symlink to boot/initrd.img-${old}`,
        `I: /vmlinuz is now a symlink to boot/vmlinuz-${v}`,
        `I: /initrd.img is now a symlink to boot/initrd.img-${v}`,
        `/etc/kernel/postinst.d/a-fails ${v} ${img} failed (exit 3): cannot build for ${v}`,
        `/etc/kernel/postinst.d/dkms ${v} ${img}`,
        `/etc/kernel/postinst.d/linked ${v} ${img}`,
      ]);
      expect(existsSync(path.join(root, `boot/initrd.img-${v}`))).toBe(true);

      // The same image again: the kernel is not new any more, its hooks do not run again.
      const again = prepareLayerApply(plan(manifest()), root, { space: null });
      const runs2 = await runTriggers(root, again.triggers, { ...again.triggerContext, stateDir: hookState });
      expect(runs2.map((r) => r.trigger)).toEqual(["depmod", "update-grub"]);
      expect(order()).toEqual([`depmod -a ${v}`, "update-grub"]);
    });

    it("a removed kernel: its initramfs goes, its postrm.d hooks run, then update-grub", async () => {
      expect(existsSync(path.join(root, `boot/initrd.img-${v}`))).toBe(true);
      // The next image has no kernel: the apply removes what the kernel's layer brought.
      const prep = prepareLayerApply(plan({}, { removals: paths }), root, { space: null });
      expect(prep.triggers).toEqual([
        "kernel-postrm",
        "depmod",
        "kernel-postinst",
        "update-initramfs",
        "update-grub",
      ]);
      // The initramfs is endpoint-derived: the engine leaves it, the trigger removes it.
      expect(prep.doNotOverride(b(`/boot/initrd.img-${v}`))).toBe(true);
      rmSync(path.join(root, `boot/vmlinuz-${v}`));
      rmSync(path.join(root, `usr/lib/modules/${v}`), { recursive: true });
      const runs = await runTriggers(root, prep.triggers, prep.triggerContext);
      expect(order()).toEqual([
        `update-initramfs -d -k ${v}`,
        `strata-rm ${v} /boot/vmlinuz-${v} remove`,
        "update-grub",
      ]);
      expect(existsSync(path.join(root, `boot/initrd.img-${v}`))).toBe(false);
      expect(existsSync(path.join(root, `boot/initrd.img-${old}`))).toBe(true);
      expect(runs).toEqual([
        {
          trigger: "kernel-postrm",
          ok: true,
          output: [
            `I: /vmlinuz is now a symlink to boot/vmlinuz-${old}`,
            `I: /initrd.img is now a symlink to boot/initrd.img-${old}`,
            `/etc/kernel/postrm.d/strata-rm ${v} /boot/vmlinuz-${v}`,
          ].join("\n"),
        },
        { trigger: "update-grub", ok: true, output: "" },
      ]);
    });

    it("without initramfs-tools the removed kernel's initramfs is deleted; nothing to run is noted", async () => {
      const w = "6.1.0-97-amd64";
      rmSync(path.join(root, "usr/sbin/update-initramfs"));
      writeKernel(w);
      put(root, `boot/initrd.img-${w}`, "initramfs\n");
      const prep = prepareLayerApply(plan({}, { removals: [`/boot/vmlinuz-${w}`] }), root, { space: null });
      expect(prep.triggerContext.kernelsBefore).toEqual([w, old]);
      rmSync(path.join(root, `boot/vmlinuz-${w}`));
      const runs = await runTriggers(root, prep.triggers, prep.triggerContext);
      expect(existsSync(path.join(root, `boot/initrd.img-${w}`))).toBe(false);
      expect(runs[0]).toEqual({
        trigger: "kernel-postrm",
        ok: true,
        output: [
          `/boot/initrd.img-${w} deleted (no initramfs-tools in the root)`,
          `/etc/kernel/postrm.d/strata-rm ${w} /boot/vmlinuz-${w}`,
          // Its modules stay (this apply did not remove them): depmod's files would go, the directory stays.
          `/lib/modules/${w} kept: it holds files no layer removed (kernel)`,
        ].join("\n"),
      });
      expect(order()).toEqual([`strata-rm ${w} /boot/vmlinuz-${w} remove`, "update-grub"]);

      // No initramfs and no hook but Strata's own: a note, nothing run.
      rmSync(path.join(root, "etc/kernel/postrm.d/strata-rm"));
      rmSync(path.join(root, `usr/lib/modules/${w}`), { recursive: true });
      put(root, `boot/vmlinuz-${w}`, "kernel\n");
      const prep2 = prepareLayerApply(plan({}, { removals: [`/boot/vmlinuz-${w}`] }), root, { space: null });
      rmSync(path.join(root, `boot/vmlinuz-${w}`));
      expect((await runTriggers(root, prep2.triggers, prep2.triggerContext))[0]).toEqual({
        trigger: "kernel-postrm",
        ok: true,
        skipped: true,
        output: `no initramfs and no hook in /etc/kernel/postrm.d besides initramfs-tools, zz-update-grub: nothing run for ${w}`,
      });
      expect(order()).toEqual(["update-grub"]);
    });

    it("--at-restart: the kernels before the first deferred apply decide, once the files are in place", async () => {
      const u = "6.1.0-96-amd64";
      const st = path.join(dir, "state-kernel-pending");
      mkdirSync(st);
      // Only the hooks Strata runs itself: a new kernel gets a note.
      for (const n of ["dkms", "a-fails", "linked"]) rmSync(path.join(root, "etc/kernel/postinst.d", n));
      // And no default links wanted (kernel-img.conf(5)): nothing else to do.
      put(root, "etc/kernel-img.conf", "# the endpoint's\ndo_symlinks = no\n");
      const up = [`/boot/vmlinuz-${u}`];
      const m = { triggers: triggersFor(up), initramfs: initramfsTargets(up)! };
      const first = prepareLayerApply(plan(m), root, { space: null });
      savePendingTriggers(st, "task_1", first.triggers, first.triggerContext);
      // A second deferred apply rolls the first forward (its kernel is there now) and waits with it.
      writeKernel(u);
      const second = prepareLayerApply(plan(m), root, { space: null });
      expect(second.triggerContext.kernelsBefore).toEqual([u, old]);
      savePendingTriggers(st, "task_2", second.triggers, second.triggerContext);
      const saved = JSON.parse(readFileSync(path.join(st, "pending-triggers.json"), "utf8"));
      expect(saved.context.kernelsBefore).toEqual([old]);
      expect(order()).toEqual([]);
      const runs = await runPendingTriggers(st, root);
      expect(runs).toEqual([
        {
          trigger: "kernel-postinst",
          ok: true,
          skipped: true,
          output: `no hook in /etc/kernel/postinst.d besides initramfs-tools, zz-update-grub (Strata runs those itself): none run for ${u}`,
        },
        {
          trigger: "update-initramfs",
          ok: true,
          skipped: true,
          output: `update-initramfs is not installed in the root (initramfs-tools): not run for ${u}`,
        },
        { trigger: "update-grub", ok: true, output: "" },
      ]);
      expect(order()).toEqual(["update-grub"]);
      rmSync(path.join(root, "etc/kernel-img.conf"));
    });
  });
});
