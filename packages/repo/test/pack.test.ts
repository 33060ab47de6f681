import { execFileSync } from "node:child_process";
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import type { BlobId } from "@strata/core";
import {
  aeadBackend,
  BlobCodec,
  encodePackLayout,
  isStrataError,
  MasterKey,
  openSealed,
  openSealedInto,
  PackBuilder,
  parsePackHeader,
  readFromBuffer,
  seal,
  unwrapMasterKey,
  verifyPackLayout,
  wrapMasterKey,
} from "@strata/repo";
import { describe, expect, it } from "vitest";

const key = MasterKey.generate();
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex") as BlobId;

describe("sealing", () => {
  it("round-trips and detects any flipped byte or wrong key", () => {
    const plain = randomBytes(1000);
    const s = seal(key, plain);
    expect(openSealed(key, s)?.equals(plain)).toBe(true);
    for (const i of [0, 12, 500, s.length - 1]) {
      const bad = Buffer.from(s);
      bad[i]! ^= 1;
      expect(openSealed(key, bad)).toBeNull();
    }
    expect(openSealed(MasterKey.generate(), s)).toBeNull();
  });

  // The fast path: the system's libcrypto (Debian's libssl3), which uses AES-NI where node's own OpenSSL does not.
  it("seals with the system libcrypto, byte-compatible with node:crypto both ways", () => {
    expect(aeadBackend()).toEqual({ name: "libcrypto" });
    const aad = Buffer.from("bound to this");
    for (const size of [0, 1, 1000, 65536 + 7]) {
      const plain = randomBytes(size);
      // Ours → node's decipher.
      for (const a of [undefined, aad]) {
        const s = seal(key, plain, a);
        expect(s.length).toBe(size + 28);
        const d = createDecipheriv("aes-256-gcm", key.key, s.subarray(0, 12));
        if (a) d.setAAD(a);
        d.setAuthTag(s.subarray(s.length - 16));
        expect(Buffer.concat([d.update(s.subarray(12, s.length - 16)), d.final()]).equals(plain)).toBe(true);
      }
      // node's cipher → ours, into a buffer at an offset.
      const nonce = randomBytes(12);
      const c = createCipheriv("aes-256-gcm", key.key, nonce);
      c.setAAD(aad);
      const sealed = Buffer.concat([nonce, c.update(plain), c.final(), c.getAuthTag()]);
      expect(openSealed(key, sealed, aad)?.equals(plain)).toBe(true);
      expect(openSealed(key, sealed)).toBeNull(); // the AAD is part of what is authenticated
      const out = Buffer.alloc(size + 10, 0xee);
      expect(openSealedInto(key, sealed, out, 5, aad)).toBe(size);
      expect(out.subarray(5, 5 + size).equals(plain)).toBe(true);
      expect(out[4]).toBe(0xee);
      expect(out[5 + size]).toBe(0xee);
      const bad = Buffer.from(sealed);
      bad[bad.length - 1]! ^= 0x80;
      expect(openSealedInto(key, bad, out, 0, aad)).toBe(-1);
      expect(openSealedInto(key, sealed.subarray(0, 27), out, 0)).toBe(-1);
    }
  });

  it("falls back to node:crypto with STRATA_NATIVE_AES=0, and the two read each other's seals", () => {
    const plain = randomBytes(5000);
    const script = `
      import { aeadBackend, MasterKey, openSealed, seal } from "@strata/repo";
      const [k, s] = process.argv.slice(1).map((h) => Buffer.from(h, "hex"));
      const key = new MasterKey(k);
      const plain = openSealed(key, s);
      process.stdout.write(JSON.stringify({ backend: aeadBackend(), resealed: seal(key, plain).toString("hex") }));`;
    const out = execFileSync(
      process.execPath,
      ["--input-type=module", "-e", script, key.key.toString("hex"), seal(key, plain).toString("hex")],
      { env: { ...process.env, STRATA_NATIVE_AES: "0" }, encoding: "utf8" },
    );
    const r = JSON.parse(out) as { backend: unknown; resealed: string };
    expect(r.backend).toEqual({ name: "node:crypto", reason: "disabled by STRATA_NATIVE_AES=0" });
    expect(openSealed(key, Buffer.from(r.resealed, "hex"))?.equals(plain)).toBe(true);
  });

  it("wraps the master key with a password (scrypt) and refuses a wrong one", async () => {
    process.env.STRATA_SCRYPT_LOG_N = "10";
    const kf = await wrapMasterKey(key, Buffer.from("pw"), "h");
    expect(kf.kdf).toBe("scrypt");
    expect((await unwrapMasterKey(kf, Buffer.from("pw")))?.key.equals(key.key)).toBe(true);
    expect(await unwrapMasterKey(kf, Buffer.from("px"))).toBeNull();
  });
});

describe("packs", () => {
  const codec = new BlobCodec(key);
  const compressible = Buffer.alloc(100_000, "abc");
  const random = randomBytes(50_000);

  it("stores compressible data compressed and incompressible data raw", () => {
    const a = codec.encode(sha(compressible), "chunk", compressible);
    const b = codec.encode(sha(random), "chunk", random);
    expect(a.compressed).toBe(true);
    expect(a.data.length).toBeLessThan(2000);
    expect(b.compressed).toBe(false);
  });

  it("carries its own index: the header lists every blob at its offset", async () => {
    const pb = new PackBuilder();
    for (const d of [compressible, random]) pb.add(codec.encode(sha(d), "chunk", d));
    const p = pb.finish(key);
    const file = Buffer.concat(p.parts);
    expect(sha(file)).toBe(p.id);
    const header = await parsePackHeader(key, p.id, file.length, async (o, l) => file.subarray(o, o + l));
    expect(header).toEqual(p.entries);
    for (const [i, e] of header.entries()) {
      const plain = codec.decode(e, file.subarray(e.offset, e.offset + e.length));
      expect(plain.equals([compressible, random][i]!)).toBe(true);
    }
  });

  it("verifies a blob as decode does, with decode's messages, without keeping its plaintext", () => {
    const plain = Buffer.from("verify me ".repeat(5000));
    const e = codec.encode(sha(plain), "chunk", plain);
    expect(e.compressed).toBe(true);
    const entry = {
      id: e.id,
      packId: "p".repeat(64) as never,
      compressed: e.compressed,
      rawLength: e.rawLength,
    };
    expect(codec.verify(entry, e.data)).toBeNull();
    const flipped = Buffer.from(e.data);
    flipped[40]! ^= 1;
    expect(codec.verify(entry, flipped)).toMatch(
      /^blob [0-9a-f]{64} in pack p+ fails authentication \(damaged\)$/,
    );
    expect(() => codec.decode(entry, flipped)).toThrow(codec.verify(entry, flipped)!);
    // Intact bytes, wrong id: the hash check.
    const other = { ...entry, id: sha(Buffer.from("something else")) };
    expect(codec.verify(other, e.data)).toMatch(/does not match its hash$/);
    expect(codec.verify({ ...entry, rawLength: entry.rawLength - 1 }, e.data)).toMatch(
      /does not (decompress|match)/,
    );
    const raw = codec.encode(sha(randomBytes(10)), "chunk", randomBytes(100));
    expect(codec.verify({ ...entry, id: raw.id, compressed: false, rawLength: 100 }, raw.data)).toMatch(
      /hash$/,
    );
  });

  it("names the blob and pack when a blob is damaged, and the pack when truncated", async () => {
    const pb = new PackBuilder();
    pb.add(codec.encode(sha(random), "chunk", random));
    const p = pb.finish(key);
    const file = Buffer.concat(p.parts);
    const e = p.entries[0]!;
    const bad = Buffer.from(file);
    bad[e.offset + 100]! ^= 0xff;
    expect(() => codec.decode(e, bad.subarray(e.offset, e.offset + e.length))).toThrow(
      new RegExp(`blob ${e.id} in pack ${p.id} fails authentication`),
    );
    const cut = file.subarray(0, file.length - 10);
    await expect(
      parsePackHeader(key, p.id, cut.length, async (o, l) => cut.subarray(o, o + l)),
    ).rejects.toSatisfy((err) => isStrataError(err, "DATA_CORRUPT") && (err as Error).message.includes(p.id));
  });
});

describe("verifying a pack against the catalog's layout (check --read-data)", () => {
  const codec = new BlobCodec(key);
  const datas = [Buffer.alloc(70_000, "xyz"), randomBytes(40_000), randomBytes(10)];
  const pb = new PackBuilder();
  for (const d of datas) pb.add(codec.encode(sha(d), "chunk", d));
  const p = pb.finish(key);
  const file = Buffer.concat(p.parts);
  const rows = p.entries.map((e) => [Buffer.from(e.id, "hex"), e.offset, e.length] as const);

  it("passes an intact pack whose layout matches", async () => {
    const v = await verifyPackLayout(
      key,
      codec,
      p.id,
      file.length,
      readFromBuffer(file),
      encodePackLayout(rows),
    );
    expect(v).toEqual({ packProblems: [], errors: [], badBlobs: [] });
    // A catalog that indexes only some of the pack's blobs (the rest superseded) is fine too.
    expect(
      (
        await verifyPackLayout(
          key,
          codec,
          p.id,
          file.length,
          readFromBuffer(file),
          encodePackLayout([rows[1]!]),
        )
      ).errors,
    ).toEqual([]);
  });

  it("names a catalog entry the header does not list where the catalog says", async () => {
    const wrongOffset = rows.map((r, i) => (i === 1 ? ([r[0], r[1] + 1, r[2]] as const) : r));
    const v1 = await verifyPackLayout(
      key,
      codec,
      p.id,
      file.length,
      readFromBuffer(file),
      encodePackLayout(wrongOffset),
    );
    expect(v1.errors).toEqual([
      `pack ${p.id}: header does not list blob ${p.entries[1]!.id} where the catalog says`,
    ]);
    const stranger = randomBytes(32);
    const v2 = await verifyPackLayout(
      key,
      codec,
      p.id,
      file.length,
      readFromBuffer(file),
      encodePackLayout([[stranger, rows[2]![1], rows[2]![2]]]),
    );
    expect(v2.errors[0]).toContain(stranger.toString("hex"));
    const wrongLength = await verifyPackLayout(
      key,
      codec,
      p.id,
      file.length,
      readFromBuffer(file),
      encodePackLayout([[rows[0]![0], 0, 7]]),
    );
    expect(wrongLength.errors).toHaveLength(1);
  });

  it("names the damaged blob and the pack's hash when a byte flips", async () => {
    const bad = Buffer.from(file);
    bad[p.entries[1]!.offset + 20]! ^= 1;
    const v = await verifyPackLayout(
      key,
      codec,
      p.id,
      bad.length,
      readFromBuffer(bad),
      encodePackLayout(rows),
    );
    expect(v.packProblems).toEqual(["content does not match its id (damaged)"]);
    expect(v.badBlobs.map((b) => b.id)).toEqual([p.entries[1]!.id]);
    expect(v.badBlobs[0]!.problem).toMatch(/fails authentication/);
  });

  it("reads a pack larger than its 4 MiB segments once, in order, and finds damage in a later segment", async () => {
    const big = new PackBuilder();
    const parts = Array.from({ length: 12 }, () => randomBytes(700_000)); // ~8 MiB: three segments
    for (const d of parts) big.add(codec.encode(sha(d), "chunk", d));
    const bp = big.finish(key);
    const bytes = Buffer.concat(bp.parts);
    const layout = encodePackLayout(
      bp.entries.map((e) => [Buffer.from(e.id, "hex"), e.offset, e.length] as const),
    );
    const reads: [number, number][] = [];
    const read = (o: number, l: number) => {
      reads.push([o, l]);
      return bytes.subarray(o, o + l);
    };
    expect(await verifyPackLayout(key, codec, bp.id, bytes.length, read, layout)).toEqual({
      packProblems: [],
      errors: [],
      badBlobs: [],
    });
    // After the header: consecutive segments of at most 4 MiB cover the whole pack.
    const segs = reads.filter(([o]) => o < bp.entries.at(-1)!.offset + bp.entries.at(-1)!.length);
    expect(segs.length).toBeGreaterThanOrEqual(2);
    expect(segs[0]![0]).toBe(0);
    for (const [, l] of segs.slice(0, -1)) expect(l).toBeLessThanOrEqual(4 * 1024 * 1024);
    const damaged = Buffer.from(bytes);
    damaged[bp.entries[10]!.offset + 5]! ^= 1;
    const v = await verifyPackLayout(key, codec, bp.id, bytes.length, readFromBuffer(damaged), layout);
    expect(v.badBlobs.map((b) => b.id)).toEqual([bp.entries[10]!.id]);
    expect(v.packProblems).toEqual(["content does not match its id (damaged)"]);
  });

  it("says so when the header does not open (the caller then verifies entry by entry)", async () => {
    const bad = Buffer.from(file);
    bad[bad.length - 20]! ^= 1; // inside the sealed header
    const v = await verifyPackLayout(
      key,
      codec,
      p.id,
      bad.length,
      readFromBuffer(bad),
      encodePackLayout(rows),
    );
    expect(v.headerBroken).toBe(true);
  });
});
