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

export type Trigger =
  | "ldconfig"
  | "update-alternatives"
  | "kernel-postrm"
  | "depmod"
  | "kernel-postinst"
  | "update-initramfs"
  | "update-grub"
  | "systemd-daemon-reload";

/** A slave link of an alternatives group: `--slave LINK NAME PATH`. */
export interface AlternativeSlave {
  name: string;
  link: string;
}

/** One alternative of a group: its path, priority and the path of each slave it provides. */
export interface AlternativeChoice {
  path: string;
  priority: number;
  /** Slave name → path, for the slaves this alternative provides. */
  slaves: Record<string, string>;
}

/**
 * An alternatives group as a layer records it (docs/design/layers.md,
 * "Alternatives"): the group's links and the alternatives the capture added
 * or changed; `manual` is the alternative the capture chose by hand.
 */
export interface LayerAlternative {
  name: string;
  /** The generic (master) link, e.g. /usr/bin/editor. */
  link: string;
  slaves: AlternativeSlave[];
  choices: AlternativeChoice[];
  manual?: string;
}

/** A layer's alternatives: the groups it registers into, and the alternatives it removed. */
export interface LayerAlternatives {
  groups: LayerAlternative[];
  removed: { name: string; path: string }[];
}

/**
 * The kernels an apply works on: those named, or (all) every kernel of the
 * endpoint — whose initramfs it rebuilds (`initramfs`), whose modules it
 * indexes (`depmod`).
 */
export interface InitramfsTargets {
  kernels: string[];
  all: boolean;
}

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
