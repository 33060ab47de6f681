export * from "./api.js";
export * from "./client.js";
export * from "./errors.js";
export * from "./fingerprint.js";
export * from "./fleet.js";
export * from "./layers.js";
export * from "./permissions.js";
export * from "./restore.js";
