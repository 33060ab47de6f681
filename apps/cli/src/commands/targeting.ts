/**
 * Where layers go (docs/design/layers.md, "Assignment and composition",
 * "Drivers"), over the stored login:
 *
 * - `strata collection`: groups of CVDs, static (members by hand) or
 *   dynamic (`--rule hostname=lab-*,os='debian 12',vendor=…,model=…,tag=…`);
 * - `strata driver profile`: driver folders for the endpoints a rule
 *   matches (`--rule vendor=…,model=…,modalias=…`, several: any matches);
 * - `strata layer rules`: the do-not-override and base-capture rules;
 * - `strata cvd tag`: the tags collection rules match.
 *
 * Registered last: `layer`, `cvd` and `driver` may already exist (other
 * files add their own subcommands), so each is found or created.
 */
import { StrataError } from "@strata/core";
import type {
  CollectionInfo,
  CollectionRule,
  DriverProfileInfo,
  DriverRule,
  LayerRulesInfo,
  PolicyRule,
} from "@strata/protocol";
import type { Command } from "commander";
import { printJson } from "../output.js";
import { readJsonFile } from "./fleet.js";
import { call, client, type Opts, table } from "./server.js";

const opts = (cmd: Command) => cmd.optsWithGlobals() as Opts;
const out = (s: string) => process.stdout.write(s);

/** The subcommand `name` of `parent`, created with `description` when it does not exist yet. */
export function subcommand(parent: Command, name: string, description: string): Command {
  return parent.commands.find((c) => c.name() === name) ?? parent.command(name).description(description);
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * `key=value,key=value`: the fields of one rule. A value runs to the next
 * comma (globs have none); quote the whole argument for the shell when a
 * value has spaces (`--rule "os=debian 12"`).
 */
export function parseRuleSpec(spec: string, keys: readonly string[]): [string, string][] {
  const fields: [string, string][] = [];
  for (const part of spec.split(",")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    const key = (eq < 0 ? part : part.slice(0, eq)).trim();
    const value = eq < 0 ? "" : part.slice(eq + 1).trim();
    if (!keys.includes(key) || value === "") {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `${JSON.stringify(part)} is not KEY=VALUE with KEY one of ${keys.join(", ")}`,
        {
          hint: `e.g. --rule ${keys[0]}=GLOB,${keys[1]}=GLOB`,
        },
      );
    }
    fields.push([key, value.replace(/^(['"])(.*)\1$/, "$2")]);
  }
  if (!fields.length) {
    throw new StrataError("INVALID_ARGUMENT", "an empty rule", { hint: `e.g. --rule ${keys[0]}=GLOB` });
  }
  return fields;
}

export function parseCollectionRule(spec: string): CollectionRule {
  const rule: CollectionRule = {};
  for (const [k, v] of parseRuleSpec(spec, ["hostname", "os", "vendor", "model", "tag"])) {
    if (k === "tag") rule.tags = [...(rule.tags ?? []), v];
    else if (rule[k as "hostname"] !== undefined) {
      throw new StrataError("INVALID_ARGUMENT", `${k} is given twice in ${JSON.stringify(spec)}`, {
        hint: "one value per field; only tag repeats",
      });
    } else rule[k as "hostname"] = v;
  }
  return rule;
}

export function parseDriverRule(spec: string): DriverRule {
  const rule: DriverRule = {};
  for (const [k, v] of parseRuleSpec(spec, ["vendor", "model", "modalias"])) {
    if (rule[k as "vendor"] !== undefined) {
      throw new StrataError("INVALID_ARGUMENT", `${k} is given twice in ${JSON.stringify(spec)}`, {
        hint: "a rule's fields must all match; give another --rule for an alternative",
      });
    }
    rule[k as "vendor"] = v;
  }
  return rule;
}

function ruleText(r: object | null): string {
  if (r === null) return "static";
  return Object.entries(r)
    .flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => `tag=${x}`) : [`${k}=${v}`]))
    .join(",");
}

function showCollection(c: CollectionInfo): string {
  return (
    `collection ${c.name} (${c.id})\n` +
    `  kind:    ${c.rule === null ? "static" : `dynamic, rule ${ruleText(c.rule)}`}\n` +
    `  created: ${c.createdAt}\n` +
    `  members: ${c.members.length}${c.members.length ? "" : c.rule === null ? " (add some with `strata collection add`)" : " (no CVD matches now)"}\n` +
    c.members.map((m) => `    ${m}\n`).join("")
  );
}

function showProfile(p: DriverProfileInfo): string {
  return (
    `driver profile ${p.name} (${p.id})\n` +
    `  folders: ${p.folders.map((f, i) => (p.folderNames[i] !== f ? `${p.folderNames[i]} (${f})` : f)).join(", ") || "-"}\n` +
    `  rules (any one matches):\n${p.rules.map((r) => `    ${ruleText(r)}\n`).join("")}` +
    `  matches: ${p.cvds.length} CVD(s)\n${p.cvds.map((c) => `    ${c}\n`).join("")}` +
    `  updated: ${p.updatedAt}\n`
  );
}

function showRules(r: LayerRulesInfo): string {
  const list = (rules: PolicyRule[]) =>
    rules.map((x) => `    ${x.dir}${x.pattern ? `  ${x.pattern}` : ""}\n`).join("");
  return (
    `layer rules (${r.isDefault ? "the built-in defaults" : `set by ${r.updatedBy} at ${r.updatedAt}`})\n` +
    `  do not override (no layer writes or deletes these on endpoints):\n${list(r.doNotOverride)}` +
    `  base capture drops (besides the user area):\n${list(r.baseCapture)}`
  );
}

export function registerTargetingCommands(program: Command): void {
  // ---- collections -----------------------------------------------------------------------
  const col = program
    .command("collection")
    .description(
      "collections of CVDs that layers are assigned to: static (members by hand) or dynamic (a rule)",
    );
  col
    .command("create")
    .description(
      "create a collection: with --rule a dynamic one (its members are the CVDs the rule matches, whenever asked), else a static one",
    )
    .argument("<name>", "collection name")
    .option(
      "--rule <spec>",
      "hostname=GLOB,os='debian 12',vendor=GLOB,model=GLOB,tag=TAG (fields all match; tag repeats; vendor, model, hostname ignore case)",
    )
    .option("--member <cvd...>", "a static collection's first members")
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = await call(
        client(o).createCollection({
          name,
          ...(o.rule ? { rule: parseCollectionRule(String(o.rule)) } : {}),
          ...(o.member ? { members: o.member as string[] } : {}),
        }),
      );
      if (o.json) return printJson(c);
      out(
        `created collection ${c.name} (${c.id}), ${c.rule ? "dynamic" : "static"}, ${c.members.length} member(s)\n`,
      );
    });
  col
    .command("ls")
    .alias("list")
    .description("list collections with their rule and member count")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listCollections());
      if (o.json) return printJson(list);
      out(
        list.length
          ? table([
              ["NAME", "ID", "RULE", "MEMBERS"],
              ...list.map((c) => [c.name, c.id, ruleText(c.rule), String(c.members.length)]),
            ])
          : "no collections; create one with `strata collection create NAME [--rule …]`\n",
      );
    });
  col
    .command("show")
    .description("show a collection and its members (a dynamic one's as its rule matches now)")
    .argument("<collection>", "name or id")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const c = await call(client(o).getCollection(ref));
      if (o.json) return printJson(c);
      out(showCollection(c));
    });
  col
    .command("add")
    .description("add CVDs to a static collection")
    .argument("<collection>", "name or id")
    .argument("<cvd...>", "CVD ids")
    .action(async (ref: string, cvds: string[], _o, cmd: Command) => {
      const o = opts(cmd);
      const c = await call(client(o).addToCollection(ref, cvds));
      if (o.json) return printJson(c);
      out(`collection ${c.name} has ${c.members.length} member(s)\n`);
    });
  col
    .command("remove")
    .description("remove CVDs from a static collection")
    .argument("<collection>", "name or id")
    .argument("<cvd...>", "CVD ids")
    .action(async (ref: string, cvds: string[], _o, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      let last: CollectionInfo | undefined;
      for (const cvd of cvds) last = await call(c.removeFromCollection(ref, cvd));
      if (o.json) return printJson(last);
      out(`collection ${last!.name} has ${last!.members.length} member(s)\n`);
    });
  col
    .command("rm")
    .alias("delete")
    .description("delete a collection and the assignments made to it (its members keep their own)")
    .argument("<collection>", "name or id")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      await call(client(o).deleteCollection(ref));
      if (o.json) return printJson({ deleted: ref });
      out(`deleted collection ${ref}\n`);
    });

  // ---- driver profiles -------------------------------------------------------------------
  const driver = subcommand(program, "driver", "driver folders and the profiles that give them to endpoints");
  const prof = driver
    .command("profile")
    .description(
      "driver profiles: driver folders for the endpoints whose DMI vendor, model or modaliases match",
    );
  const ruleOption =
    "vendor=GLOB,model=GLOB,modalias=GLOB (fields all match; repeat --rule: any rule matches)";
  prof
    .command("create")
    .description("create a driver profile")
    .argument("<name>", "profile name")
    .option("--folder <layer...>", "driver layers (name or id)", [])
    .requiredOption("--rule <spec>", ruleOption, collect)
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const p = await call(
        client(o).createDriverProfile({
          name,
          folders: o.folder as string[],
          rules: (o.rule as string[]).map(parseDriverRule),
        }),
      );
      if (o.json) return printJson(p);
      out(`created driver profile ${p.name} (${p.id}); it matches ${p.cvds.length} CVD(s) now\n`);
    });
  prof
    .command("ls")
    .alias("list")
    .description("list driver profiles with their folders, rules and how many CVDs they match")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listDriverProfiles());
      if (o.json) return printJson(list);
      if (!list.length) {
        out("no driver profiles; create one with `strata driver profile create`\n");
        return;
      }
      out(
        table([
          ["NAME", "ID", "FOLDERS", "RULES", "MATCHES"],
          ...list.map((p) => [
            p.name,
            p.id,
            p.folderNames.join(",") || "-",
            p.rules.map(ruleText).join(" | "),
            String(p.cvds.length),
          ]),
        ]),
      );
    });
  prof
    .command("show")
    .description("show a driver profile and the CVDs it matches now")
    .argument("<profile>", "name or id")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const p = await call(client(o).getDriverProfile(ref));
      if (o.json) return printJson(p);
      out(showProfile(p));
    });
  prof
    .command("edit")
    .description("change a driver profile: the options given replace its name, folders or rules")
    .argument("<profile>", "name or id")
    .option("--name <name>", "rename it")
    .option("--folder <layer...>", "its driver layers (name or id), all of them")
    .option("--rule <spec>", `its rules, all of them: ${ruleOption}`, collect)
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      if (o.name === undefined && o.folder === undefined && o.rule === undefined) {
        throw new StrataError("INVALID_ARGUMENT", "nothing to change", {
          hint: "give --name, --folder or --rule",
        });
      }
      const p = await call(
        client(o).updateDriverProfile(ref, {
          ...(o.name !== undefined ? { name: String(o.name) } : {}),
          ...(o.folder !== undefined ? { folders: o.folder as string[] } : {}),
          ...(o.rule !== undefined ? { rules: (o.rule as string[]).map(parseDriverRule) } : {}),
        }),
      );
      if (o.json) return printJson(p);
      out(
        `updated driver profile ${p.name}; it matches ${p.cvds.length} CVD(s) now (their next apply brings the change)\n`,
      );
    });
  prof
    .command("rm")
    .alias("delete")
    .description("delete a driver profile (its folders leave the images of the CVDs it matched)")
    .argument("<profile>", "name or id")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      await call(client(o).deleteDriverProfile(ref));
      if (o.json) return printJson({ deleted: ref });
      out(`deleted driver profile ${ref}\n`);
    });

  // ---- layer rules ---------------------------------------------------------------------------
  const layer = subcommand(program, "layer", "base, app and driver layers");
  layer
    .command("rules")
    .description(
      "show the do-not-override and base-capture rules; --set FILE replaces them (edit the output of --json)",
    )
    .option("--set <file>", "a JSON file { doNotOverride: [...], baseCapture: [...] } (- for stdin)")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const c = client(o);
      let r: LayerRulesInfo;
      if (o.set) {
        const doc = readJsonFile(String(o.set)) as Record<string, unknown> | null;
        if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
          throw new StrataError("INVALID_ARGUMENT", `${o.set} is not a JSON object`, {
            hint: "start from `strata layer rules --json`",
          });
        }
        r = await call(
          c.setLayerRules({
            doNotOverride: doc.doNotOverride as PolicyRule[],
            baseCapture: doc.baseCapture as PolicyRule[],
          }),
        );
      } else r = await call(c.getLayerRules());
      if (o.json) return printJson(r);
      out(showRules(r));
    });

  // ---- CVD tags -------------------------------------------------------------------------------
  const cvd = subcommand(program, "cvd", "CVDs, the endpoints' centralized copies");
  cvd
    .command("tag")
    .description("add tags to a CVD (collection rules match them), or --remove some; prints its tags")
    .argument("<cvd>", "CVD id (cvd_…)")
    .argument("[tags...]", "tags to add: letters, digits and . _ : + -")
    .option("--remove <tag...>", "tags to remove")
    .action(async (id: string, tags: string[], _o, cmd: Command) => {
      const o = opts(cmd);
      const remove = (o.remove as string[] | undefined) ?? [];
      const c = client(o);
      const r = await call(
        tags.length || remove.length
          ? c.tagCvd(id, { ...(tags.length ? { add: tags } : {}), ...(remove.length ? { remove } : {}) })
          : c.getCvd(id).then((x) => ({ cvd: x.id, tags: x.tags })),
      );
      if (o.json) return printJson(r);
      out(`CVD ${r.cvd}: ${r.tags.length ? r.tags.join(" ") : "no tags"}\n`);
    });
}
