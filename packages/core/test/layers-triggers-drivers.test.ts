import {
  applyTriggers,
  depmodTargets,
  ENDPOINT_DERIVED_RULES,
  globToRegExp,
  initramfsTargets,
  matchCollectionRule,
  matchDriverRule,
  matchProfile,
  mergeInitramfsTargets,
  ruleMatcher,
  TRIGGER_ORDER,
  triggersFor,
} from "@strata/core";
import { describe, expect, it } from "vitest";

describe("triggersFor", () => {
  it("asks for ldconfig on shared libraries and ld.so.conf.d", () => {
    expect(triggersFor(["/usr/lib/x86_64-linux-gnu/libjq.so.1.0.4"])).toEqual(["ldconfig"]);
    expect(triggersFor(["/usr/lib/x86_64-linux-gnu/libonig.so.5"])).toEqual(["ldconfig"]);
    expect(triggersFor(["/lib/x86_64-linux-gnu/libc.so.6"])).toEqual(["ldconfig"]);
    expect(triggersFor(["/usr/lib64/ld-linux-x86-64.so.2"])).toEqual(["ldconfig"]);
    expect(triggersFor(["/usr/local/lib/libfoo.so"])).toEqual(["ldconfig"]);
    expect(triggersFor(["/usr/lib/libbar.so"])).toEqual(["ldconfig"]);
    expect(triggersFor(["/etc/ld.so.conf.d/nvidia.conf"])).toEqual(["ldconfig"]);
  });

  it("does not for files that are not libraries ldconfig looks at", () => {
    expect(
      triggersFor([
        "/usr/bin/jq",
        "/usr/share/doc/libjq1/copyright",
        "/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so",
        "/usr/lib/x86_64-linux-gnu/libjq.a",
        "/opt/app/lib/libapp.so.1",
        "/usr/libexec/foo.so.1",
        "/etc/ld.so.cache",
        "/usr/lib/x86_64-linux-gnu",
      ]),
    ).toEqual([]);
  });

  it("asks for a daemon-reload on systemd units, drop-ins and wants links", () => {
    expect(triggersFor(["/lib/systemd/system/nginx.service"])).toEqual(["systemd-daemon-reload"]);
    expect(triggersFor(["/usr/lib/systemd/system/ssh.socket"])).toEqual(["systemd-daemon-reload"]);
    expect(triggersFor(["/etc/systemd/system/multi-user.target.wants/nginx.service"])).toEqual([
      "systemd-daemon-reload",
    ]);
    expect(triggersFor(["/etc/systemd/system/nginx.service.d/override.conf"])).toEqual([
      "systemd-daemon-reload",
    ]);
    expect(
      triggersFor(["/etc/systemd/system.conf", "/etc/systemd/systemx/a", "/etc/systemd/system"]),
    ).toEqual([]);
  });

  it("asks for update-alternatives on the alternatives database and its links", () => {
    expect(triggersFor(["/var/lib/dpkg/alternatives/editor"])).toEqual(["update-alternatives"]);
    expect(triggersFor(["/etc/alternatives/editor"])).toEqual(["update-alternatives"]);
    // The directories themselves, a look-alike and a generic link are not.
    expect(
      triggersFor(["/var/lib/dpkg/alternatives", "/var/lib/dpkg/alternativesx/a", "/usr/bin/editor"]),
    ).toEqual([]);
  });

  it("asks for update-initramfs on kernels, their modules, initramfs-tools and firmware", () => {
    // A kernel image: the hooks of a kernel the endpoint loses or gains, its initramfs, and GRUB's menu.
    expect(triggersFor(["/boot/vmlinuz-6.1.0-13-amd64"])).toEqual([
      "kernel-postrm",
      "kernel-postinst",
      "update-initramfs",
      "update-grub",
    ]);
    // Modules: their index (depmod), then the initramfs that copies them.
    for (const p of [
      "/lib/modules/6.1.0-13-amd64/kernel/drivers/net/e1000e.ko",
      "/usr/lib/modules/6.1.0-13-amd64/updates/dkms/x.ko",
      "/usr/lib/modules/6.1.0-13-amd64",
    ])
      expect(triggersFor([p]), p).toEqual(["depmod", "update-initramfs"]);
    for (const p of [
      "/etc/initramfs-tools/initramfs.conf",
      "/etc/initramfs-tools",
      "/usr/share/initramfs-tools/hooks/cryptroot",
      "/lib/firmware/iwlwifi-9000-pu-b0-jf-b0-46.ucode",
      "/usr/lib/firmware/amdgpu/navi10_gpu_info.bin",
    ])
      expect(triggersFor([p]), p).toEqual(["update-initramfs"]);
    for (const p of [
      "/boot/initrd.img-6.1.0-13-amd64",
      "/boot/config-6.1.0-13-amd64",
      "/boot/vmlinuz",
      "/lib/modules",
      "/usr/lib/modules-load.d/x.conf",
      "/usr/share/initramfs-toolsx/a",
      "/etc/crypttab",
    ])
      expect(triggersFor([p]), p).toEqual([]);
  });

  it("orders all eight: linker cache, alternatives, removed kernel, modules index, new kernel, initramfs, boot menu, systemd", () => {
    expect(TRIGGER_ORDER).toEqual([
      "ldconfig",
      "update-alternatives",
      "kernel-postrm",
      "depmod",
      "kernel-postinst",
      "update-initramfs",
      "update-grub",
      "systemd-daemon-reload",
    ]);
    expect(
      triggersFor([
        "/lib/systemd/system/a.service",
        "/boot/vmlinuz-6.1.0-13-amd64",
        "/lib/modules/6.1.0-13-amd64/extra/a.ko",
        "/etc/alternatives/pager",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
      ]),
    ).toEqual(TRIGGER_ORDER);
  });

  it("an apply runs the image's triggers and its removals', the kernel hooks with update-grub", () => {
    expect(applyTriggers(["systemd-daemon-reload", "ldconfig"], ["depmod"])).toEqual([
      "ldconfig",
      "depmod",
      "systemd-daemon-reload",
    ]);
    // A layer captured before the kernel hooks were recorded: its kernel image asked for update-grub.
    expect(applyTriggers(["update-initramfs", "update-grub"])).toEqual([
      "kernel-postrm",
      "kernel-postinst",
      "update-initramfs",
      "update-grub",
    ]);
    expect(applyTriggers(["ldconfig"], triggersFor(["/boot/vmlinuz-6.1.0-13-amd64"]))).toEqual([
      "ldconfig",
      "kernel-postrm",
      "kernel-postinst",
      "update-initramfs",
      "update-grub",
    ]);
    expect(applyTriggers([], [])).toEqual([]);
  });

  it("names the kernels whose module index depmod rebuilds", () => {
    expect(
      depmodTargets([
        "/usr/lib/modules/6.1.0-99-amd64/extra/a.ko",
        "/lib/modules/6.1.0-13-amd64/kernel/b.ko",
        "/lib/modules/6.1.0-13-amd64",
        "/boot/vmlinuz-6.1.0-42-amd64",
        "/lib/firmware/x.bin",
        "/lib/modules/../x",
      ]),
    ).toEqual({ kernels: ["6.1.0-13-amd64", "6.1.0-99-amd64"], all: false });
    expect(depmodTargets(["/boot/vmlinuz-6.1.0-13-amd64", "/lib/modules"])).toBeNull();
  });

  it("keeps depmod's own output out of layers, but not the kernel's module lists", () => {
    const derived = ruleMatcher(ENDPOINT_DERIVED_RULES);
    for (const p of [
      "/lib/modules/6.1.0-13-amd64/modules.dep",
      "/usr/lib/modules/6.1.0-13-amd64/modules.dep.bin",
      "/usr/lib/modules/6.1.0-13-amd64/modules.alias",
      "/usr/lib/modules/6.1.0-13-amd64/modules.builtin.alias.bin",
      "/usr/lib/modules/6.1.0-13-amd64/modules.symbols",
    ])
      expect(derived(p), p).toBe(true);
    for (const p of [
      "/usr/lib/modules/6.1.0-13-amd64/modules.order",
      "/usr/lib/modules/6.1.0-13-amd64/modules.builtin",
      "/usr/lib/modules/6.1.0-13-amd64/modules.builtin.modinfo",
      "/usr/lib/modules/6.1.0-13-amd64/extra/modules.dep.ko",
    ])
      expect(derived(p), p).toBe(false);
  });

  it("keeps the default kernel links out of layers (linux-update-symlinks makes the endpoint's), not the kernels", () => {
    const derived = ruleMatcher(ENDPOINT_DERIVED_RULES);
    for (const p of [
      "/vmlinuz",
      "/vmlinuz.old",
      "/initrd.img",
      "/initrd.img.old",
      "/boot/vmlinuz",
      "/boot/initrd.img.old",
    ])
      expect(derived(p), p).toBe(true);
    for (const p of [
      "/boot/vmlinuz-6.1.0-13-amd64",
      "/vmlinuz.d",
      "/boot/initrd.img.bak",
      "/boot/grub/vmlinuz",
    ])
      expect(derived(p), p).toBe(false);
  });

  it("returns both, in a fixed order, from any iterable", () => {
    function* paths() {
      yield "/lib/systemd/system/a.service";
      yield "/usr/lib/x86_64-linux-gnu/libz.so.1";
    }
    expect(triggersFor(paths())).toEqual(["ldconfig", "systemd-daemon-reload"]);
    expect(
      triggersFor(new Set(["/usr/lib/libz.so.1", "/lib/systemd/system/a.service", "/usr/lib/libq.so.2"])),
    ).toEqual(["ldconfig", "systemd-daemon-reload"]);
  });
});

describe("initramfsTargets", () => {
  it("names the kernels a layer touches, and all of them for initramfs-tools and firmware", () => {
    expect(initramfsTargets(["/usr/bin/jq", "/boot/initrd.img-6.1.0-13-amd64"])).toBeNull();
    expect(
      initramfsTargets([
        "/usr/lib/modules/6.1.0-25-amd64/kernel/a.ko",
        "/boot/vmlinuz-6.1.0-13-amd64",
        "/lib/modules/6.1.0-25-amd64/modules.dep",
      ]),
    ).toEqual({ kernels: ["6.1.0-13-amd64", "6.1.0-25-amd64"], all: false });
    expect(initramfsTargets(["/etc/initramfs-tools/modules"])).toEqual({ kernels: [], all: true });
    expect(initramfsTargets(["/lib/firmware/a.bin", "/boot/vmlinuz-6.12.9-amd64"])).toEqual({
      kernels: ["6.12.9-amd64"],
      all: true,
    });
    expect(initramfsTargets(["/lib/modules/../etc/x", "/lib/modules/./x"])).toBeNull();
  });

  it("merges targets", () => {
    expect(mergeInitramfsTargets(null, undefined)).toBeNull();
    expect(mergeInitramfsTargets({ kernels: ["b"], all: false }, null)).toEqual({
      kernels: ["b"],
      all: false,
    });
    expect(
      mergeInitramfsTargets({ kernels: ["b", "a"], all: false }, { kernels: ["a", "c"], all: true }),
    ).toEqual({
      kernels: ["a", "b", "c"],
      all: true,
    });
  });
});

describe("globToRegExp text mode", () => {
  it("lets * and ? cross / only in text mode", () => {
    expect(globToRegExp("a*b").test("a/b")).toBe(false);
    expect(globToRegExp("a*b", { text: true }).test("a/b")).toBe(true);
    expect(globToRegExp("a?b", { text: true }).test("a/b")).toBe(true);
    expect(globToRegExp("ABC", { text: true, ignoreCase: true }).test("abc")).toBe(true);
    expect(globToRegExp("ABC", { text: true }).test("abc")).toBe(false);
  });
});

describe("driver rules", () => {
  const thinkpad = {
    vendor: "LENOVO\n",
    model: "21CBCTO1WW",
    modaliases: [
      "pci:v00008086d00009A49sv000017AAsd000022E5bc03sc00i00",
      "usb:v8087p0026d0001dcE0dsc01dp01icE0isc01ip01in00",
    ],
  };

  it("matches when every field the rule has matches", () => {
    expect(matchDriverRule({ vendor: "LENOVO" }, thinkpad)).toBe(true);
    expect(matchDriverRule({ vendor: "Lenovo", model: "21CB*" }, thinkpad)).toBe(true);
    expect(matchDriverRule({ vendor: "LENOVO", model: "20*" }, thinkpad)).toBe(false);
    expect(matchDriverRule({ vendor: "Dell*" }, thinkpad)).toBe(false);
  });

  it("matches a modalias glob against any of the endpoint's modaliases, case-sensitively", () => {
    expect(matchDriverRule({ modalias: "pci:v00008086d00009A49*" }, thinkpad)).toBe(true);
    expect(matchDriverRule({ modalias: "usb:v8087p0026*" }, thinkpad)).toBe(true);
    expect(matchDriverRule({ modalias: "pci:v000010DEd*" }, thinkpad)).toBe(false);
    expect(matchDriverRule({ modalias: "pci:v00008086d00009a49*" }, thinkpad)).toBe(false);
    expect(matchDriverRule({ vendor: "LENOVO", modalias: "pci:v000010DE*" }, thinkpad)).toBe(false);
  });

  it("needs the fact a rule names, and never matches with an empty rule", () => {
    expect(matchDriverRule({ vendor: "*" }, {})).toBe(false);
    expect(matchDriverRule({ modalias: "*" }, { vendor: "x" })).toBe(false);
    expect(matchDriverRule({}, thinkpad)).toBe(false);
  });

  it("a profile matches when any rule does", () => {
    expect(matchProfile([{ vendor: "Dell Inc." }, { model: "21CB*" }], thinkpad)).toBe(true);
    expect(matchProfile([{ vendor: "Dell Inc." }, { model: "20*" }], thinkpad)).toBe(false);
    expect(matchProfile([], thinkpad)).toBe(false);
  });
});

describe("collection rules", () => {
  const facts = {
    hostname: "Lab-PC-042",
    os: { id: "debian", versionId: "12" },
    vendor: "Dell Inc.",
    model: "OptiPlex 7090",
    tags: ["lab", "floor-2"],
  };

  it("matches hostname, os, vendor, model globs and requires every tag", () => {
    expect(matchCollectionRule({ hostname: "lab-pc-*" }, facts)).toBe(true);
    expect(matchCollectionRule({ hostname: "lab-pc-1*" }, facts)).toBe(false);
    expect(matchCollectionRule({ os: "debian 12" }, facts)).toBe(true);
    expect(matchCollectionRule({ os: "debian  12" }, facts)).toBe(true);
    expect(matchCollectionRule({ os: "debian 13" }, facts)).toBe(false);
    expect(matchCollectionRule({ os: "debian *" }, facts)).toBe(true);
    expect(matchCollectionRule({ os: "debian" }, facts)).toBe(false);
    expect(matchCollectionRule({ vendor: "dell*", model: "OptiPlex*" }, facts)).toBe(true);
    expect(matchCollectionRule({ tags: ["lab"] }, facts)).toBe(true);
    expect(matchCollectionRule({ tags: ["lab", "floor-3"] }, facts)).toBe(false);
    expect(matchCollectionRule({ hostname: "lab-*", tags: ["kiosk"] }, facts)).toBe(false);
  });

  it("does not match facts it lacks, nor with an empty rule", () => {
    expect(matchCollectionRule({ os: "debian 12" }, { hostname: "a" })).toBe(false);
    expect(matchCollectionRule({ model: "*" }, { hostname: "a" })).toBe(false);
    expect(matchCollectionRule({}, facts)).toBe(false);
    expect(matchCollectionRule({ tags: [] }, facts)).toBe(false);
    expect(
      matchCollectionRule({ os: "debian" }, { hostname: "a", os: { id: "debian", versionId: "" } }),
    ).toBe(true);
  });
});
