/**
 * `strata autoassign`: the auto-assignment rules (docs/design/server.md,
 * "Auto-assignment rules"), over the stored login. An ordered list; the
 * first rule whose condition (`--rule hostname=lab-*,os='debian 12',
 * vendor=…,model=…`, the collection rule language without tags) matches an
 * enrolling endpoint gives it a new CVD with the rule's policy and tags.
 * `strata endpoints approve --by-rules` applies them to pending endpoints.
 */
import { StrataError } from "@strata/core";
import type { AutoassignCondition, AutoassignRuleInfo, AutoassignTestResult } from "@strata/protocol";
import type { Command } from "commander";
import { printJson } from "../output.js";
import { call, client, type Opts, table } from "./server.js";
import { parseRuleSpec } from "./targeting.js";

const opts = (cmd: Command) => cmd.optsWithGlobals() as Opts;
const out = (s: string) => process.stdout.write(s);
const collect = (v: string, prev: string[] = []) => [...prev, v];
const KEYS = ["hostname", "os", "vendor", "model"] as const;

export function parseAutoassignRule(spec: string): AutoassignCondition {
  const rule: AutoassignCondition = {};
  for (const [k, v] of parseRuleSpec(spec, KEYS)) {
    const key = k as (typeof KEYS)[number];
    if (rule[key] !== undefined) {
      throw new StrataError("INVALID_ARGUMENT", `${k} is given twice in ${JSON.stringify(spec)}`, {
        hint: "one value per field; every field given must match",
      });
    }
    rule[key] = v;
  }
  return rule;
}

const ruleText = (r: AutoassignCondition) =>
  Object.entries(r)
    .map(([k, v]) => (/[\s,]/.test(String(v)) ? `${k}='${v}'` : `${k}=${v}`))
    .join(",");

function rulesTable(list: AutoassignRuleInfo[]): string {
  return table([
    ["#", "NAME", "RULE", "POLICY", "TAGS", "CREATED BY"],
    ...list.map((r) => [
      String(r.position),
      r.name,
      ruleText(r.rule),
      r.policy,
      r.tags.join(",") || "-",
      r.createdBy,
    ]),
  ]);
}

function showRule(r: AutoassignRuleInfo): string {
  return (
    `auto-assignment rule ${r.name} (${r.id}), evaluated ${r.position}${r.position === 1 ? "st" : r.position === 2 ? "nd" : r.position === 3 ? "rd" : "th"}\n` +
    `  matches:  ${ruleText(r.rule)}\n` +
    `  gives:    a new CVD with policy ${r.policy}${r.tags.length ? `, tags ${r.tags.join(", ")}` : ""}\n` +
    `  created:  ${r.createdAt} by ${r.createdBy}\n`
  );
}

function showTest(t: AutoassignTestResult): string {
  const f = t.facts;
  const lines = [
    `${t.endpoint ? `endpoint ${t.endpoint}` : "facts"}: hostname=${f.hostname || "-"}, os=${f.os ?? "-"}, vendor=${f.vendor ?? "-"}, model=${f.model ?? "-"}`,
    t.match
      ? `first match: ${t.match.name} → a new CVD with policy ${t.match.policy}${t.match.tags.length ? `, tags ${t.match.tags.join(", ")}` : ""}`
      : "no rule matches: the endpoint stays pending (unless its token auto-approves)",
  ];
  if (t.rules.length)
    lines.push(...t.rules.map((r, i) => `  ${i + 1}. ${r.name}: ${r.matches ? "matches" : "no"}`));
  return `${lines.join("\n")}\n`;
}

export function registerAutoassignCommands(program: Command): void {
  const aa = program
    .command("autoassign")
    .description(
      "auto-assignment rules: which enrolling endpoints get a CVD at once, with which policy (first match wins)",
    );
  aa.command("ls")
    .alias("list")
    .description("list the rules in the order they are evaluated")
    .action(async (_a, cmd: Command) => {
      const o = opts(cmd);
      const list = await call(client(o).listAutoassignRules());
      if (o.json) return printJson(list);
      out(
        list.length
          ? rulesTable(list)
          : "no auto-assignment rules: enrolling endpoints stay pending unless their token auto-approves\n" +
              "create one with `strata autoassign create NAME --rule hostname=lab-* --policy POLICY`\n",
      );
    });
  aa.command("show")
    .description("show a rule")
    .argument("<rule>", "name or id")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const r = await call(client(o).getAutoassignRule(ref));
      if (o.json) return printJson(r);
      out(showRule(r));
    });
  aa.command("create")
    .description(
      "add a rule (last, or --before another): an enrolling endpoint it matches gets a new CVD with --policy and --tag",
    )
    .argument("<name>", "rule name")
    .requiredOption(
      "--rule <spec>",
      "hostname=GLOB,os='debian 12',vendor=GLOB,model=GLOB (every field given must match; hostname, vendor, model ignore case)",
    )
    .option("--policy <name>", "upload policy of the CVDs it creates (default: the default policy)")
    .option("--tag <tag>", "a tag the new CVD gets (repeat; collection rules match tags)", collect)
    .option("--before <rule>", "evaluate it just before this rule (default: last)")
    .action(async (name: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const r = await call(
        client(o).createAutoassignRule({
          name,
          rule: parseAutoassignRule(String(o.rule)),
          ...(o.policy ? { policy: String(o.policy) } : {}),
          ...(o.tag ? { tags: o.tag as string[] } : {}),
          ...(o.before ? { before: String(o.before) } : {}),
        }),
      );
      if (o.json) return printJson(r);
      out(
        `created rule ${r.name} (${r.id}), evaluated ${r.position}. of the rules: ${ruleText(r.rule)} → policy ${r.policy}\n` +
          "pending endpoints it matches get their CVD with `strata endpoints approve --by-rules`\n",
      );
    });
  aa.command("rm")
    .alias("delete")
    .description("remove a rule (CVDs it created keep their policy and tags)")
    .argument("<rule>", "name or id")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      await call(client(o).deleteAutoassignRule(ref));
      if (o.json) return printJson({ removed: ref });
      out(`removed auto-assignment rule ${ref}\n`);
    });
  aa.command("test")
    .description(
      "which rule an endpoint would get (its stored facts), or hypothetical --facts; changes nothing",
    )
    .argument("[endpoint]", "endpoint id (ep_…)")
    .option("--facts <spec>", "hostname=NAME,os='debian 12',vendor=…,model=… instead of an endpoint")
    .action(async (endpoint: string | undefined, _o, cmd: Command) => {
      const o = opts(cmd);
      if ((endpoint === undefined) === (o.facts === undefined)) {
        throw new StrataError("INVALID_ARGUMENT", "give an endpoint id or --facts, not both", {
          hint: "strata autoassign test ep_…   |   strata autoassign test --facts hostname=lab-7,os='debian 12'",
        });
      }
      const t = await call(
        client(o).testAutoassignRules(
          endpoint ? { endpoint } : { facts: parseAutoassignRule(String(o.facts)) },
        ),
      );
      if (o.json) return printJson(t);
      out(showTest(t));
    });
}
