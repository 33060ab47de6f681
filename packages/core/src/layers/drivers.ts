/**
 * Rules over an endpoint's facts: driver profiles (which driver folders an
 * endpoint gets) and dynamic collections (docs/design/layers.md).
 *
 * Globs are fnmatch(3)-style over plain strings (`*` and `?` match any
 * character, `[…]` a class). `vendor`, `model` and `hostname` compare
 * case-insensitively (firmware updates change DMI strings' case; host
 * names are case-insensitive); `modalias`, `os` and tags are exact, as the
 * kernel matches modaliases. Facts are trimmed (sysfs values end in a
 * newline, DMI strings often in spaces). A rule with no field matches
 * nothing: "every endpoint" is written `vendor: "*"` or `hostname: "*"`.
 */
import { globToRegExp } from "../glob.js";

export interface DriverRule {
  vendor?: string;
  model?: string;
  modalias?: string;
}

export interface DriverFacts {
  /** /sys/class/dmi/id/sys_vendor */
  vendor?: string;
  /** /sys/class/dmi/id/product_name */
  model?: string;
  /** Every PCI/USB modalias of the endpoint. */
  modaliases?: readonly string[];
}

export interface CollectionRule {
  hostname?: string;
  /** `debian 12`: a glob over `ID VERSION_ID`. */
  os?: string;
  vendor?: string;
  model?: string;
  /** Every tag must be among the endpoint's. */
  tags?: string[];
}

export interface CollectionFacts {
  hostname: string;
  os?: { id: string; versionId: string } | null;
  vendor?: string;
  model?: string;
  tags?: readonly string[];
}

const cache = new Map<string, RegExp>();
function glob(pattern: string, ignoreCase: boolean): RegExp {
  const key = `${ignoreCase ? "i" : "c"}${pattern}`;
  let re = cache.get(key);
  if (!re) {
    re = globToRegExp(pattern.trim(), { text: true, ignoreCase });
    if (cache.size > 1000) cache.clear();
    cache.set(key, re);
  }
  return re;
}

/** `value` is present and matches `pattern`; an absent pattern matches anything. */
function fieldMatches(pattern: string | undefined, value: string | undefined, ignoreCase: boolean): boolean {
  if (pattern === undefined) return true;
  return value !== undefined && glob(pattern, ignoreCase).test(value.trim());
}

/** Every field the rule has matches; `modalias` matches when any endpoint modalias does. */
export function matchDriverRule(rule: DriverRule, facts: DriverFacts): boolean {
  if (rule.vendor === undefined && rule.model === undefined && rule.modalias === undefined) return false;
  if (!fieldMatches(rule.vendor, facts.vendor, true)) return false;
  if (!fieldMatches(rule.model, facts.model, true)) return false;
  if (rule.modalias !== undefined) {
    const re = glob(rule.modalias, false);
    if (!(facts.modaliases ?? []).some((m) => re.test(m.trim()))) return false;
  }
  return true;
}

/** A driver profile matches when any of its rules does (no rules: never). */
export function matchProfile(rules: readonly DriverRule[], facts: DriverFacts): boolean {
  return rules.some((r) => matchDriverRule(r, facts));
}

/** A dynamic collection's rule: every field it has matches the endpoint's facts. */
export function matchCollectionRule(rule: CollectionRule, facts: CollectionFacts): boolean {
  const tags = rule.tags ?? [];
  if (
    rule.hostname === undefined &&
    rule.os === undefined &&
    rule.vendor === undefined &&
    rule.model === undefined &&
    tags.length === 0
  )
    return false;
  if (!fieldMatches(rule.hostname, facts.hostname, true)) return false;
  if (rule.os !== undefined) {
    const os = facts.os ? `${facts.os.id} ${facts.os.versionId}`.trim() : undefined;
    if (!fieldMatches(rule.os.replace(/\s+/g, " "), os, false)) return false;
  }
  if (!fieldMatches(rule.vendor, facts.vendor, true)) return false;
  if (!fieldMatches(rule.model, facts.model, true)) return false;
  const have = new Set(facts.tags ?? []);
  return tags.every((t) => have.has(t));
}
