import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { ChangeWatcher, type DirtySet } from "../src/watcher.js";
import { cleanup, tmp, waitFor } from "./helpers.js";

const open: ChangeWatcher[] = [];
async function start(opts: Parameters<typeof ChangeWatcher.start>[0]): Promise<ChangeWatcher> {
  const w = await ChangeWatcher.start(opts);
  open.push(w);
  // The first set is always full: nothing was watched before.
  expect((await w.take()).kind).toBe("full");
  return w;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((w) => w.close()));
});
afterAll(cleanup);

const dirsOf = (s: DirtySet) => (s.kind === "dirs" ? s.dirs : undefined);
const hasDir = (w: ChangeWatcher, d: string) => dirsOf(w.peek())?.includes(d);
const watches = (w: ChangeWatcher) => w.stats().watches;
const fullSet = (w: ChangeWatcher) => (w.peek().kind === "full" ? w.peek() : undefined);

describe("ChangeWatcher on real files", () => {
  it("reports the directories where files were created, changed, removed or re-moded", async () => {
    const root = tmp();
    mkdirSync(path.join(root, "a/b"), { recursive: true });
    mkdirSync(path.join(root, "c"));
    writeFileSync(path.join(root, "c/old"), "x");
    const w = await start({ roots: [root] });
    expect(w.peek()).toEqual({ kind: "dirs", dirs: [] });
    expect(watches(w)).toBe(4); // root, a, a/b, c: one per directory

    writeFileSync(path.join(root, "a/b/new.txt"), "hello");
    rmSync(path.join(root, "c/old"));
    chmodSync(path.join(root, "a"), 0o700);
    await waitFor("three dirty directories", () => dirsOf(w.peek())?.length === 3);
    expect(await w.take()).toEqual({
      kind: "dirs",
      dirs: [root, path.join(root, "a/b"), path.join(root, "c")].sort(),
    });
    // take() starts a new set.
    expect(w.peek()).toEqual({ kind: "dirs", dirs: [] });
    writeFileSync(path.join(root, "a/b/new.txt"), "changed");
    await waitFor("the changed file's directory", () => hasDir(w, path.join(root, "a/b")));
    expect(dirsOf(w.peek())).toEqual([path.join(root, "a/b")]);
  });

  it("does not watch what ignoreDirs and skipDir name, now or when it appears later, and drops what shouldIgnore rejects", async () => {
    const root = tmp();
    for (const d of ["cache", "skip/deep", "tmp/x", "home"])
      mkdirSync(path.join(root, d), { recursive: true });
    const w = await start({
      roots: [root],
      shouldIgnore: (p) => p === path.join(root, "cache"),
      ignoreDirs: [path.join(root, "skip")],
      skipDir: (d) => path.basename(d) === "tmp",
    });
    expect(watches(w)).toBe(3); // root, cache, home
    writeFileSync(path.join(root, "cache/blob"), "x");
    writeFileSync(path.join(root, "skip/deep/blob"), "x");
    writeFileSync(path.join(root, "tmp/x/blob"), "x");
    // A directory the policy excludes that appears later is not watched either.
    mkdirSync(path.join(root, "home/tmp/y"), { recursive: true });
    mkdirSync(path.join(root, "home/docs"));
    await waitFor("home/docs watched", () => watches(w) === 4);
    writeFileSync(path.join(root, "home/tmp/y/blob"), "x");
    // Written last: once it is seen, the writes before it were too.
    writeFileSync(path.join(root, "home/docs/doc"), "x");
    await waitFor("the sentinel", () => hasDir(w, path.join(root, "home/docs")));
    expect(dirsOf(await w.take())).toEqual([path.join(root, "home"), path.join(root, "home/docs")]);
    expect(watches(w)).toBe(4);
  });

  it("collapses to a full rescan when more than maxDirs directories changed", async () => {
    const root = tmp();
    for (let i = 0; i < 6; i++) mkdirSync(path.join(root, `d${i}`));
    const w = await start({ roots: [root], maxDirs: 4 });
    for (let i = 0; i < 6; i++) writeFileSync(path.join(root, `d${i}`, "f"), "x");
    const set = await waitFor("full", () => fullSet(w));
    expect(set).toEqual({ kind: "full", reason: "more than 4 directories changed" });
    await w.take();
    writeFileSync(path.join(root, "d0/g"), "x");
    await waitFor("a fresh set after take", () => hasDir(w, path.join(root, "d0")));
  });

  it("puts back the set of an upload that did not finish", async () => {
    const root = tmp();
    mkdirSync(path.join(root, "x"));
    mkdirSync(path.join(root, "y"));
    const w = await start({ roots: [root], maxDirs: 3 });
    writeFileSync(path.join(root, "x/f"), "1");
    await waitFor("x", () => hasDir(w, path.join(root, "x")));
    const taken = await w.take();
    writeFileSync(path.join(root, "y/f"), "1");
    await waitFor("y", () => hasDir(w, path.join(root, "y")));
    w.putBack(taken);
    expect(dirsOf(w.peek())).toEqual([path.join(root, "x"), path.join(root, "y")]);
    w.putBack({ kind: "dirs", dirs: ["/p", "/q"] });
    expect(w.peek()).toEqual({ kind: "full", reason: "more than 3 directories changed" });
  });

  it("watches new directories and whole new trees (mkdir -p, moved in), and reports them and what is in them", async () => {
    const base = tmp();
    const root = path.join(base, "root");
    mkdirSync(path.join(root, "home"), { recursive: true });
    mkdirSync(path.join(base, "outside/tree/sub/deeper"), { recursive: true });
    writeFileSync(path.join(base, "outside/tree/sub/deeper/old"), "x");
    const w = await start({ roots: [root] });
    expect(watches(w)).toBe(2);

    mkdirSync(path.join(root, "home/plain"));
    writeFileSync(path.join(root, "home/plain/f"), "x");
    await waitFor("the plain directory's file", () => hasDir(w, path.join(root, "home/plain")));
    expect(dirsOf(await w.take())).toEqual([path.join(root, "home"), path.join(root, "home/plain")]);

    // A tree moved in: every directory in it watched, each dirty (what was in it was never reported).
    renameSync(path.join(base, "outside/tree"), path.join(root, "home/tree"));
    await waitFor("the moved-in tree watched", () => watches(w) === 6);
    expect(dirsOf(await w.take())).toEqual(
      ["home", "home/tree", "home/tree/sub", "home/tree/sub/deeper"].map((d) => path.join(root, d)),
    );
    writeFileSync(path.join(root, "home/tree/sub/deeper/f"), "x");
    await waitFor("a change deep in the moved-in tree", () =>
      hasDir(w, path.join(root, "home/tree/sub/deeper")),
    );
    expect(dirsOf(await w.take())).toEqual([path.join(root, "home/tree/sub/deeper")]);

    // mkdir -p with files made at once: whatever the timing, all of it is reported and watched.
    mkdirSync(path.join(root, "home/p/q/r"), { recursive: true });
    writeFileSync(path.join(root, "home/p/q/r/early"), "x");
    await waitFor("p, q and r watched", () => watches(w) === 9);
    const set = dirsOf(await w.take());
    expect(set).toEqual(
      expect.arrayContaining(["home", "home/p", "home/p/q", "home/p/q/r"].map((d) => path.join(root, d))),
    );
    writeFileSync(path.join(root, "home/p/q/r/f"), "x");
    await waitFor("a change in a directory made by mkdir -p", () => hasDir(w, path.join(root, "home/p/q/r")));
  });

  it("follows a directory renamed within the area, and stops watching one moved away or deleted", async () => {
    const base = tmp();
    const root = path.join(base, "root");
    mkdirSync(path.join(root, "a/old/inner"), { recursive: true });
    mkdirSync(path.join(root, "b"));
    mkdirSync(path.join(root, "gone/x/y"), { recursive: true });
    mkdirSync(path.join(root, "away/z"), { recursive: true });
    mkdirSync(path.join(base, "elsewhere"));
    const w = await start({ roots: [root] });
    expect(watches(w)).toBe(10);

    renameSync(path.join(root, "a/old"), path.join(root, "b/new"));
    writeFileSync(path.join(root, "b/new/inner/f"), "x");
    await waitFor("the renamed directory's change", () => hasDir(w, path.join(root, "b/new/inner")));
    // Its watches followed it: nothing below it is dirty but where the file was written.
    expect(dirsOf(await w.take())).toEqual(["a", "b", "b/new/inner"].map((d) => path.join(root, d)));
    expect(watches(w)).toBe(10);

    renameSync(path.join(root, "away"), path.join(base, "elsewhere/away"));
    rmSync(path.join(root, "gone"), { recursive: true });
    await waitFor("the watches of what left", () => watches(w) === 5);
    writeFileSync(path.join(base, "elsewhere/away/z/f"), "x");
    writeFileSync(path.join(root, "b/sentinel"), "x");
    await waitFor("the sentinel", () => hasDir(w, path.join(root, "b")));
    expect(dirsOf(await w.take())).toEqual([root, path.join(root, "b")]);
  });

  it("handles names that are not UTF-8: a file's directory is reported, a directory's path makes the set full", async () => {
    const root = tmp();
    mkdirSync(path.join(root, "d"));
    const w = await start({ roots: [root] });
    const bad = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "caf\xe9", latin1
    writeFileSync(Buffer.concat([Buffer.from(path.join(root, "d/")), bad]), "x");
    await waitFor("d", () => hasDir(w, path.join(root, "d")));
    expect(dirsOf(await w.take())).toEqual([path.join(root, "d")]);

    const badDir = Buffer.concat([Buffer.from(`${root}/`), bad]);
    mkdirSync(badDir);
    mkdirSync(Buffer.concat([badDir, Buffer.from("/sub")]));
    await waitFor("the directory and its subdirectory watched", () => watches(w) === 4);
    expect(w.peek()).toEqual({ kind: "full", reason: "a changed directory's path is not valid UTF-8" });
    await w.take();
    writeFileSync(Buffer.concat([badDir, Buffer.from("/sub/f")]), "x");
    await waitFor("a change below it", () => fullSet(w));
  });

  it("asks for a full rescan while a root cannot be watched, and watches it once it can", async () => {
    const base = tmp();
    const root = path.join(base, "later");
    const errors: Error[] = [];
    const w = await ChangeWatcher.start({ roots: [root], onError: (e) => errors.push(e) });
    open.push(w);
    expect(w.watching).toEqual([]);
    expect(errors.length).toBe(1);
    const first = await w.take();
    expect(first.kind).toBe("full");
    expect(w.peek()).toEqual({ kind: "full", reason: "a protected root is not watched" });
    mkdirSync(root);
    expect((await w.take()).kind).toBe("full");
    expect(w.watching).toEqual([root]);
    writeFileSync(path.join(root, "f"), "x");
    await waitFor("the new root's change", () => hasDir(w, root));
  });

  it("a change to the root itself makes the set full", async () => {
    const root = tmp();
    const w = await start({ roots: [root] });
    chmodSync(root, 0o750);
    expect(await waitFor("full", () => fullSet(w))).toEqual({
      kind: "full",
      reason: `the watched root ${root} itself changed`,
    });
  });

  it("keeps memory per directory, not per file", async () => {
    const root = tmp();
    for (let i = 0; i < 200; i++) {
      mkdirSync(path.join(root, `d${i}`));
      for (let j = 0; j < 20; j++) writeFileSync(path.join(root, `d${i}`, `file-with-a-long-name-${j}`), "");
    }
    const w = await start({ roots: [root] });
    const s = w.stats();
    expect(s.watches).toBe(201);
    // Node array, hash table, names and the 64 KiB read buffer: no entry per file.
    expect(s.bytes).toBeLessThan(64 * 1024 + 201 * 200);
  });
});

describe("ChangeWatcher against a random mix of changes", () => {
  type Listing = Map<string, string>;
  /** Every directory under root (sentinel/ left out) → its entries' name, type, size and mode. */
  function snapshot(root: string): Map<string, Listing> {
    const out = new Map<string, Listing>();
    const walk = (dir: string) => {
      const l: Listing = new Map();
      for (const name of readdirSync(dir)) {
        const p = path.join(dir, name);
        if (p === path.join(root, "sentinel")) continue;
        const st = lstatSync(p);
        l.set(name, `${st.isDirectory() ? "d" : "f"}:${st.isDirectory() ? 0 : st.size}:${st.mode}`);
        if (st.isDirectory()) walk(p);
      }
      out.set(dir, l);
    };
    walk(root);
    return out;
  }
  const same = (a: Listing | undefined, b: Listing) =>
    a !== undefined && a.size === b.size && [...b].every(([k, v]) => a.get(k) === v);

  it("every changed directory is reported, or lies in a new subtree whose parent is", async () => {
    const root = tmp();
    mkdirSync(path.join(root, "sentinel"));
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const w = await start({ roots: [root] });
    let before = snapshot(root);
    for (let round = 0; round < 25; round++) {
      for (let op = 0; op < 15; op++) {
        const dirs = [...snapshot(root).keys()];
        const d = dirs[rand(dirs.length)] as string;
        const entries = readdirSync(d).filter((n) => path.join(d, n) !== path.join(root, "sentinel"));
        const e = entries.length ? path.join(d, entries[rand(entries.length)] as string) : null;
        const other = dirs[rand(dirs.length)] as string;
        switch (rand(7)) {
          case 0:
            writeFileSync(path.join(d, `f${round}-${op}`), "x".repeat(rand(10)));
            break;
          case 1:
            mkdirSync(path.join(d, `d${round}-${op}/n/m`), { recursive: true });
            writeFileSync(path.join(d, `d${round}-${op}/n/m/f`), "x");
            break;
          case 2:
            if (e && e !== root) rmSync(e, { recursive: true, force: true });
            break;
          case 3: // rename within the area (not into itself)
            if (e && !`${other}/`.startsWith(`${e}/`)) renameSync(e, path.join(other, `r${round}-${op}`));
            break;
          case 4:
            if (e) chmodSync(e, 0o700 + rand(0o77));
            break;
          case 5:
            if (e && lstatSync(e).isFile()) writeFileSync(e, "y".repeat(20 + rand(10)), { flag: "a" });
            break;
          case 6: {
            // A tree made outside, moved in.
            const out = `${root}-outside-${round}-${op}`;
            mkdirSync(path.join(out, "a/b"), { recursive: true });
            writeFileSync(path.join(out, "a/b/f"), "x");
            renameSync(out, path.join(d, `in${round}-${op}`));
            break;
          }
        }
      }
      writeFileSync(path.join(root, "sentinel", String(round)), "x");
      await waitFor("the sentinel", () => hasDir(w, path.join(root, "sentinel")));
      const set = await w.take();
      const after = snapshot(root);
      expect(set.kind).toBe("dirs");
      const dirty = new Set(dirsOf(set));
      for (const [dir, listing] of after) {
        if (same(before.get(dir), listing)) continue;
        // Changed: reported, or some ancestor (or itself) is new at its path under a reported parent.
        let ok = dirty.has(dir);
        for (let a = dir; !ok && a !== root; a = path.dirname(a))
          ok = !before.get(path.dirname(a))?.has(path.basename(a)) && dirty.has(path.dirname(a));
        expect(ok, `${dir} changed but was not reported (round ${round})`).toBe(true);
      }
      before = after;
    }
    // One watch per directory, no more, no less.
    expect(watches(w)).toBe(snapshot(root).size + 1);
  });
});

describe("ChangeWatcher when it loses track", () => {
  it("a kernel queue overflow makes the set full, is told once, and watches what appeared meanwhile", async () => {
    const root = tmp();
    mkdirSync(path.join(root, "burst"));
    const errors: Error[] = [];
    const w = await start({ roots: [root], onError: (e) => errors.push(e) });
    // The event loop is blocked while this runs, so nothing reads the queue:
    // each file is two events (create, modify), past the kernel's queue length.
    const queued = Number(readFileSync("/proc/sys/fs/inotify/max_queued_events", "utf8"));
    for (let i = 0; i < queued / 2 + 100; i++) writeFileSync(path.join(root, "burst", String(i)), "x");
    mkdirSync(path.join(root, "lost/deeper"), { recursive: true }); // its creation event is lost
    const set = await waitFor("full", () => fullSet(w));
    expect(set).toEqual({
      kind: "full",
      reason: "the kernel's inotify event queue overflowed (fs.inotify.max_queued_events)",
    });
    expect(errors.map((e) => e.message)).toEqual([
      "the kernel's inotify event queue overflowed (fs.inotify.max_queued_events); the next upload walks everything",
    ]);
    expect((await w.take()).kind).toBe("full");
    expect(watches(w)).toBe(4); // the walk after the overflow found lost/ and lost/deeper
    writeFileSync(path.join(root, "lost/deeper/f"), "x");
    await waitFor("a change in a directory made during the overflow", () =>
      hasDir(w, path.join(root, "lost/deeper")),
    );
  });

  it("a storm of new directories past what it queues makes the set full and is then watched whole", async () => {
    const root = tmp();
    const errors: Error[] = [];
    const w = await start({ roots: [root], maxPendingDirs: 10, onError: (e) => errors.push(e) });
    // Made while the event loop is blocked: they arrive at once, past the 10 it queues.
    for (let i = 0; i < 30; i++) mkdirSync(path.join(root, `d${i}/sub`), { recursive: true });
    for (let i = 0; i < 30; i++) mkdirSync(path.join(root, `e${i}`));
    expect(await waitFor("full", () => fullSet(w))).toEqual({
      kind: "full",
      reason: "too many directories appeared at once",
    });
    expect((await w.take()).kind).toBe("full");
    expect(watches(w)).toBe(91);
    expect(errors.length).toBe(1);
    writeFileSync(path.join(root, "e29/f"), "x");
    await waitFor("e29", () => hasDir(w, path.join(root, "e29")));
  });

  it.skipIf(process.getuid?.() !== 0)(
    "an unmount in the area makes the set full and watches what the mount hid (needs root)",
    async () => {
      const root = tmp();
      mkdirSync(path.join(root, "mnt/hidden"), { recursive: true });
      execFileSync("mount", ["-t", "tmpfs", "strata-test", path.join(root, "mnt")]);
      try {
        mkdirSync(path.join(root, "mnt/inside"));
        const w = await start({ roots: [root] });
        expect(watches(w)).toBe(3); // root, the tmpfs's root, inside
        execFileSync("umount", [path.join(root, "mnt")]);
        expect(await waitFor("full", () => fullSet(w))).toEqual({
          kind: "full",
          reason: "a filesystem in the watched area was unmounted",
        });
        await w.take();
        expect(watches(w)).toBe(3); // root, mnt, mnt/hidden
        writeFileSync(path.join(root, "mnt/hidden/f"), "x");
        await waitFor("a change in what the mount hid", () => hasDir(w, path.join(root, "mnt/hidden")));
      } finally {
        spawnSync("umount", [path.join(root, "mnt")]);
      }
    },
  );

  it("can be closed from its own callback", async () => {
    const root = tmp();
    let closed: Promise<void> | undefined;
    const w = await start({
      roots: [root],
      onError: () => {
        closed ??= w.close();
      },
    });
    const queued = Number(readFileSync("/proc/sys/fs/inotify/max_queued_events", "utf8"));
    for (let i = 0; i < queued / 2 + 100; i++) writeFileSync(path.join(root, String(i)), "x");
    await waitFor("closed", () => closed !== undefined);
    await closed;
    expect(w.stats()).toEqual({ watches: 0, bytes: 0 });
  });

  it("running out of watches makes every set full, told once, until the directories fit again", async () => {
    const root = tmp();
    for (const d of ["a", "b", "c/d", "c/e"]) mkdirSync(path.join(root, d), { recursive: true });
    const errors: Error[] = [];
    const w = await ChangeWatcher.start({ roots: [root], maxWatches: 4, onError: (e) => errors.push(e) });
    open.push(w);
    expect(watches(w)).toBe(4);
    expect(errors.length).toBe(1);
    expect(errors[0]?.message).toMatch(
      /^cannot watch .*: ENOSPC: .* \(the kernel's inotify watch limit, fs\.inotify\.max_user_watches = \d+, is reached\); directories from there on are not watched and every upload walks everything until they can be$/,
    );
    expect((await w.take()).kind).toBe("full");
    // Still not all watched: the next set is full too, whatever changed, and nothing more is logged.
    writeFileSync(path.join(root, "a/f"), "x");
    expect((await w.take()).kind).toBe("full");
    const next = await w.take();
    expect(next).toMatchObject({
      kind: "full",
      reason: expect.stringMatching(/^a directory is not watched: /),
    });
    expect(errors.length).toBe(1);
    // Room again (c and what is in it removed): after the next take, everything is watched and sets are exact.
    rmSync(path.join(root, "c"), { recursive: true });
    await waitFor("the removed watches", () => watches(w) <= 3);
    expect((await w.take()).kind).toBe("full");
    expect(watches(w)).toBe(3);
    expect(w.peek()).toEqual({ kind: "dirs", dirs: [] });
    mkdirSync(path.join(root, "b/new"));
    writeFileSync(path.join(root, "b/new/f"), "x");
    await waitFor("b/new", () => hasDir(w, path.join(root, "b/new")));
    expect(watches(w)).toBe(4);
    expect(errors.length).toBe(1);
    // Past the limit again: told again (a new episode), and the set is full.
    mkdirSync(path.join(root, "b/one-too-many"));
    await waitFor("full", () => fullSet(w));
    expect(errors.length).toBe(2);
  });
});
