import { globToRegExp, matchCollectionRule, matchDriverRule, matchProfile, triggersFor } from "@strata/core";
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
