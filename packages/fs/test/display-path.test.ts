import { describe, expect, it } from "vitest";
import { displayPath } from "../src/display-path.js";

describe("displayPath", () => {
  it("shows printable ASCII and valid UTF-8 as they are", () => {
    expect(displayPath(Buffer.from("/usr/share/doc/a b~c"))).toBe("/usr/share/doc/a b~c");
    expect(displayPath(Buffer.from("/home/zoë/Größe/日本"))).toBe("/home/zoë/Größe/日本");
    expect(displayPath("/as/given")).toBe("/as/given");
    expect(displayPath(Buffer.alloc(0))).toBe("");
  });

  it("escapes control characters, DEL, backslashes and bytes that are not UTF-8", () => {
    expect(displayPath(Buffer.from("a\nb\tc"))).toBe("a\\x0ab\\x09c");
    expect(displayPath(Buffer.from([0x61, 0x7f]))).toBe("a\\x7f");
    expect(displayPath(Buffer.from("a\\x41"))).toBe("a\\x5cx41");
    expect(displayPath(Buffer.from([0x2f, 0x66, 0xff, 0xfe]))).toBe("/f\\xff\\xfe");
    // Once escaping, every byte outside printable ASCII is escaped, UTF-8 included.
    expect(displayPath(Buffer.from("é\n"))).toBe("\\xc3\\xa9\\x0a");
  });

  it("never prints two different names the same", () => {
    const names = [
      Buffer.from("a\\x41"),
      Buffer.from("aA"),
      Buffer.from("a\\x5cx41"),
      Buffer.from([0x61, 0x5c]),
      Buffer.from("é"),
      Buffer.from([0xe9]),
      Buffer.from("\\xe9"),
    ];
    const shown = names.map((n) => displayPath(n));
    expect(new Set(shown).size).toBe(names.length);
  });
});
