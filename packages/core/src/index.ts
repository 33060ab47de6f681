export * from "./ids.js";
export * from "./errors.js";
export * from "./node.js";
export * from "./chunker.js";
export * from "./hash.js";
export * from "./codec.js";
export * from "./tree.js";
export * from "./retention.js";
