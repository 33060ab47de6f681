export * from "./accounts.js";
export * from "./alternatives.js";
export * from "./dpkg.js";
export * from "./drivers.js";
export * from "./dryrun.js";
export * from "./structured.js";
export * from "./triggers.js";
export * from "./types.js";
