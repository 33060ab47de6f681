/**
 * Structural twins of the wire types in packages/protocol/src/layers.ts
 * (core does not import protocol): same names, same fields, so objects pass
 * between them unchanged.
 */

/** A dpkg status stanza of one package. */
export interface PackageStanza {
  name: string;
  /** `Architecture` ("" when the stanza has none). */
  arch: string;
  /** `Version` ("" when the stanza has none). */
  version: string;
  /** The whole stanza, as dpkg writes it, without its final newline and the blank line that ends it. */
  stanza: string;
}

/** Lines of the account files, each without its newline. */
export interface AccountLines {
  passwd: string[];
  group: string[];
  shadow: string[];
  gshadow: string[];
}

export type Trigger = "ldconfig" | "systemd-daemon-reload";

export type DryRunProblemKind =
  | "downgrade"
  | "soname"
  | "missing-dependency"
  | "account-clash"
  | "os-mismatch"
  | "disk-space";

export interface DryRunProblem {
  kind: DryRunProblemKind;
  blocking: boolean;
  /** Names the package, path or account, and what to do. */
  message: string;
  subject: string;
}

export interface PackageUpdate {
  name: string;
  from: string;
  to: string;
}
