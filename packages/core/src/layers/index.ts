export * from "./accounts.js";
export * from "./dpkg.js";
export * from "./structured.js";
export * from "./types.js";
