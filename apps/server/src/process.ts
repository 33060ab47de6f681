/**
 * Settings for a process that runs the server and nothing else (`strata
 * server`); not applied by startServer, which tests run inside their own
 * processes.
 */
import { setFlagsFromString } from "node:v8";

/**
 * How far V8 lets the old generation grow past what the last full
 * collection left alive before it starts the next one: 300%, i.e. 4× the
 * live heap — the largest factor V8 picks by itself, and the one it picks
 * for a busy program; for this server, idle between bursts of requests, it
 * kept the limit close to the live size. A restore's requests hold their
 * lookup rows, id strings and frames for the tens of milliseconds a chunk
 * stream lasts, long enough to be promoted, and the server's live heap is
 * small (~25 MB): it ran seven full collections per restore of a 440 MB
 * machine, now one or two, and its CPU per restore fell from 2.35–2.79 s
 * to 1.37–1.66 s (docs/benchmarks.md, session 13). The bound stays V8's own
 * (`--max-old-space-size`); 4× a small live heap is tens of MB.
 */
export const SERVER_HEAP_GROWING_PERCENT = 300;

/** Apply the settings above; V8 reads this flag at every full collection, so setting it late works. */
export function tuneServerProcess(): void {
  setFlagsFromString(`--heap-growing-percent=${SERVER_HEAP_GROWING_PERCENT}`);
}
