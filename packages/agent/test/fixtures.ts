import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { DEFAULT_DO_NOT_OVERRIDE } from "@strata/core";
import type { ApplyPlan, LayerManifest } from "@strata/protocol";

/** An apply plan as the server sends it, for a Debian 12 image: `manifest` and `more` override its parts. */
export function applyPlanOf(manifest: Partial<LayerManifest>, more: Partial<ApplyPlan> = {}): ApplyPlan {
  return {
    task: "task_t",
    image: { id: "img_1", snapshot: "0".repeat(64) },
    session: {} as ApplyPlan["session"],
    manifest: {
      os: { id: "debian", versionId: "12" },
      removed: [],
      packages: [],
      removedPackages: [],
      accounts: { passwd: [], group: [], shadow: [], gshadow: [] },
      triggers: [],
      stats: { files: 0, bytes: 0 },
      ...manifest,
    },
    removals: [],
    previousPackages: [],
    doNotOverride: [...DEFAULT_DO_NOT_OVERRIDE],
    enforce: "none",
    atRestart: false,
    ...more,
  };
}

/** A fake endpoint root: /etc files, /proc and /sys entries as plain files. */
export function fakeRoot(root: string, o: { machineId?: string | null; hostname?: string } = {}): string {
  const put = (rel: string, text: string) => {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), text);
  };
  put("etc/hostname", `${o.hostname ?? "web-1"}\n`);
  if (o.machineId !== null) put("etc/machine-id", `${o.machineId ?? "0f6b3c2a9d8e4f1a0b2c3d4e5f607182"}\n`);
  put(
    "etc/os-release",
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
  );
  put("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
  put(
    "proc/cpuinfo",
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6130\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6130\n",
  );
  put("proc/meminfo", "MemTotal:        8048132 kB\nMemFree:  1 kB\n");
  put("sys/block/sda/size", "209715200\n");
  put("sys/block/sda/device/model", "QEMU HARDDISK   \n");
  put("sys/block/loop0/size", "100\n");
  put("sys/class/net/lo/address", "00:00:00:00:00:00\n");
  put("sys/class/net/eth0/address", "52:54:00:12:34:56\n");
  put("sys/class/net/eth1/address", "52:54:00:AB:CD:EF\n");
  return root;
}
