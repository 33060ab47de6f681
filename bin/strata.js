#!/usr/bin/env node
// The `strata` binary: the compiled CLI (built by `npm install` / `npm run build`).
import { main } from "../apps/cli/dist/main.js";

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(e);
    process.exitCode = 1;
  },
);
