// Chunk-size study: how Strata's FastCDC average chunk size trades dedup of a
// small change against the number of chunks (index entries), measured on the
// two versions (before/after the 1% change) of a data tree, without a
// repository. Uses Strata's own Chunker (packages/core/dist) so the cut
// points are exactly those a repository with these params would produce, and
// zstd level 3 (Strata's default) for the stored-size estimate.
//
// As a library: `const s = new ChunkStudy(); s.scan(dir, files)` before the
// change, `s.rescan(dir, changedFiles)` after it, `s.report()`.
// Standalone: `node bench/chunk-study.mjs DIR` scans DIR, applies the 1%
// change (modifies DIR!) and prints the report.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { Compressor } from "zstd-napi";

const here = path.dirname(fileURLToPath(import.meta.url));

/** The four parameter sets, from `core` (an imported @strata/core dist). */
export const studyParams = ({ DEFAULT_CHUNKER_PARAMS }) =>
  [
    { label: "avg 32K", minSize: 8 * 1024, avgSize: 32 * 1024, maxSize: 256 * 1024 },
    { label: "avg 64K (default)", minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 512 * 1024 },
    { label: "avg 128K", minSize: 32 * 1024, avgSize: 128 * 1024, maxSize: 1024 * 1024 },
    { label: "avg 1M", minSize: 256 * 1024, avgSize: 1024 * 1024, maxSize: 8 * 1024 * 1024 },
  ].map((p) => ({
    ...p,
    params: { ...DEFAULT_CHUNKER_PARAMS, minSize: p.minSize, avgSize: p.avgSize, maxSize: p.maxSize },
  }));

class One {
  constructor(spec, Chunker) {
    this.spec = spec;
    this.chunker = new Chunker(spec.params);
    this.cmp = new Compressor();
    this.cmp.setParameters({ compressionLevel: 3 });
    this.seen = new Map(); // id -> stored (compressed) size
    this.before = null;
    this.ms = 0;
    this.reset();
  }
  reset() {
    this.cur = { chunks: 0, newChunks: 0, newRaw: 0, newStored: 0, logical: 0 };
  }
  /** Chunk one whole file's bytes the way the backup worker does (reset per file). */
  file(buf) {
    const t0 = performance.now();
    const c = this.chunker;
    c.reset();
    let start = 0;
    const cur = this.cur;
    cur.logical += buf.length;
    if (buf.length === 0) return; // empty files have no chunks
    while (start < buf.length) {
      const len = c.next(buf, start, buf.length, true);
      if (len <= 0) break;
      const piece = buf.subarray(start, start + len);
      const id = createHash("sha256").update(piece).digest("hex");
      cur.chunks++;
      if (!this.seen.has(id)) {
        let stored = len;
        if (len >= 64) {
          const z = this.cmp.compress(piece);
          if (z.length < len - (len >> 5)) stored = z.length;
        }
        this.seen.set(id, stored);
        cur.newChunks++;
        cur.newRaw += len;
        cur.newStored += stored;
      }
      start += len;
    }
    this.ms += performance.now() - t0;
  }
}

export class ChunkStudy {
  /** `core`: the imported @strata/core module whose Chunker is studied. */
  constructor(core, specs = studyParams(core)) {
    this.ones = specs.map((s) => new One(s, core.Chunker));
    this.files = 0;
  }
  /** Before the change: every file. `files` are paths relative to dir. */
  scan(dir, files) {
    for (const rel of files) {
      const buf = readFileSync(path.join(dir, rel));
      for (const o of this.ones) o.file(buf);
      this.files++;
    }
    for (const o of this.ones) {
      o.before = o.cur;
      o.reset();
    }
  }
  /** After the change: only the changed files can yield new chunks. */
  rescan(dir, changed) {
    for (const rel of changed) {
      const buf = readFileSync(path.join(dir, rel));
      for (const o of this.ones) o.file(buf);
    }
    for (const o of this.ones) o.after = o.cur;
  }
  report() {
    return this.ones.map((o) => ({
      label: o.spec.label,
      minSize: o.spec.minSize,
      avgSize: o.spec.avgSize,
      maxSize: o.spec.maxSize,
      logicalBytes: o.before.logical,
      chunks: o.before.chunks,
      uniqueChunks: o.before.newChunks,
      uniqueRawBytes: o.before.newRaw,
      uniqueStoredBytes: o.before.newStored,
      meanUniqueChunk: Math.round(o.before.newRaw / Math.max(1, o.before.newChunks)),
      changedFilesChunks: o.after?.chunks ?? null,
      growthChunks: o.after?.newChunks ?? null,
      growthRawBytes: o.after?.newRaw ?? null,
      growthStoredBytes: o.after?.newStored ?? null,
      totalUniqueChunks: o.before.newChunks + (o.after?.newChunks ?? 0),
      cpuMs: Math.round(o.ms),
    }));
  }
}

export function formatStudy(rows, bytesChanged, indexEntryBytes) {
  const MB = (b) => (b / 1e6).toFixed(2);
  const lines = [
    `| avg (min/max) | chunks | unique chunks | unique raw MB | stored MB (zstd 3) | growth from 1% change: new chunks | growth raw MB | growth stored MB | growth / bytes changed | index entries after | est. index MB (${indexEntryBytes} B/entry) |`,
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    const k = (n) => (n >= 1048576 ? `${n / 1048576}M` : `${n / 1024}K`);
    lines.push(
      `| ${r.label} (${k(r.minSize)}/${k(r.maxSize)}) | ${r.chunks} | ${r.uniqueChunks} | ${MB(r.uniqueRawBytes)} | ${MB(r.uniqueStoredBytes)} | ${r.growthChunks} | ${MB(r.growthRawBytes)} | ${MB(r.growthStoredBytes)} | ${Math.round(r.growthRawBytes / Math.max(1, bytesChanged))}× | ${r.totalUniqueChunks} | ${MB(r.totalUniqueChunks * indexEntryBytes)} |`,
    );
  }
  return lines.join("\n");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { listFiles, changeOnePercent } = await import("./lib/data.mjs");
  const dir = path.resolve(process.argv[2] ?? "");
  if (!process.argv[2]) {
    console.error("usage: node bench/chunk-study.mjs DIR   (DIR is modified: 1% of its files change)");
    process.exit(2);
  }
  const core = await import(path.join(here, "../packages/core/dist/index.js"));
  const study = new ChunkStudy(core);
  study.scan(
    dir,
    listFiles(dir).map((f) => f.rel),
  );
  const ch = changeOnePercent(dir, 1);
  study.rescan(
    dir,
    ch.changes.map((c) => c.rel),
  );
  const rows = study.report();
  console.log(JSON.stringify({ bytesChanged: ch.bytesChanged, filesChanged: ch.files, rows }, null, 2));
  console.log(formatStudy(rows, ch.bytesChanged, 100));
}
