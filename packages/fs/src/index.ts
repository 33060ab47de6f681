export { displayPath } from "./display-path.js";
export { dropCache, readAhead, setIdlePriority, trimMemory, tuneMemory } from "./io-hints.js";
export {
  errnoError,
  type NativeFs,
  native,
  WATCH_FLAGS,
  type WatchHandle,
  XATTR_CREATE,
  XATTR_REPLACE,
} from "./native.js";
export { dataRanges, nodeFromStat, nodeTypeOf, readNode, readXattrs } from "./read-node.js";
export {
  type ApplyOptions,
  applyMetadata,
  applyMetadataSync,
  createFile,
  createHardlink,
  createSpecial,
  createSymlink,
  finishFile,
  hasDefaultAcl,
  joinName,
  makeDir,
  NAME_MAX,
  onlyTimesNeeded,
  validateName,
  writeAt,
} from "./restore.js";
export { PackedStat, type ScannedEntry, scanDir } from "./scan-dir.js";
