// Deterministic benchmark data: generated user data (data set A's second
// half), the 200k small-file tree (data set B) and the "1% change".
// Everything is derived from a seed, so two runs produce byte-identical trees.
import { createCipheriv, createHash } from "node:crypto";
import {
  closeSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import * as path from "node:path";

/** mulberry32: small, fast, deterministic 32-bit PRNG. */
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)), // inclusive
    logUniform: (lo, hi) => Math.floor(Math.exp(Math.log(lo) + next() * (Math.log(hi) - Math.log(lo)))),
  };
}

const seedOf = (...parts) => createHash("sha256").update(parts.join("/")).digest().readUInt32LE(0);

/** Incompressible bytes: AES-128-CTR keystream keyed by the seed. */
export function randomBytesSeeded(n, ...seedParts) {
  const key = createHash("sha256")
    .update(`rand/${seedParts.join("/")}`)
    .digest();
  const c = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  return c.update(Buffer.alloc(n));
}

// A vocabulary of word-like tokens; text picks them with a skewed (Zipf-like)
// distribution, which gives zstd ratios similar to source code / logs (~3x).
let VOCAB = null;
function vocab() {
  if (VOCAB) return VOCAB;
  const r = prng(12345);
  const words = [];
  const letters = "etaoinshrdlcumwfgypbvkjxqz_ETAOINSHRDLCUM0123456789";
  for (let i = 0; i < 8192; i++) {
    const len = r.int(2, 11);
    let w = "";
    for (let j = 0; j < len; j++) w += letters[Math.floor(letters.length * r.next() ** 1.6)];
    words.push(Buffer.from(w));
  }
  for (const p of [
    "{",
    "}",
    "(",
    ");",
    "=",
    "==",
    "return",
    "if",
    "const",
    "#",
    "//",
    "-",
    "*",
    "0",
    "1",
    "true",
    "null",
  ])
    words.push(Buffer.from(p));
  VOCAB = words;
  return words;
}

/** Text-like compressible bytes (lines of skewed-random words). `log` adds timestamps. */
export function textBytes(n, r, log = false) {
  const words = vocab();
  const out = Buffer.allocUnsafe(n + 256);
  let o = 0;
  let t = 1_700_000_000_000 + Math.floor(r.next() * 1e9);
  while (o < n) {
    if (log) {
      t += r.int(1, 5000);
      o += out.write(
        `${new Date(t).toISOString()} host${r.int(1, 9)} app[${r.int(100, 999)}]: `,
        o,
        "latin1",
      );
    } else {
      const indent = r.int(0, 3) * 2;
      out.fill(0x20, o, o + indent);
      o += indent;
    }
    const nw = r.int(3, 14);
    for (let i = 0; i < nw; i++) {
      const w = words[Math.floor(words.length * r.next() ** 3)];
      w.copy(out, o);
      o += w.length;
      out[o++] = i === nw - 1 ? 0x0a : 0x20;
    }
  }
  return out.subarray(0, n);
}

function writeFile(p, buf) {
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, buf);
}

function contentFor(kind, size, r, ...seedParts) {
  if (kind === "text") return textBytes(size, r);
  if (kind === "random") return randomBytesSeeded(size, ...seedParts);
  // base64 of random: partly compressible (6 of 8 bits), like JSON blobs / certs.
  return Buffer.from(
    randomBytesSeeded(Math.ceil((size * 3) / 4) + 3, ...seedParts).toString("base64"),
  ).subarray(0, size);
}

/**
 * ~300 MB of mixed user data in ~17k files under `dir` (scaled by `scale`):
 * five large files (log, random, disk-image-like, text, db-like),
 * ~1.7k medium files (16–192 KiB), ~15k small files (100 B–16 KiB) and ~300
 * exact duplicates. Returns { files, bytes, large: [relative paths] }.
 */
export function genUserData(dir, seed = 1, scale = 1) {
  const r = prng(seedOf("user", seed));
  let files = 0;
  let bytes = 0;
  const put = (rel, buf) => {
    writeFile(path.join(dir, rel), buf);
    files++;
    bytes += buf.length;
  };
  const MB = 1024 * 1024;
  const large = [];
  const big = (rel, b) => {
    put(rel, b);
    large.push(rel);
  };
  const s = (n) => Math.max(1, Math.round(n * scale));
  big("large/app.log", textBytes(s(36 * MB), r, true));
  big("large/archive.bin", randomBytesSeeded(s(28 * MB), seed, "archive"));
  {
    // Disk-image-like: 64 KiB blocks of zeros, random and text.
    const n = s(44 * MB);
    const img = Buffer.alloc(n);
    for (let o = 0, i = 0; o < n; o += 65536, i++) {
      const k = r.next();
      const len = Math.min(65536, n - o);
      if (k < 0.25) continue;
      (k < 0.6 ? randomBytesSeeded(len, seed, "img", i) : textBytes(len, r)).copy(img, o);
    }
    big("large/vm-disk.img", img);
  }
  big("large/dump.sql", textBytes(s(18 * MB), r));
  big("large/store.db", contentFor("b64", s(14 * MB), r, seed, "db"));

  const kinds = (x) => (x < 0.6 ? "text" : x < 0.85 ? "random" : "b64");
  const dirFor = (i, n) => `home/user${i % 8}/proj${Math.floor(i / 8) % Math.max(1, Math.round(n / 320))}`;
  const written = [];
  const nMed = s(1700);
  for (let i = 0; i < nMed; i++) {
    const kind = kinds(r.next());
    const rel = `${dirFor(i, nMed)}/m${i}.${kind === "text" ? "txt" : kind === "random" ? "bin" : "json"}`;
    put(rel, contentFor(kind, r.logUniform(16 * 1024, 192 * 1024), r, seed, "m", i));
    written.push(rel);
  }
  const nSmall = s(15000);
  for (let i = 0; i < nSmall; i++) {
    const kind = kinds(r.next());
    const rel = `${dirFor(i, nSmall)}/s${i}.${kind === "text" ? "c" : kind === "random" ? "dat" : "pem"}`;
    put(rel, contentFor(kind, r.logUniform(100, 16 * 1024), r, seed, "s", i));
    written.push(rel);
  }
  // Exact duplicates (copies of a project file elsewhere), as users have.
  const nDup = s(300);
  for (let i = 0; i < nDup; i++) {
    const src = written[Math.floor(r.next() * written.length)];
    const rel = `home/user${i % 8}/backup-copies/${i}-${path.basename(src)}`;
    put(rel, readWhole(path.join(dir, src)));
  }
  return { files, bytes, large };
}

/** Data set B: `count` small files (32 B–4 KiB, 70% text) in 100×20 directories. */
export function genSmallTree(dir, seed = 1, count = 200_000) {
  const r = prng(seedOf("small", seed));
  let bytes = 0;
  const perDir = Math.max(1, Math.ceil(count / 2000));
  let lastDir = "";
  for (let i = 0; i < count; i++) {
    const d = Math.floor(i / perDir);
    const sub = path.join(
      dir,
      `d${String(Math.floor(d / 20)).padStart(3, "0")}`,
      `e${String(d % 20).padStart(2, "0")}`,
    );
    if (sub !== lastDir) {
      mkdirSync(sub, { recursive: true });
      lastDir = sub;
    }
    const size = r.logUniform(32, 4096);
    const buf = r.next() < 0.7 ? textBytes(size, r) : randomBytesSeeded(size, seed, "B", i);
    writeFileSync(path.join(sub, `f${i}.txt`), buf);
    bytes += size;
  }
  return { files: count, bytes };
}

function readWhole(p) {
  const fd = openSync(p, "r");
  try {
    const size = fstatSync(fd).size;
    const b = Buffer.allocUnsafe(size);
    let o = 0;
    while (o < size) {
      const n = readSync(fd, b, o, size - o, o);
      if (n === 0) break;
      o += n;
    }
    return b.subarray(0, o);
  } finally {
    closeSync(fd);
  }
}

/** All regular files under dir, relative, sorted (bytewise), without following links. */
export function listFiles(dir) {
  const out = [];
  const walk = (rel) => {
    const abs = rel ? path.join(dir, rel) : dir;
    const names = readdirSync(abs).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const st = lstatSync(path.join(dir, r));
      if (st.isDirectory()) walk(r);
      else if (st.isFile()) out.push({ rel: r, size: st.size });
    }
  };
  walk("");
  return out.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
}

/**
 * The "1% change": picks 1% of the regular files (seeded) plus every path in
 * `mustInclude`, and changes a few bytes in each: files ≥ 1 MiB get 16 bytes
 * inverted in the middle (in place); smaller ones get, at random, 16–64
 * bytes appended or 8 bytes inverted in place at a random offset.
 * `include(rel)` limits the candidates (e.g. to a machine's system area).
 * Returns { files, bytesChanged, changes: [{rel, op, offset, len}] }.
 */
export function changeOnePercent(dir, seed = 1, mustInclude = [], include = () => true) {
  const all = listFiles(dir).filter((f) => include(f.rel));
  const r = prng(seedOf("change", seed));
  const n = Math.max(1, Math.round(all.length * 0.01));
  const chosen = new Set(mustInclude.filter((m) => all.some((f) => f.rel === m)));
  // Partial Fisher–Yates over indices.
  const idx = all.map((_, i) => i);
  for (let i = 0; chosen.size < n && i < idx.length; i++) {
    const j = i + Math.floor(r.next() * (idx.length - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
    chosen.add(all[idx[i]].rel);
  }
  const sizes = new Map(all.map((f) => [f.rel, f.size]));
  const changes = [];
  let bytesChanged = 0;
  for (const rel of [...chosen].sort()) {
    const size = sizes.get(rel);
    const fd = openSync(path.join(dir, rel), "r+");
    try {
      let op;
      let offset;
      let len;
      if (size >= 1024 * 1024) {
        op = "middle";
        len = 16;
        offset = Math.floor(size / 2);
      } else if (size < 8 || r.next() < 0.5) {
        op = "append";
        len = r.int(16, 64);
        offset = size;
      } else {
        op = "inplace";
        len = 8;
        offset = r.int(0, size - 8);
      }
      let buf;
      if (op === "append") buf = Buffer.from(textBytes(len, r));
      else {
        buf = Buffer.alloc(len);
        readSync(fd, buf, 0, len, offset);
        for (let i = 0; i < len; i++) buf[i] = ~buf[i] & 0xff; // every byte differs
      }
      writeSync(fd, buf, 0, len, offset);
      bytesChanged += len;
      changes.push({ rel, op, offset, len, size });
    } finally {
      closeSync(fd);
    }
  }
  return { filesTotal: all.length, files: changes.length, bytesChanged, changes };
}
