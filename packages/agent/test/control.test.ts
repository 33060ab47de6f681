import { spawn } from "node:child_process";
import { lstatSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import * as path from "node:path";
import { isStrataError, StrataError } from "@strata/core";
import { afterAll, describe, expect, it } from "vitest";
import {
  type ControlRequest,
  controlRequest,
  controlSocketPath,
  NOT_RUNNING_HINT,
  startControlServer,
} from "../src/control.js";
import { cleanup, tmp } from "./helpers.js";

afterAll(cleanup);

async function rejection(p: Promise<unknown>): Promise<StrataError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof StrataError) return e;
    throw e;
  }
  throw new Error("expected a rejection");
}

/** Send raw lines and collect `n` answer lines. */
function raw(file: string, text: string, n: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const s = connect(file);
    let buf = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => {
      buf += d;
      const lines = buf.split("\n").filter(Boolean);
      if (lines.length >= n) {
        s.destroy();
        resolve(lines);
      }
    });
    s.on("error", reject);
    s.on("connect", () => s.write(text));
  });
}

describe("control socket", () => {
  it("answers requests with the handler's result, on a 0600 socket", async () => {
    const dir = tmp();
    const seen: ControlRequest[] = [];
    const srv = await startControlServer(dir, (req) => {
      seen.push(req);
      if (req.cmd === "resume") throw new StrataError("LOCKED", "busy", { hint: "later" });
      return { echo: req.cmd };
    });
    try {
      expect(lstatSync(srv.path).mode & 0o777).toBe(0o600);
      expect(srv.path).toBe(controlSocketPath(dir));
      expect(await controlRequest(dir, { cmd: "status" })).toEqual({ echo: "status" });
      expect(await controlRequest(dir, { cmd: "snooze", ms: 60_000 })).toEqual({ echo: "snooze" });
      const e = await rejection(controlRequest(dir, { cmd: "resume" }));
      expect([e.code, e.message, e.hint]).toEqual(["LOCKED", "busy", "later"]);
      expect(seen).toEqual([{ cmd: "status" }, { cmd: "snooze", ms: 60_000 }, { cmd: "resume" }]);
    } finally {
      await srv.close();
    }
  });

  it("answers pipelined lines in order and rejects bad ones without dropping the connection", async () => {
    const dir = tmp();
    const srv = await startControlServer(dir, async (req) => {
      // The first answer is the slowest: order must still hold.
      if (req.cmd === "status") await new Promise((r) => setImmediate(r));
      return req.cmd;
    });
    try {
      const lines = await raw(
        srv.path,
        '{"cmd":"status"}\nnot json\n{"cmd":"snooze","ms":-1}\n{"cmd":"reboot"}\n{"cmd":"sync-now"}\n',
        5,
      );
      const res = lines.map((l) => JSON.parse(l));
      expect(res[0]).toEqual({ ok: true, result: "status" });
      expect(res.slice(1, 4).map((r) => [r.ok, r.error.code])).toEqual([
        [false, "INVALID_ARGUMENT"],
        [false, "INVALID_ARGUMENT"],
        [false, "INVALID_ARGUMENT"],
      ]);
      expect(res[3].error.message).toMatch(/unknown control command "reboot"/);
      expect(res[4]).toEqual({ ok: true, result: "sync-now" });
    } finally {
      await srv.close();
    }
  });

  it("says clearly when the agent is not running", async () => {
    const e = await rejection(controlRequest(tmp(), { cmd: "status" }));
    expect(e.code).toBe("NOT_FOUND");
    expect(e.message).toMatch(/the strata agent is not running/);
    expect(e.hint).toBe(NOT_RUNNING_HINT);
    expect(e.hint).toMatch(/systemctl status strata-agent/);
  });

  it("refuses a second agent on the same state directory", async () => {
    const dir = tmp();
    const srv = await startControlServer(dir, () => "first");
    try {
      const e = await rejection(startControlServer(dir, () => "second"));
      expect(e.code).toBe("LOCKED");
      expect(await controlRequest(dir, { cmd: "status" })).toBe("first");
    } finally {
      await srv.close();
    }
  });

  it("replaces the socket of an agent that died, and refuses a file that is not a socket", async () => {
    const dir = tmp();
    const file = controlSocketPath(dir);
    const child = spawn(
      process.execPath,
      ["-e", `require("net").createServer().listen(${JSON.stringify(file)}, () => console.log("up"))`],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    await new Promise((r) => child.stdout.once("data", r));
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    expect(lstatSync(file).isSocket()).toBe(true);
    const srv = await startControlServer(dir, () => "new");
    expect(await controlRequest(dir, { cmd: "status" })).toBe("new");
    await srv.close();

    const other = tmp();
    writeFileSync(path.join(other, "control.sock"), "");
    const e = await rejection(startControlServer(other, () => 0));
    expect(isStrataError(e, "ALREADY_EXISTS")).toBe(true);
  });

  it("gives up on an agent that does not answer", async () => {
    const dir = tmp();
    const srv = await startControlServer(dir, () => new Promise(() => {}));
    try {
      const e = await rejection(controlRequest(dir, { cmd: "status" }, { timeoutMs: 200 }));
      expect(e.code).toBe("IO_ERROR");
      expect(e.message).toMatch(/did not answer within 0.2 s/);
    } finally {
      await srv.close();
    }
  });
});
