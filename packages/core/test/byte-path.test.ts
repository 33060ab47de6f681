import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  bytePathOf,
  bytePathString,
  displayBytePath,
  isUtf8Path,
  joinBytePaths,
  splitBytePaths,
} from "../src/byte-path.js";

const b = (...bytes: number[]) => Buffer.from(bytes);

describe("byte-path strings", () => {
  it("are the UTF-8 string for UTF-8 names, and give back the exact bytes of any other", () => {
    for (const s of ["/usr/share/doc/é-old", "/opt/𐂀 wide", "/a\uFFFDb", "/"]) {
      expect(bytePathString(Buffer.from(s))).toBe(s);
      expect(isUtf8Path(s)).toBe(true);
      expect(bytePathOf(s)).toEqual(Buffer.from(s));
    }
    const cases = [
      b(0x2f, 0x6f, 0xe9), // latin1 é
      b(0xff, 0xfe),
      b(0xc3), // a truncated sequence
      b(0xe0, 0x80, 0x80), // overlong
      b(0xed, 0xa0, 0x80), // an encoded surrogate
      b(0xf4, 0x90, 0x80, 0x80), // past U+10FFFF
      Buffer.concat([Buffer.from("/𐂀"), b(0xdc), Buffer.from("é\uFFFD")]),
    ];
    for (const raw of cases) {
      const s = bytePathString(raw);
      expect(isUtf8Path(s)).toBe(false);
      expect(bytePathOf(s)).toEqual(raw);
    }
    for (let i = 0; i < 200; i++) {
      const raw = randomBytes(1 + (i % 24));
      expect(bytePathOf(bytePathString(raw))).toEqual(raw);
    }
  });

  it("travel as strings and base64, and display their odd bytes as \\xNN", () => {
    const odd = bytePathString(b(0x2f, 0x6f, 0x6c, 0x64, 0x2d, 0xff));
    const w = splitBytePaths(["/usr/é", odd, "/x"]);
    expect(w).toEqual({
      utf8: ["/usr/é", "/x"],
      b64: [b(0x2f, 0x6f, 0x6c, 0x64, 0x2d, 0xff).toString("base64")],
    });
    expect(joinBytePaths(w.utf8, w.b64)).toEqual(["/usr/é", "/x", odd]);
    expect(joinBytePaths(["/a"], undefined)).toEqual(["/a"]);
    expect(displayBytePath(odd)).toBe("/old-\\xff");
    expect(displayBytePath("/usr/é")).toBe("/usr/é");
  });
});
