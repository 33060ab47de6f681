import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ByteReader, type ChunkFrame, encodeChunkFrame, FLAG_ZSTD, readChunkFrame } from "../src/wire.js";

const idOf = (s: string) => createHash("sha256").update(s).digest();

/** Frames of payloads of several sizes (empty, one byte, more than a TLS record). */
function stream(): { bytes: Buffer; frames: { id: string; flags: number; payload: string }[] } {
  const payloads = ["", "x", "hello frames", "y".repeat(20_000), "last"];
  const frames = payloads.map((p, i) => ({
    id: idOf(p).toString("hex"),
    flags: i % 2 ? FLAG_ZSTD : 0,
    payload: p,
  }));
  const bytes = Buffer.concat(
    frames.flatMap((f) =>
      encodeChunkFrame(Buffer.from(f.id, "hex"), f.flags === FLAG_ZSTD, Buffer.from(f.payload)),
    ),
  );
  return { bytes, frames };
}

/** `bytes` as a stream of pieces of `size` bytes. */
async function* pieces(bytes: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
}

/** Every frame of the stream, read as the restore reads them; how many came without waiting. */
async function readAll(r: ByteReader, max = 1 << 20): Promise<{ frames: ChunkFrame[]; immediate: number }> {
  const frames: ChunkFrame[] = [];
  let immediate = 0;
  for (let i = 0; r.buffered > 0 || !(await r.atEnd()); i++) {
    const next = readChunkFrame(r, max, i);
    if (!(next instanceof Promise)) immediate++;
    frames.push(next instanceof Promise ? await next : next);
  }
  return { frames, immediate };
}

describe("chunk frames from a stream", () => {
  it("reads the same frames however the stream is cut, and counts every byte received", async () => {
    const { bytes, frames } = stream();
    for (const size of [1, 7, 36, 37, 38, 100, 16_384, bytes.length]) {
      let received = 0;
      const r = new ByteReader(pieces(bytes, size), (n) => {
        received += n;
      });
      const got = await readAll(r);
      expect(
        got.frames.map((f) => ({ id: f.id.toString("hex"), flags: f.flags, payload: f.payload.toString() })),
      ).toEqual(frames);
      expect(received).toBe(bytes.length);
      expect(r.consumed).toBe(bytes.length);
    }
  });

  it("reads buffered frames without waiting", async () => {
    const { bytes } = stream();
    const got = await readAll(new ByteReader(pieces(bytes, bytes.length)));
    // Once the stream's one buffer is in (atEnd waits for it), every frame is read from it at once.
    expect(got.immediate).toBe(5);
  });

  it("names a truncated frame, an oversized payload and unknown flags", async () => {
    const { bytes } = stream();
    const cut = bytes.subarray(0, bytes.length - 2);
    for (const size of [5, cut.length]) {
      await expect(readAll(new ByteReader(pieces(cut, size)))).rejects.toThrow(
        "chunk frame 4 is truncated (2 of 4 bytes)",
      );
    }
    const big = await readAll(new ByteReader(pieces(bytes, bytes.length)), 19_999).catch((e: Error) => e);
    expect(big).toMatchObject({
      code: "TOO_LARGE",
      message: `chunk frame 3 (${idOf("y".repeat(20_000)).toString("hex")}) has a 20000-byte payload; the limit is 19999`,
    });
    const flags = Buffer.from(bytes);
    flags[36] = 0x80;
    await expect(readAll(new ByteReader(pieces(flags, 64)))).rejects.toThrow(
      "chunk frame 0 has unknown flags 128",
    );
  });
});
