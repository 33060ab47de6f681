import { chmodSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { ChangeWatcher, type DirtySet, type SubscribeFn, type WatchEvent } from "../src/watcher.js";
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

describe("ChangeWatcher on real files", () => {
  it("reports the directories where files were created, changed, removed or re-moded", async () => {
    const root = tmp();
    mkdirSync(path.join(root, "a/b"), { recursive: true });
    mkdirSync(path.join(root, "c"));
    writeFileSync(path.join(root, "c/old"), "x");
    const w = await start({ roots: [root] });
    expect(w.peek()).toEqual({ kind: "dirs", dirs: [] });

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

  it("ignores what shouldIgnore rejects and what ignoreDirs names", async () => {
    const root = tmp();
    for (const d of ["cache", "skip", "home"]) mkdirSync(path.join(root, d));
    const w = await start({
      roots: [root],
      shouldIgnore: (p) => p.startsWith(`${path.join(root, "cache")}/`),
      ignoreDirs: [path.join(root, "skip")],
    });
    writeFileSync(path.join(root, "cache/blob"), "x");
    writeFileSync(path.join(root, "skip/blob"), "x");
    // Written last: once it is seen, the two writes before it were too.
    writeFileSync(path.join(root, "home/doc"), "x");
    await waitFor("the sentinel", () => hasDir(w, path.join(root, "home")));
    expect(dirsOf(await w.take())).toEqual([path.join(root, "home")]);
  });

  it("collapses to a full rescan when more than maxDirs directories changed", async () => {
    const root = tmp();
    for (let i = 0; i < 6; i++) mkdirSync(path.join(root, `d${i}`));
    const w = await start({ roots: [root], maxDirs: 4 });
    for (let i = 0; i < 6; i++) writeFileSync(path.join(root, `d${i}`, "f"), "x");
    const set = await waitFor("full", () => (w.peek().kind === "full" ? w.peek() : undefined));
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

  it("a directory that appears with subdirectories (moved in, mkdir -p) makes the set full and is then watched whole", async () => {
    const base = tmp();
    const root = path.join(base, "root");
    mkdirSync(path.join(root, "home"), { recursive: true });
    mkdirSync(path.join(base, "outside/tree/sub/deeper"), { recursive: true });
    const w = await start({ roots: [root] });
    // A plain new directory: the watcher sees it created, and what happens in it.
    mkdirSync(path.join(root, "home/plain"));
    writeFileSync(path.join(root, "home/plain/f"), "x");
    await waitFor("the plain directory's file", () => hasDir(w, path.join(root, "home/plain")));
    expect(w.peek().kind).toBe("dirs");
    await w.take();

    // @parcel/watcher watches a moved-in directory, not the directories already in it.
    renameSync(path.join(base, "outside/tree"), path.join(root, "home/tree"));
    const full = await waitFor("full", () => (w.peek().kind === "full" ? w.peek() : undefined));
    expect(full).toEqual({
      kind: "full",
      reason: `${path.join(root, "home/tree")} appeared with subdirectories that were not watched`,
    });
    await w.take(); // waits until the tree is watched
    writeFileSync(path.join(root, "home/tree/sub/deeper/f"), "x");
    await waitFor("a change deep in the moved-in tree", () =>
      hasDir(w, path.join(root, "home/tree/sub/deeper")),
    );
    await w.take();

    // mkdir -p: whether the watcher saw q and r created depends on timing; either way r ends up watched.
    mkdirSync(path.join(root, "home/p/q/r"), { recursive: true });
    await waitFor(
      "p, q and r seen, or a full set",
      () => w.peek().kind === "full" || hasDir(w, path.join(root, "home/p/q/r")),
    );
    await w.take();
    writeFileSync(path.join(root, "home/p/q/r/f"), "x");
    await waitFor("a change in a directory made by mkdir -p", () => hasDir(w, path.join(root, "home/p/q/r")));
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
});

describe("ChangeWatcher faults", () => {
  /** A subscribe that hands the test the event callback. */
  function fakeSubscribe(): {
    subscribe: SubscribeFn;
    emit: (err: Error | null, events: WatchEvent[]) => void;
  } {
    let cb: ((err: Error | null, events: WatchEvent[]) => unknown) | undefined;
    return {
      subscribe: async (_dir, fn) => {
        cb = fn;
        return { unsubscribe: async () => {} };
      },
      emit: (err, events) => cb?.(err, events),
    };
  }

  it("turns a watcher error (e.g. a kernel queue overflow) into a full rescan", async () => {
    const f = fakeSubscribe();
    const errors: Error[] = [];
    const w = await start({ roots: ["/r"], subscribe: f.subscribe, onError: (e) => errors.push(e) });
    f.emit(null, [{ path: "/r/a/f", type: "update" }]);
    expect(w.peek()).toEqual({ kind: "dirs", dirs: ["/r/a"] });
    f.emit(new Error("Event queue overflow"), []);
    f.emit(null, [{ path: "/r/b/f", type: "update" }]);
    expect(w.peek()).toEqual({ kind: "full", reason: "watcher error: Event queue overflow" });
    expect(errors.map((e) => e.message)).toEqual(["Event queue overflow"]);
    await w.take();
    f.emit(null, [{ path: "/r/b/f", type: "create" }]);
    expect(w.peek()).toEqual({ kind: "dirs", dirs: ["/r/b"] });
  });

  it("a burst of events that may have overflowed the kernel's queue (not reported) makes the set full", async () => {
    const f = fakeSubscribe();
    const w = await start({ roots: ["/r"], subscribe: f.subscribe, burstEvents: 3 });
    f.emit(null, [
      { path: "/r/a/f", type: "update" },
      { path: "/r/a/g", type: "update" },
    ]);
    expect(w.peek()).toEqual({ kind: "dirs", dirs: ["/r/a"] });
    f.emit(null, [
      { path: "/r/a/f", type: "update" },
      { path: "/r/a/g", type: "update" },
      { path: "/r/a/h", type: "update" },
    ]);
    expect(w.peek()).toEqual({
      kind: "full",
      reason: "a burst of 3 changes (the kernel's event queue may have overflowed)",
    });
  });

  it("asks for a full rescan for a name it cannot represent, or when a root itself changes", async () => {
    const f = fakeSubscribe();
    const w = await start({ roots: ["/r"], subscribe: f.subscribe });
    f.emit(null, [{ path: "/r/caf\uFFFD/x", type: "create" }]);
    expect(w.peek()).toEqual({ kind: "full", reason: "a changed path's name is not valid UTF-8" });
    await w.take();
    f.emit(null, [{ path: "/r", type: "delete" }]);
    expect(w.peek()).toEqual({ kind: "full", reason: "the watched root /r itself changed" });
  });
});
