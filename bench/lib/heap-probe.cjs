// Preloaded into a process (node --expose-gc -r bench/lib/heap-probe.cjs …)
// and each of its worker threads: every 3 s, a full GC and then one line
// with the thread's live heap, external and ArrayBuffer memory and the
// process's RSS, appended to $STRATA_HEAP_PROBE. Live data after a GC is
// what says whether memory is bounded; peak RSS also counts what V8 and
// glibc have not given back yet. Used by bench/agent-scale.mjs --heapprobe=1.
const fs = require("node:fs");
const { isMainThread, threadId } = require("node:worker_threads");

const out = process.env.STRATA_HEAP_PROBE;
if (out && typeof global.gc === "function") {
  const t0 = Date.now();
  const mb = (b) => (b / 1048576).toFixed(1);
  setInterval(() => {
    global.gc();
    const m = process.memoryUsage();
    const who = isMainThread ? "main" : `worker${threadId}`;
    fs.appendFileSync(
      out,
      `${((Date.now() - t0) / 1000).toFixed(0)}s ${who} heap=${mb(m.heapUsed)} external=${mb(m.external)} arrayBuffers=${mb(m.arrayBuffers)} rss=${mb(m.rss)}\n`,
    );
  }, 3000).unref();
}
