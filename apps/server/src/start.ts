/**
 * The composition root: open the store, bootstrap, load TLS, build the app,
 * listen. The CLI's `strata server` calls startServer; tests do too.
 */
import { chmodSync, mkdirSync } from "node:fs";
import { openPostgresServerStore, openSqliteServerStore, type ServerStore } from "@strata/catalog";
import type { ServerConfig } from "./config.js";
import { redactUrl } from "./config.js";
import { buildApp } from "./http/app.js";
import { openServerRepository, type ServerRepository } from "./repository.js";
import type { AuditService } from "./services/audit-service.js";
import { type Clock, systemClock } from "./services/context.js";
import { bootstrap, createServices, type SnapshotsOf } from "./services/index.js";
import { cvdImages, LayerService } from "./services/layer-service.js";
import { uploadPolicyOf } from "./services/policy-service.js";
import { RestoreService } from "./services/restore-service.js";
import { snapshotSummaries, UploadService } from "./services/upload-service.js";
import { loadOrCreateTls } from "./tls.js";

export interface StartOptions {
  /** Where logs go (default stdout). */
  logStream?: { write(s: string): unknown };
  clock?: Clock;
  /** PostgreSQL schema (tests isolate runs with it). */
  pgSchema?: string;
  /** A CVD's snapshots (the integrator wires the repository in); default none. */
  snapshotsOf?: SnapshotsOf;
}

export interface RunningServer {
  /** https://HOST:PORT with the actual port. */
  url: string;
  port: number;
  fingerprint: string;
  certGenerated: boolean;
  certFile: string;
  /** The first-start administrator password, or null when users existed. Shown once; never logged. */
  adminPassword: string | null;
  catalog: string;
  close(): Promise<void>;
}

export async function openServerStore(config: ServerConfig, pgSchema?: string): Promise<ServerStore> {
  if (config.database.kind === "postgres") {
    return openPostgresServerStore(config.database.url, pgSchema ? { schema: pgSchema } : {});
  }
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const store = await openSqliteServerStore(config.database.path);
  for (const f of [config.database.path, `${config.database.path}-wal`, `${config.database.path}-shm`]) {
    try {
      chmodSync(f, 0o600); // password hashes and the audit log: owner only
    } catch {
      // -wal/-shm may not exist yet
    }
  }
  return store;
}

export async function startServer(config: ServerConfig, opts: StartOptions = {}): Promise<RunningServer> {
  const store = await openServerStore(config, opts.pgSchema);
  let data: ServerRepository | null = null;
  try {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    const tls = await loadOrCreateTls(config.dataDir, config.tls);
    data = await openServerRepository(config, opts.pgSchema);
    const repoData = data;
    const clock = opts.clock ?? systemClock;
    const uploads = (audit: AuditService) =>
      new UploadService({
        repo: repoData.repo,
        uploads: repoData.uploads,
        clock,
        audit,
        retentionOf: async (cvdId) => {
          const cvd = await store.getCvd(cvdId);
          const policy = cvd ? await store.getPolicy(cvd.policyId) : null;
          return policy ? uploadPolicyOf(policy).retention : null;
        },
        // Open tasks' snapshots, and the old system of an unconfirmed OS migration (layers.md).
        pinnedByTasks: async (cvdId) => [
          ...(await store.tasks.listTasks({ cvdId, states: ["queued", "running"], limit: 100 }))
            .map((t) => t.params.snapshot)
            .filter((x): x is string => typeof x === "string"),
          ...(await store.tasks.listTasks({ cvdId, states: ["done"], limit: 100 }))
            .filter((t) => t.kind === "apply" && t.params.migrate === true && !t.result?.confirmedAt)
            .map((t) => t.result?.safetySnapshot)
            .filter((x): x is string => typeof x === "string"),
        ],
      });
    const services = createServices({
      store,
      clock,
      loginTokenTtlMs: config.loginTokenTtlHours * 3_600_000,
      serverFingerprint: tls.fingerprint,
      snapshotsOf: opts.snapshotsOf ?? ((cvdId) => snapshotSummaries(repoData.repo, cvdId)),
      uploads,
      restores: (audit) =>
        new RestoreService({
          repo: repoData.repo,
          sessions: repoData.restores,
          clock,
          audit,
          imagesOf: cvdImages(store),
        }),
      layers: (d) => new LayerService({ store, clock, repo: repoData.repo, ...d }),
    });
    const { adminPassword } = await bootstrap(services);
    const app = buildApp({
      services,
      logger: { level: config.logLevel, ...(opts.logStream ? { stream: opts.logStream } : {}) },
      bodyLimit: config.bodyLimit,
      https: { key: tls.key, cert: tls.cert },
      tlsFingerprint: tls.fingerprint,
    });
    await app.listen({ host: config.host, port: config.port });
    // Open upload sessions idle past their expiry are closed and unpinned.
    const expiry = setInterval(() => {
      services.uploads
        ?.expireStale()
        .catch((e) => app.log.warn({ err: e }, "expiring upload sessions failed"));
      services.restores
        ?.expireStale()
        .catch((e) => app.log.warn({ err: e }, "expiring restore sessions failed"));
    }, 3_600_000);
    expiry.unref();
    const addr = app.server.address();
    const port = typeof addr === "object" && addr ? addr.port : config.port;
    const host = config.host.includes(":") ? `[${config.host}]` : config.host;
    const catalog =
      config.database.kind === "postgres" ? redactUrl(config.database.url) : config.database.path;
    app.log.info({ port, catalog, fingerprint: tls.fingerprint }, "strata server listening");
    return {
      url: `https://${host}:${port}`,
      port,
      fingerprint: tls.fingerprint,
      certGenerated: tls.generated,
      certFile: tls.certFile,
      adminPassword,
      catalog,
      close: async () => {
        clearInterval(expiry);
        await app.close();
        await services.restores?.flushTouches().catch(() => {});
        await services.restores?.releaseStreamLease();
        await repoData.close();
        await store.close();
      },
    };
  } catch (e) {
    await data?.close();
    await store.close();
    throw e;
  }
}
