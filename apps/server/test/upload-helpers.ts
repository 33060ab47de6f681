/**
 * The upload service bound directly to the agent's UploadTransport, for
 * tests of the protocol's rules without HTTP (the HTTP routes have their
 * own end-to-end tests). Real repository, real catalog, real files.
 */
import { mkdirSync } from "node:fs";
import * as path from "node:path";
import type { UploadTransport } from "@strata/agent";
import { openSqliteServerStore, type ServerStore } from "@strata/catalog";
import { DEFAULT_CHUNKER_PARAMS, type RetentionCounts, StrataError } from "@strata/core";
import { loadServerConfig } from "../src/config.js";
import { openServerRepository, type ServerRepository } from "../src/repository.js";
import { AuditService } from "../src/services/audit-service.js";
import { systemClock } from "../src/services/context.js";
import { type UploadLimits, UploadService } from "../src/services/upload-service.js";

export interface UploadHarness {
  dataDir: string;
  server: ServerRepository;
  service: UploadService;
  audit: AuditService;
  store: ServerStore;
  /** A transport for the endpoint owning `cvdId`; `fault` may throw to cut a request. */
  transport(cvdId: string, fault?: (what: string, n: number) => void): UploadTransport & { received: number };
  close(): Promise<void>;
}

/** `retention`: the retention counts of each CVD's policy (absent: keep all). */
export async function uploadHarness(
  dir: string,
  retention: Map<string, RetentionCounts> = new Map(),
  limits: Partial<UploadLimits> = {},
): Promise<UploadHarness> {
  const dataDir = path.join(dir, "data");
  mkdirSync(dataDir, { recursive: true });
  const config = loadServerConfig({ flags: { data: dataDir }, env: {} });
  // The default chunker key, not a random one: tests that bound the bytes a change sends must
  // see the same chunk boundaries in every run (a random key put an edit's chunks over a bound
  // in about 6% of runs).
  const server = await openServerRepository(config, undefined, {
    chunker: { gearSeed: DEFAULT_CHUNKER_PARAMS.gearSeed },
  });
  const store = await openSqliteServerStore(config.database.kind === "sqlite" ? config.database.path : "");
  const audit = new AuditService({ store, clock: systemClock });
  const service = new UploadService({
    repo: server.repo,
    uploads: server.uploads,
    clock: systemClock,
    audit,
    retentionOf: async (cvd) => retention.get(cvd) ?? null,
    limits: { failedProofAudit: 2, ...limits },
  });
  return {
    dataDir,
    server,
    service,
    audit,
    store,
    transport(cvdId, fault) {
      let n = 0;
      const t = {
        received: 0,
        async json<T>(method: string, p: string, body?: unknown): Promise<T> {
          fault?.(`${method} ${p}`, n++);
          const b = JSON.parse(JSON.stringify(body ?? null));
          let m = /^\/cvds\/([^/]+)\/uploads$/.exec(p);
          if (m && method === "POST") {
            if (m[1] !== cvdId) throw new StrataError("NOT_FOUND", `CVD ${m[1]} does not exist`);
            return (await service.create(cvdId, b)).view as T;
          }
          m = /^\/uploads\/([^/]+)\/(have|commit)$/.exec(p);
          if (m && method === "POST") {
            if (m[2] === "have") return (await service.have(cvdId, m[1]!, b.chunks)) as T;
            return (await service.commit(cvdId, m[1]!, b)) as T;
          }
          throw new Error(`no route ${method} ${p}`);
        },
        async frames<T>(p: string, body: AsyncIterable<Buffer>): Promise<T> {
          fault?.(`PUT ${p}`, n++);
          const m = /^\/uploads\/([^/]+)\/(chunks|trees)$/.exec(p);
          if (!m) throw new Error(`no route PUT ${p}`);
          const counted = (async function* () {
            for await (const b of body) {
              t.received += b.length;
              yield b;
            }
          })();
          if (m[2] === "chunks") return (await service.putChunks(cvdId, m[1]!, counted)) as T;
          return (await service.putTrees(cvdId, m[1]!, counted)) as T;
        },
      };
      return t;
    },
    async close() {
      await server.close();
      await store.close();
    },
  };
}
