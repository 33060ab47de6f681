export { aptRepo, buildDeb, type TestDeb } from "./apt-repo.js";
export { type CachedBuildResult, type CachedBuildSpec, cachedBuild } from "./cached-build.js";
export { type DebCache, type DebCacheResult, debCache } from "./deb-cache.js";
export { type DebianSuite, debianRoot, debianRootPath, debianRootSkipReason } from "./debian-root.js";
export { buildHostileTree, capNetBindService } from "./hostile-tree.js";
export { repoRoot } from "./repo-root.js";
export { RSYNC_CHECK_FLAGS, rsyncCopy, rsyncItemize } from "./rsync-itemize.js";
export { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";
export { cleanupTempDirs, makeTempDir, removeDir } from "./temp-dir.js";
