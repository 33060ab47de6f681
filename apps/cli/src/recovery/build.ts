/**
 * `strata recovery build`: one self-extracting file that runs the recovery
 * program on a bare live system (docs/design/restore.md, "Recovery tool").
 *
 * The file is a POSIX sh header followed by a gzip'd tar. The header
 * unpacks the tar into a private `mktemp -d` directory (removed on exit),
 * then runs the node binary it holds on the bundled program. The tar holds
 * the same layout the program has in this repository, so the paths our
 * packages resolve relative to their own module keep working:
 *
 *     node                                  this process's node binary
 *     dist/recovery.mjs                     the program, one ESM bundle (esbuild)
 *     dist/restore-worker.js                the restore worker threads' script, bundled the same way
 *     native/build/Release/strata_fs.node   @strata/fs's addon (../native/… of dist/)
 *     node_modules/zstd-napi/…              loaded with createRequire("zstd-napi/binding")
 *     node_modules/undici/…                 loaded with createRequire("undici")
 *
 * Native addons cannot be bundled; modules loaded with `createRequire` are
 * invisible to a bundler. Both are marked external and shipped as packages
 * beside the bundle, where Node's ordinary resolution finds them.
 */
import {
  createReadStream,
  createWriteStream,
  existsSync,
  lstatSync,
  readdirSync,
  readFileSync,
  statSync,
} from "node:fs";
import { rename, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import * as path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { createGzip } from "node:zlib";
import { AGENT_VERSION } from "@strata/agent";
import { StrataError } from "@strata/core";
import { headerScript } from "./header.js";
import { type TarEntry, tarEntries } from "./tar.js";

export interface BuildRecoveryOptions {
  /** Where the file is written (atomically: a temporary file, then a rename). */
  out: string;
  /** gzip level, 1 (fast) to 9 (small); default 6. */
  level?: number;
  /** Where build steps are reported. */
  log?: (line: string) => void;
}

export interface BuildRecoveryResult {
  out: string;
  bytes: number;
  version: string;
  nodeVersion: string;
  /** What the payload holds, path → size in bytes (before compression). */
  contents: { path: string; bytes: number }[];
  durationMs: number;
}

/** Packages the bundle leaves out: never used by the recovery program, or loaded at run time from node_modules. */
const EXTERNAL = ["zstd-napi", "zstd-napi/*", "undici", "better-sqlite3", "pg", "pg-copy-streams"];

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/** The recovery program's entry: compiled (dist/recovery/main.js) or, under a TS runner, the source. */
function entryPoint(): string {
  for (const f of ["main.js", "main.ts"]) {
    const p = path.join(here, f);
    if (existsSync(p)) return p;
  }
  throw new StrataError("INTERNAL", `the recovery program is missing from ${here}`, {
    hint: "build the CLI first: `npm run build`",
  });
}

/** A package's directory, as Node resolves it from this module (its package.json may not be exported). */
function packageDir(name: string): string {
  let dir: string;
  try {
    dir = path.dirname(require.resolve(name));
  } catch (e) {
    throw new StrataError("INTERNAL", `cannot find the package ${name}: ${(e as Error).message}`, {
      hint: "install the dependencies: `npm ci`",
    });
  }
  for (; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const pj = path.join(dir, "package.json");
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, "utf8")) as { name?: string }).name === name)
      return dir;
  }
  throw new StrataError("INTERNAL", `cannot find the directory of the package ${name}`);
}

/** The root of this checkout (apps/cli/{src,dist}/recovery → ../../../..). */
const ROOT = path.resolve(here, "../../../..");

/** Whether `file` is one of our modules (not a dependency's). */
function isOurs(file: string): boolean {
  const rel = path.relative(ROOT, file);
  return !rel.startsWith("..") && /^(apps|packages)\//.test(rel) && !rel.includes("node_modules");
}

/** Files of `dir` below `prefix` in the payload, skipping what the program never reads. */
function packageFiles(dir: string, prefix: string, keep: (rel: string) => boolean): TarEntry[] {
  const out: TarEntry[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(path.join(dir, r));
      if (st.isDirectory()) walk(r);
      else if (st.isFile() && keep(r))
        out.push({ name: `${prefix}/${r}`, file: path.join(dir, r), mode: st.mode & 0o777 });
    }
  };
  walk("");
  return out;
}

/**
 * The restore worker threads' script (@strata/repo's restore-worker.js):
 * RestorePool starts it as `./restore-worker.js` beside the module that
 * holds the pool, which in the bundle is dist/recovery.mjs.
 */
function workerEntry(): string {
  const p = path.join(packageDir("@strata/repo"), "dist/restore-worker.js");
  if (!existsSync(p))
    throw new StrataError("INTERNAL", `the restore worker is not built (${p})`, {
      hint: "build the CLI first: `npm run build`",
    });
  return p;
}

async function bundle(entry: string = entryPoint()): Promise<Buffer> {
  let esbuild: typeof import("esbuild");
  try {
    esbuild = await import("esbuild");
  } catch (e) {
    throw new StrataError("UNSUPPORTED", `the bundler (esbuild) is not installed: ${(e as Error).message}`, {
      hint: "install the CLI's dependencies (`npm ci`); esbuild is one of them",
    });
  }
  const r = await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    platform: "node",
    format: "esm",
    target: "node20",
    external: EXTERNAL,
    minifySyntax: true,
    legalComments: "none",
    logLevel: "silent",
    // CommonJS dependencies (commander) call require(); an ESM bundle has none of its own.
    banner: {
      js: 'import { createRequire as __strataCreateRequire } from "node:module"; globalThis.require ??= __strataCreateRequire(import.meta.url);',
    },
    plugins: [
      {
        // Our packages are side-effect free except where they load an addon
        // they use: without this, esbuild would keep every module the
        // entry reaches through an index (the catalog, and better-sqlite3
        // with it) although the recovery program never calls them.
        name: "strata-side-effect-free",
        setup(b) {
          // Bare `@strata/…` names, and relative imports between our own
          // modules (an index re-exporting ./postgres.js must not keep it).
          const ours = (a: { path: string; importer: string }) =>
            a.path.startsWith("@strata/") || (a.path.startsWith(".") && isOurs(a.importer));
          b.onResolve({ filter: /^(@strata\/|\.)/ }, async (args) => {
            if (args.pluginData === "strata" || !ours(args)) return undefined;
            const r = await b.resolve(args.path, {
              kind: args.kind,
              resolveDir: args.resolveDir,
              importer: args.importer,
              pluginData: "strata",
            });
            return r.errors.length ? { errors: r.errors } : { path: r.path, sideEffects: false };
          });
        },
      },
    ],
  });
  const file = r.outputFiles[0];
  if (!file) throw new StrataError("INTERNAL", "esbuild produced no output");
  return Buffer.from(file.contents);
}

/** What goes into the payload, in tar order. */
async function payload(node: string): Promise<TarEntry[]> {
  const fsAddon = path.join(packageDir("@strata/fs"), "native/build/Release/strata_fs.node");
  if (!existsSync(fsAddon)) {
    throw new StrataError("INTERNAL", `the @strata/fs addon is not built (${fsAddon})`, {
      hint: "run `npm run build:native -w @strata/fs`",
    });
  }
  const zstd = packageDir("zstd-napi");
  if (!existsSync(path.join(zstd, "build/Release/binding.node"))) {
    throw new StrataError("INTERNAL", `zstd-napi's addon is not built (${zstd}/build/Release/binding.node)`, {
      hint: "run `npm rebuild zstd-napi`",
    });
  }
  const undici = packageDir("undici");
  const js = (r: string) => r === "package.json" || r.endsWith(".js");
  return [
    { name: "node", file: node, mode: 0o755 },
    { name: "dist/recovery.mjs", data: await bundle(), mode: 0o644 },
    // The restore workers' script, an ES module (dist/package.json says so for .js files).
    { name: "dist/restore-worker.js", data: await bundle(workerEntry()), mode: 0o644 },
    { name: "dist/package.json", data: Buffer.from('{ "type": "module" }\n'), mode: 0o644 },
    { name: "native/build/Release/strata_fs.node", file: fsAddon, mode: 0o755 },
    ...packageFiles(
      zstd,
      "node_modules/zstd-napi",
      (r) => js(r) && !r.startsWith("deps/") && !r.startsWith("build/"),
    ),
    {
      name: "node_modules/zstd-napi/build/Release/binding.node",
      file: path.join(zstd, "build/Release/binding.node"),
      mode: 0o755,
    },
    ...packageFiles(
      undici,
      "node_modules/undici",
      (r) => js(r) && !r.startsWith("docs/") && !r.startsWith("types/") && !r.startsWith("scripts/"),
    ),
  ];
}

export async function buildRecovery(o: BuildRecoveryOptions): Promise<BuildRecoveryResult> {
  const started = Date.now();
  const log = o.log ?? (() => {});
  const level = o.level ?? 6;
  if (!Number.isInteger(level) || level < 1 || level > 9)
    throw new StrataError("INVALID_ARGUMENT", `gzip level ${level} is not 1 to 9`);
  const out = path.resolve(o.out);
  const node = process.execPath;
  if (!existsSync(path.dirname(out))) {
    throw new StrataError("NOT_FOUND", `the directory of ${out} does not exist`, { subject: out });
  }
  log("bundling the recovery program");
  const entries = await payload(node);
  const contents = entries.map((e) => ({
    path: e.name,
    bytes: e.data ? e.data.length : statSync(e.file!).size,
  }));
  log(`writing ${out} (gzip -${level})`);
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    const w = createWriteStream(tmp, { mode: 0o755 });
    w.write(headerScript(AGENT_VERSION));
    await pipeline(Readable.from(tarEntries(entries, createReadStream)), createGzip({ level }), w);
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { force: true });
    if (e instanceof StrataError) throw e;
    throw new StrataError("IO_ERROR", `cannot write ${out}: ${(e as Error).message}`, {
      subject: out,
      cause: e,
    });
  }
  return {
    out,
    bytes: statSync(out).size,
    version: AGENT_VERSION,
    nodeVersion: process.version,
    contents,
    durationMs: Date.now() - started,
  };
}
