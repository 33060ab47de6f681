/**
 * The endpoint's facts, read from a root directory (`/`, or a chroot or a
 * test fixture): hostname, machine id, OS, kernel, architecture, CPU,
 * memory, disks (/sys/block), MAC addresses (/sys/class/net), the DMI
 * vendor and model (/sys/class/dmi/id) and the PCI and USB modaliases (the
 * `modalias` file of each device of /sys/bus/pci and /sys/bus/usb: what
 * driver profiles match on, docs/design/layers.md "Drivers"). Every source
 * is optional: a missing or unreadable file leaves its fact out (or, for
 * what the running kernel knows — kernel, CPU, memory — falls back to
 * node:os). Strings and lists are cut to the protocol's bounds.
 */
import { readdirSync, readFileSync, statfsSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { type EndpointFacts, FACTS_MAX_ITEMS, FACTS_MAX_STRING } from "@strata/protocol";

/** EndpointFacts, except that the machine id may be missing (enroll refuses that). */
export type GatheredFacts = Omit<EndpointFacts, "machineId"> & { machineId: string | null };

export interface FactsOptions {
  /** The endpoint's root directory (default `/`). */
  root?: string;
  agentVersion?: string;
  agentStateDir?: string;
}

/** Block devices that are not disks. */
const NOT_DISKS = /^(loop|ram|zram|dm-|md|sr|fd|nbd)\d*/;

const cut = (s: string) => s.slice(0, FACTS_MAX_STRING);

function read(root: string, rel: string): string | null {
  try {
    return readFileSync(path.join(root, rel), "utf8");
  } catch {
    return null;
  }
}

function list(root: string, rel: string): string[] {
  try {
    return readdirSync(path.join(root, rel)).sort();
  } catch {
    return [];
  }
}

/** `KEY=value` lines of os-release(5), with shell quoting removed. */
export function parseOsRelease(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    let v = m[2]!;
    if (/^".*"$|^'.*'$/.test(v)) v = v.slice(1, -1).replace(/\\(["\\$`])/g, "$1");
    out[m[1]!] = v;
  }
  return out;
}

function machineId(root: string): string | null {
  for (const rel of ["etc/machine-id", "var/lib/dbus/machine-id"]) {
    const v = read(root, rel)?.trim().toLowerCase();
    if (v && /^[0-9a-f]{32}$/.test(v)) return v;
  }
  return null;
}

function cpu(root: string): { model?: string; count?: number } {
  const info = read(root, "proc/cpuinfo");
  if (info) {
    const count = info.split("\n").filter((l) => /^processor\s*:/.test(l)).length;
    const model = /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim();
    if (count > 0) return { ...(model ? { model: cut(model) } : {}), count };
  }
  const cpus = os.cpus();
  return cpus.length ? { model: cut(cpus[0]!.model.trim()), count: cpus.length } : {};
}

function memoryBytes(root: string): number {
  const kb = /^MemTotal:\s+(\d+)\s*kB/m.exec(read(root, "proc/meminfo") ?? "")?.[1];
  return kb ? Number(kb) * 1024 : os.totalmem();
}

function disks(root: string): { name: string; sizeBytes: number; model?: string }[] {
  const out: { name: string; sizeBytes: number; model?: string }[] = [];
  for (const name of list(root, "sys/block")) {
    if (NOT_DISKS.test(name)) continue;
    const sectors = Number(read(root, `sys/block/${name}/size`)?.trim());
    if (!Number.isFinite(sectors)) continue;
    const model = read(root, `sys/block/${name}/device/model`)?.trim();
    out.push({ name: cut(name), sizeBytes: sectors * 512, ...(model ? { model: cut(model) } : {}) });
  }
  return out.slice(0, FACTS_MAX_ITEMS);
}

function macs(root: string): string[] {
  const out: string[] = [];
  for (const dev of list(root, "sys/class/net")) {
    if (dev === "lo") continue;
    const mac = read(root, `sys/class/net/${dev}/address`)?.trim().toLowerCase();
    if (mac && /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac) && mac !== "00:00:00:00:00:00") out.push(mac);
  }
  return [...new Set(out)].slice(0, FACTS_MAX_ITEMS);
}

/** DMI system vendor and product name (`sys_vendor`, `product_name`): what driver profiles call vendor and model. */
function dmi(root: string): { vendor?: string; model?: string } {
  const vendor = read(root, "sys/class/dmi/id/sys_vendor")?.trim();
  const model = read(root, "sys/class/dmi/id/product_name")?.trim();
  return { ...(vendor ? { vendor: cut(vendor) } : {}), ...(model ? { model: cut(model) } : {}) };
}

/**
 * The modaliases of the PCI devices, then of the USB devices and
 * interfaces, each once (identical devices share one), in directory order:
 * PCI first, so a machine with more than FACTS_MAX_ITEMS keeps its PCI
 * devices (graphics, network, storage: what driver folders are for).
 */
function modaliases(root: string): string[] {
  const out = new Set<string>();
  for (const bus of ["pci", "usb"]) {
    for (const dev of list(root, `sys/bus/${bus}/devices`)) {
      const alias = read(root, `sys/bus/${bus}/devices/${dev}/modalias`)?.trim();
      if (alias && /^[\x21-\x7e]+$/.test(alias)) out.add(cut(alias));
    }
  }
  return [...out].slice(0, FACTS_MAX_ITEMS);
}

/** The filesystem holding `root` (statfs): what the agent may write there. */
export interface RootFilesystem {
  path: string;
  /** `f_bavail` × `f_bsize`: what is free for the agent without the root-reserved blocks. */
  freeBytes: number;
  totalBytes: number;
  blockSize: number;
  /** When it was measured (ISO). */
  at: string;
}

/** statfs of the root; null when it cannot be read. */
export function rootFilesystem(root: string, now: () => Date = () => new Date()): RootFilesystem | null {
  try {
    const s = statfsSync(root);
    return {
      path: path.resolve(root),
      freeBytes: s.bavail * s.bsize,
      totalBytes: s.blocks * s.bsize,
      blockSize: s.bsize,
      at: now().toISOString(),
    };
  } catch {
    return null;
  }
}

export function gatherFacts(o: FactsOptions = {}): GatheredFacts {
  const root = path.resolve(o.root ?? "/");
  const isHost = root === "/";
  const hostname =
    read(root, "etc/hostname")?.split("\n")[0]?.trim() || (isHost ? os.hostname() : "") || "localhost";
  const rel = parseOsRelease(read(root, "etc/os-release") ?? read(root, "usr/lib/os-release") ?? "");
  const osFacts = {
    ...(rel.ID ? { id: cut(rel.ID) } : {}),
    ...(rel.VERSION_ID ? { versionId: cut(rel.VERSION_ID) } : {}),
    ...(rel.PRETTY_NAME ? { prettyName: cut(rel.PRETTY_NAME) } : {}),
  };
  const kernel = read(root, "proc/sys/kernel/osrelease")?.trim() || os.release();
  const board = dmi(root);
  const aliases = modaliases(root);
  const fs = rootFilesystem(root);
  return {
    hostname: cut(hostname),
    machineId: machineId(root),
    ...(Object.keys(osFacts).length ? { os: osFacts } : {}),
    kernel: cut(kernel),
    arch: cut(os.machine()),
    cpu: cpu(root),
    memoryBytes: memoryBytes(root),
    disks: disks(root),
    macs: macs(root),
    ...(Object.keys(board).length ? { dmi: board } : {}),
    ...(aliases.length ? { modaliases: aliases } : {}),
    ...(o.agentVersion ? { agentVersion: cut(o.agentVersion) } : {}),
    ...(o.agentStateDir ? { agentStateDir: cut(o.agentStateDir) } : {}),
    ...(fs && fs.path.length <= 4096 ? { rootFs: fs } : {}),
  };
}

/**
 * Whether facts differ enough to be sent again: any fact but the root's free
 * space, or the free space by 1/64 of the filesystem or more (it changes at
 * every write; its measuring time alone is no change).
 */
export function factsChanged(sent: GatheredFacts, now: GatheredFacts): boolean {
  const { rootFs: a, ...restA } = sent;
  const { rootFs: b, ...restB } = now;
  if (JSON.stringify(restA) !== JSON.stringify(restB)) return true;
  if (!a || !b) return a !== b;
  if (a.path !== b.path || a.totalBytes !== b.totalBytes || a.blockSize !== b.blockSize) return true;
  return Math.abs(a.freeBytes - b.freeBytes) >= Math.max(1, b.totalBytes / 64);
}

/** How often `strata agent run` reads the facts again (and sends them when they changed). */
export const FACTS_REFRESH_MS = 60 * 60_000;

export interface FactsReporterOptions {
  /** Reads the facts (gatherFacts with the endpoint's root). */
  gather: () => GatheredFacts;
  /** Sends them (`PUT /agent/facts`). */
  send: (facts: EndpointFacts) => Promise<void>;
  /** Default FACTS_REFRESH_MS. */
  everyMs?: number;
  now?: () => number;
}

/**
 * Keeps the server's copy of the facts current: the first `report()` reads
 * and sends them (an endpoint enrolled by an older agent gets its DMI and
 * modaliases on the server this way), later ones read them again once
 * `everyMs` has passed and send them only when they changed. A failed send
 * is tried again at the next call.
 */
export class FactsReporter {
  private sent: GatheredFacts | null = null;
  private checkedAt: number | null = null;
  private readonly everyMs: number;
  private readonly now: () => number;

  constructor(private readonly o: FactsReporterOptions) {
    this.everyMs = o.everyMs ?? FACTS_REFRESH_MS;
    this.now = o.now ?? Date.now;
  }

  /** A report in flight: a call meanwhile waits for it instead of sending again. */
  private running: Promise<boolean> | null = null;

  /** True when the facts were sent by this call. */
  async report(): Promise<boolean> {
    if (this.running)
      return this.running.then(
        () => false,
        () => false,
      );
    this.running = this.reportNow();
    try {
      return await this.running;
    } finally {
      this.running = null;
    }
  }

  private async reportNow(): Promise<boolean> {
    const now = this.now();
    if (this.checkedAt !== null && now - this.checkedAt < this.everyMs) return false;
    const facts = this.o.gather();
    if (facts.machineId === null || (this.sent !== null && !factsChanged(this.sent, facts))) {
      this.checkedAt = now;
      return false;
    }
    await this.o.send({ ...facts, machineId: facts.machineId });
    this.sent = facts;
    this.checkedAt = now;
    return true;
  }
}
