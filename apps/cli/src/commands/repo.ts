import * as path from "node:path";
import { applyRetention, type FsNode, isEmptyPolicy, type RetentionPolicy, StrataError } from "@strata/core";
import { displayPath } from "@strata/fs";
import {
  backup,
  check,
  DEFAULT_COMPRESSION_LEVEL,
  prune,
  type Repository,
  restore,
  type SnapshotRecord,
} from "@strata/repo";
import type { Command } from "commander";
import { closeRepo, type GlobalOptions, initRepo, openFileCache, openRepo, repoDir } from "../context.js";
import { formatBytes, Progress, printJson } from "../output.js";

type Opts = GlobalOptions & Record<string, unknown>;

/** Run `fn` with the repository open; global options come from the root command. */
function withRepo(cmd: Command, fn: (repo: Repository, o: Opts) => Promise<number | undefined>) {
  return async () => {
    const o = cmd.optsWithGlobals() as Opts;
    const repo = await openRepo(o);
    try {
      const code = await fn(repo, o);
      if (code) process.exitCode = code;
    } finally {
      await closeRepo(repo);
    }
  };
}

const collect = (v: string, prev: string[] = []) => [...prev, v];
const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new StrataError("INVALID_ARGUMENT", `${v} is not a non-negative integer`);
  return n;
};

export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(s.trim());
  if (!m)
    throw new StrataError("INVALID_ARGUMENT", `${s} is not a duration`, {
      hint: "use e.g. 0, 30s, 15m, 2h, 1d",
    });
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? "s") as "s"];
  return Number(m[1]) * mult;
}

function snapshotRow(s: SnapshotRecord) {
  return {
    id: s.id,
    short: s.id.slice(0, 8),
    time: s.time.toISOString(),
    hostname: s.hostname,
    paths: s.paths,
    tags: s.tags,
    kind: s.kind,
    tree: s.tree,
    parent: s.parent,
    stats: s.stats,
  };
}

/** "SNAPSHOT[:PATH]" → snapshot ref and optional subpath. */
function splitRef(ref: string): { ref: string; sub?: string } {
  const i = ref.indexOf(":");
  return i < 0 ? { ref } : { ref: ref.slice(0, i), sub: ref.slice(i + 1) || "/" };
}

function typeChar(n: FsNode): string {
  return { file: "-", dir: "d", symlink: "l", fifo: "p", socket: "s", chardev: "c", blockdev: "b" }[n.type];
}
function modeString(n: FsNode): string {
  const m = n.mode;
  const rwx = (bits: number, s: boolean, sc: string) =>
    `${bits & 4 ? "r" : "-"}${bits & 2 ? "w" : "-"}${s ? (bits & 1 ? sc : sc.toUpperCase()) : bits & 1 ? "x" : "-"}`;
  return (
    typeChar(n) +
    rwx((m >> 6) & 7, (m & 0o4000) !== 0, "s") +
    rwx((m >> 3) & 7, (m & 0o2000) !== 0, "s") +
    rwx(m & 7, (m & 0o1000) !== 0, "t")
  );
}

export function registerRepoCommands(program: Command): void {
  const repoCmd = program.command("repo").description("create and inspect repositories");
  const init = repoCmd
    .command("init")
    .description("create a new encrypted repository in --repo DIR")
    .option(
      "--chunk-avg <bytes>",
      "average chunk size, a power of two (default 131072); fixed for the repository's life",
      int,
    )
    .option(
      "--compression-level <n>",
      `zstd level 1..19 for new blobs (default ${DEFAULT_COMPRESSION_LEVEL}); higher is smaller and slower to back up`,
      int,
    )
    .action(async () => {
      const o = init.optsWithGlobals() as Opts;
      const avg = o.chunkAvg as number | undefined;
      const level = o.compressionLevel as number | undefined;
      if (level !== undefined && !(level >= 1 && level <= 19)) {
        throw new StrataError("INVALID_ARGUMENT", `--compression-level ${level} is outside 1..19`, {
          hint: `leave it out for the default (${DEFAULT_COMPRESSION_LEVEL})`,
        });
      }
      // min = avg/4 and max = avg*8, the ratios of the defaults.
      const repo = await initRepo(o, {
        ...(avg ? { chunker: { minSize: avg / 4, avgSize: avg, maxSize: avg * 8 } } : {}),
        ...(level !== undefined ? { compressionLevel: level } : {}),
      });
      try {
        const out = {
          id: repo.config.id,
          location: repoDir(o),
          chunker: repo.config.chunker,
          compression: repo.config.compression,
        };
        if (o.json) printJson(out);
        else process.stdout.write(`created repository ${out.id} at ${out.location}\n`);
      } finally {
        await closeRepo(repo);
      }
    });

  const bk = program
    .command("backup")
    .description("back up PATHs into a new snapshot (exit 3 if some files could not be read)")
    .argument("<path...>", "files or directories to back up")
    .option("--tag <tag>", "tag the snapshot (repeatable)", collect, [])
    .option(
      "--exclude <pattern>",
      "skip matching paths: a glob on the name, or on the absolute path if it contains / (repeatable)",
      collect,
      [],
    )
    .option("--host <name>", "hostname recorded in the snapshot")
    .option("--no-cache", "do not use the local file cache (re-read every file)")
    .option("--threads <n>", "worker threads for chunking and compression", int);
  bk.action(async (paths: string[]) =>
    withRepo(bk, async (repo, o) => {
      const progress = new Progress(!o.json);
      const cache = o.cache === false ? null : await openFileCache(repo, paths);
      try {
        const res = await backup(repo, {
          paths,
          tags: o.tag as string[],
          excludes: o.exclude as string[],
          hostname: o.host as string | undefined,
          fileCache: cache,
          threads: o.threads as number | undefined,
          onProgress: (p) =>
            progress.update(
              `${p.files} files, ${formatBytes(p.bytesRead)} read, ${formatBytes(p.bytesAdded)} added, ${p.errors} errors  ${p.current}`,
            ),
          onError: (e) => {
            progress.done();
            if (!o.json) process.stderr.write(`warning: ${e.path}: ${e.message}\n`);
          },
        });
        progress.done();
        const s = res.snapshot.stats;
        if (o.json) printJson({ snapshot: snapshotRow(res.snapshot), errors: res.errors });
        else {
          process.stdout.write(
            `${[
              `snapshot ${res.snapshot.id.slice(0, 8)} saved`,
              `files:  ${s.filesNew} new, ${s.filesChanged} changed, ${s.filesUnchanged} unchanged (${s.dirs} directories)`,
              `read:   ${formatBytes(s.bytesRead)}, added to repository: ${formatBytes(s.bytesAdded)}`,
              `total:  ${s.totalFiles} files, ${formatBytes(s.totalBytes)} in ${(s.durationMs / 1000).toFixed(1)} s`,
              ...(res.errors.length
                ? [
                    `${res.errors.length} files could not be read (listed above); they are not in the snapshot`,
                  ]
                : []),
            ].join("\n")}\n`,
          );
        }
        return res.errors.length ? 3 : 0;
      } finally {
        cache?.close();
      }
    })(),
  );

  const snaps = program.command("snapshots").description("list snapshots");
  snaps.action(
    withRepo(snaps, async (repo, o) => {
      const all = await repo.catalog.listSnapshots();
      if (o.json) printJson(all.map(snapshotRow));
      else {
        process.stdout.write(
          `${"ID".padEnd(10)}${"Time".padEnd(22)}${"Host".padEnd(16)}${"Size".padStart(12)}  Paths\n`,
        );
        for (const s of all) {
          process.stdout.write(
            `${s.id.slice(0, 8).padEnd(10)}${s.time.toISOString().replace("T", " ").slice(0, 19).padEnd(22)}${s.hostname.slice(0, 15).padEnd(16)}${formatBytes(s.stats.totalBytes).padStart(12)}  ${s.paths.join(", ")}${s.tags.length ? `  [${s.tags.join(",")}]` : ""}\n`,
          );
        }
        process.stdout.write(`${all.length} snapshots\n`);
      }
      return 0;
    }),
  );

  const ls = program
    .command("ls")
    .description("list files in a snapshot (SNAPSHOT is latest, an id or a unique id prefix)")
    .argument("<snapshot>")
    .argument("[path]", "directory inside the snapshot", "/")
    .option("-l, --long", "show mode, owner, size and time");
  ls.action(async (ref: string, sub: string) =>
    withRepo(ls, async (repo, o) => {
      const snap = await repo.resolveSnapshot(ref);
      const { tree, prefix } = await findSubtree(repo, snap, sub);
      const rows: Record<string, unknown>[] = [];
      for await (const { path: p, node } of repo.walk(tree, prefix)) {
        if (o.json) {
          rows.push({
            path: p,
            type: node.type,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            size: node.size,
            mtime: new Date(Number(node.mtimeNs / 1000000n)).toISOString(),
            ...(node.target ? { target: displayPath(node.target) } : {}),
          });
        } else if (o.long) {
          process.stdout.write(
            `${modeString(node)} ${String(node.uid).padStart(5)} ${String(node.gid).padStart(5)} ${String(node.size).padStart(12)} ${new Date(Number(node.mtimeNs / 1000000n)).toISOString().slice(0, 19)} ${p}${node.target ? ` -> ${displayPath(node.target)}` : ""}\n`,
          );
        } else process.stdout.write(`${p}\n`);
      }
      if (o.json) printJson(rows);
      return 0;
    })(),
  );

  const diff = program
    .command("diff")
    .description("show what changed between two snapshots (+ added, - removed, M content, U metadata)")
    .argument("<snap1>")
    .argument("<snap2>");
  diff.action(async (a: string, b: string) =>
    withRepo(diff, async (repo, o) => {
      const s1 = await repo.resolveSnapshot(a);
      const s2 = await repo.resolveSnapshot(b);
      const changes: { change: string; path: string }[] = [];
      await diffTrees(repo, s1.tree, s2.tree, "", (change, p) => {
        if (o.json) changes.push({ change, path: p });
        else process.stdout.write(`${change}    ${p}\n`);
      });
      if (o.json) printJson(changes);
      return 0;
    })(),
  );

  const rs = program
    .command("restore")
    .description("restore SNAPSHOT[:PATH] into --target DIR")
    .argument(
      "<snapshot>",
      "latest, an id, or a unique prefix; SNAPSHOT:/some/dir restores that directory's contents",
    )
    .requiredOption("--target <dir>", "directory to restore into (created if missing)")
    .option("--include <path>", "restore only this path of the snapshot (repeatable)", collect, []);
  rs.action(async (refArg: string) =>
    withRepo(rs, async (repo, o) => {
      const { ref, sub } = splitRef(refArg);
      const snap = await repo.resolveSnapshot(ref);
      const progress = new Progress(!o.json);
      const res = await restore(repo, snap, {
        target: o.target as string,
        includes: o.include as string[],
        subpath: sub,
        onProgress: (p) => progress.update(`${p.files} files, ${formatBytes(p.bytes)} written  ${p.current}`),
        onError: (e) => {
          progress.done();
          if (!o.json) process.stderr.write(`error: ${e.path}: ${e.message}\n`);
        },
      });
      progress.done();
      if (o.json) printJson({ snapshot: snap.id, target: path.resolve(o.target as string), ...res });
      else
        process.stdout.write(
          `restored ${res.files} files, ${res.dirs} directories, ${formatBytes(res.bytes)} from ${snap.id.slice(0, 8)} to ${path.resolve(o.target as string)}${res.errors.length ? `; ${res.errors.length} errors (listed above)` : ""}\n`,
        );
      return res.errors.length ? 3 : 0;
    })(),
  );

  const ck = program
    .command("check")
    .description("verify the repository; names every damaged pack, blob, snapshot and file")
    .option("--read-data", "read and verify all data")
    .option("--read-data-subset <percent>", "read and verify N% of packs, e.g. 10%");
  ck.action(
    withRepo(ck, async (repo, o) => {
      let subset: number | undefined;
      if (o.readDataSubset !== undefined) {
        const m = /^(\d+(?:\.\d+)?)%?$/.exec(String(o.readDataSubset));
        if (!m || Number(m[1]) > 100)
          throw new StrataError("INVALID_ARGUMENT", `bad --read-data-subset ${String(o.readDataSubset)}`, {
            hint: "use a percentage such as 10%",
          });
        subset = Number(m[1]) / 100;
      }
      const progress = new Progress(!o.json);
      const r = await check(repo, {
        readData: o.readData === true,
        readDataSubset: subset,
        onProgress: (p) => progress.update(`checking ${p.phase}: ${p.done}/${p.total}`),
      });
      progress.done();
      if (o.json) printJson(r);
      else {
        for (const w of r.warnings) process.stdout.write(`warning: ${w}\n`);
        for (const e of r.errors) process.stdout.write(`error: ${e}\n`);
        for (const a of r.affected)
          process.stdout.write(`damaged: snapshot ${a.snapshot.slice(0, 8)} file ${a.path}: ${a.problem}\n`);
        process.stdout.write(
          `${r.packs} packs (${r.packsRead} read), ${r.snapshots} snapshots, ${r.trees} trees checked: ${r.ok ? "no errors" : `${r.errors.length} errors, ${r.affected.length} damaged files`}\n`,
        );
      }
      return r.ok ? 0 : 1;
    }),
  );

  const fg = program
    .command("forget")
    .description("remove snapshots not kept by the retention rules (add --prune to free space)")
    .option("--keep-last <n>", "keep the newest N snapshots", int)
    .option("--keep-hourly <n>", "keep the newest snapshot of each of the last N hours", int)
    .option("--keep-daily <n>", "… of each of the last N days", int)
    .option("--keep-weekly <n>", "… of each of the last N weeks", int)
    .option("--keep-monthly <n>", "… of each of the last N months", int)
    .option("--keep-yearly <n>", "… of each of the last N years", int)
    .option("--dry-run", "only show what would be removed")
    .option(
      "--group-by <keys>",
      "apply the rules per group: host,paths (default), host, paths or none",
      "host,paths",
    )
    .option("--prune", "run prune afterwards")
    .option("--grace <duration>", "prune: wait this long before deleting doomed packs", "15m");
  fg.action(
    withRepo(fg, async (repo, o) => {
      const policy: RetentionPolicy = {
        last: o.keepLast as number,
        hourly: o.keepHourly as number,
        daily: o.keepDaily as number,
        weekly: o.keepWeekly as number,
        monthly: o.keepMonthly as number,
        yearly: o.keepYearly as number,
      };
      if (isEmptyPolicy(policy)) {
        throw new StrataError(
          "INVALID_ARGUMENT",
          "no --keep-* rule given; refusing to remove every snapshot",
          {
            hint: "give at least one of --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly",
          },
        );
      }
      const all = await repo.catalog.listSnapshots();
      // Rules apply within each group (like restic): by default one group per
      // host and set of paths, so a backup of /etc never pushes out /home's.
      const groupBy = String(o.groupBy ?? "host,paths");
      if (!/^(none|host|paths|host,paths|paths,host)$/.test(groupBy)) {
        throw new StrataError("INVALID_ARGUMENT", `bad --group-by ${groupBy}`, {
          hint: "use host,paths, host, paths or none",
        });
      }
      const key = (x: SnapshotRecord) =>
        [
          groupBy.includes("host") ? x.hostname : "",
          groupBy.includes("paths") ? x.paths.join("\0") : "",
        ].join("\n");
      const groups = new Map<string, SnapshotRecord[]>();
      for (const x of all) groups.set(key(x), [...(groups.get(key(x)) ?? []), x]);
      const d: ReturnType<typeof applyRetention<SnapshotRecord>> = { keep: [], remove: [] };
      for (const g of groups.values()) {
        const r = applyRetention(g, policy);
        d.keep.push(...r.keep);
        d.remove.push(...r.remove);
      }
      if (!o.dryRun && d.remove.length) await repo.removeSnapshots(d.remove.map((s) => s.id));
      let pr = null;
      if (o.prune && !o.dryRun) pr = await prune(repo, { graceMs: parseDuration(o.grace as string) });
      if (o.json)
        printJson({
          keep: d.keep.map((k) => ({ id: k.item.id, reasons: k.reasons })),
          remove: d.remove.map((s) => s.id),
          prune: pr,
        });
      else {
        for (const k of d.keep)
          process.stdout.write(
            `keep   ${k.item.id.slice(0, 8)} ${k.item.time.toISOString()} (${k.reasons.join(", ")})\n`,
          );
        for (const s of d.remove)
          process.stdout.write(
            `${o.dryRun ? "would remove" : "remove"} ${s.id.slice(0, 8)} ${s.time.toISOString()}\n`,
          );
        if (pr) printPrune(pr);
      }
      return 0;
    }),
  );

  const pr = program
    .command("prune")
    .description("free space held by data no snapshot uses (doomed packs are deleted after --grace)")
    .option("--grace <duration>", "wait this long after dooming a pack before deleting it", "15m")
    .option("--max-unused <percent>", "repack packs with more unused bytes than this", "10");
  pr.action(
    withRepo(pr, async (repo, o) => {
      const progress = new Progress(!o.json);
      const r = await prune(repo, {
        graceMs: parseDuration(o.grace as string),
        maxUnused: Number(o.maxUnused) / 100,
        onProgress: (p) => progress.update(p),
      });
      progress.done();
      if (o.json) printJson(r);
      else printPrune(r);
      return 0;
    }),
  );

  const st = program.command("stats").description("repository size, deduplication and counts");
  st.action(
    withRepo(st, async (repo, o) => {
      const c = await repo.catalog.countBlobs();
      const snaps = await repo.catalog.listSnapshots();
      let packs = 0;
      let packBytes = 0;
      for await (const p of repo.catalog.listPacks()) {
        packs++;
        packBytes += p.size;
      }
      const logical = snaps.reduce((a, s) => a + s.stats.totalBytes, 0);
      const out = {
        snapshots: snaps.length,
        packs,
        packBytes,
        chunks: c.chunks,
        trees: c.trees,
        rawBytes: c.rawBytes,
        storedBytes: c.storedBytes,
        logicalBytes: logical,
        dedupRatio: c.rawBytes ? logical / c.rawBytes : 0,
        compressionRatio: c.storedBytes ? c.rawBytes / c.storedBytes : 0,
      };
      if (o.json) printJson(out);
      else
        process.stdout.write(
          `${[
            `snapshots:        ${out.snapshots}`,
            `packs:            ${out.packs} (${formatBytes(out.packBytes)})`,
            `chunks:           ${out.chunks}, trees: ${out.trees}`,
            `unique data:      ${formatBytes(out.rawBytes)} (stored ${formatBytes(out.storedBytes)}, compression ${out.compressionRatio.toFixed(2)}x)`,
            `all snapshots:    ${formatBytes(out.logicalBytes)} (dedup ${out.dedupRatio.toFixed(2)}x)`,
          ].join("\n")}\n`,
        );
      return 0;
    }),
  );
}

function printPrune(r: Awaited<ReturnType<typeof prune>>): void {
  process.stdout.write(
    `prune: ${r.packsDoomed} packs doomed (${formatBytes(r.bytesDoomed)}), ${r.packsRepacked} repacked, ${r.packsDeleted} deleted (${formatBytes(r.bytesDeleted)} freed), ${r.packsWaiting} waiting out the grace period, ${r.packsRevived} revived\n`,
  );
}

async function findSubtree(repo: Repository, snap: SnapshotRecord, sub: string) {
  let tree = snap.tree;
  let prefix = "";
  for (const seg of sub.split("/").filter(Boolean)) {
    const nodes = await repo.loadTree(tree);
    const n = nodes.find((x) => x.name.equals(Buffer.from(seg)));
    if (n?.type !== "dir" || !n.subtree) {
      throw new StrataError("NOT_FOUND", `${sub} is not a directory in snapshot ${snap.id.slice(0, 8)}`);
    }
    tree = n.subtree;
    prefix += `/${seg}`;
  }
  return { tree, prefix };
}

async function diffTrees(
  repo: Repository,
  a: import("@strata/core").TreeId | null,
  b: import("@strata/core").TreeId | null,
  prefix: string,
  emit: (change: string, path: string) => void,
): Promise<void> {
  if (a === b) return; // identical subtrees share ids: nothing to walk
  const na = a ? await repo.loadTree(a) : [];
  const nb = b ? await repo.loadTree(b) : [];
  let i = 0;
  let j = 0;
  while (i < na.length || j < nb.length) {
    const x = na[i];
    const y = nb[j];
    const cmp = !x ? 1 : !y ? -1 : Buffer.compare(x.name, y.name);
    if (cmp < 0) {
      emit("-", `${prefix}/${displayPath(x!.name)}`);
      if (x!.type === "dir")
        await diffTrees(repo, x!.subtree ?? null, null, `${prefix}/${displayPath(x!.name)}`, emit);
      i++;
    } else if (cmp > 0) {
      emit("+", `${prefix}/${displayPath(y!.name)}`);
      if (y!.type === "dir")
        await diffTrees(repo, null, y!.subtree ?? null, `${prefix}/${displayPath(y!.name)}`, emit);
      j++;
    } else {
      const p = `${prefix}/${displayPath(x!.name)}`;
      if (x!.type !== y!.type) emit("T", p);
      else if (x!.type === "dir") {
        if (x!.mode !== y!.mode || x!.uid !== y!.uid || x!.gid !== y!.gid) emit("U", p);
        await diffTrees(repo, x!.subtree ?? null, y!.subtree ?? null, p, emit);
      } else {
        const ca = JSON.stringify(x!.content ?? null) + (x!.target?.toString("hex") ?? "");
        const cb = JSON.stringify(y!.content ?? null) + (y!.target?.toString("hex") ?? "");
        if (ca !== cb) emit("M", p);
        else if (
          x!.mode !== y!.mode ||
          x!.uid !== y!.uid ||
          x!.gid !== y!.gid ||
          x!.mtimeNs !== y!.mtimeNs ||
          JSON.stringify(x!.xattrs) !== JSON.stringify(y!.xattrs)
        )
          emit("U", p);
      }
      i++;
      j++;
    }
  }
}
