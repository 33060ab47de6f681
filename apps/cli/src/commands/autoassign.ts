/**
 * `strata autoassign`: the auto-assignment rules (docs/design/server.md,
 * "Auto-assignment rules"), over the stored login. An ordered list; the
 * first rule whose condition (`--rule hostname=lab-*,os='debian 12',
 * vendor=…,model=…`, the collection rule language without tags) matches an
 * enrolling endpoint gives it a new CVD with the rule's policy and tags.
 * `strata endpoints approve --by-rules` applies them to pending endpoints.
 */
import { StrataError } from "@strata/core";
import type {
  AutoassignCondition,
  AutoassignRuleInfo,
  AutoassignTestResult,
  UpdateAutoassignRuleRequest,
} from "@strata/protocol";
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

const usage = (message: string, hint: string) => new StrataError("INVALID_ARGUMENT", message, { hint });

/**
 * `autoassign edit`'s options as a PATCH body: --rule replaces the whole
 * condition (the fields it leaves out are removed), --hostname/--os/
 * --vendor/--model change one field and --unset removes one, keeping the
 * rest; --tag replaces the tags, --no-tags removes them; --before or
 * --last moves the rule.
 */
export function editRequest(o: Record<string, unknown>): UpdateAutoassignRuleRequest {
  const fields = KEYS.filter((k) => o[k] !== undefined);
  const unset = (o.unset as string[] | undefined) ?? [];
  for (const k of unset)
    if (!(KEYS as readonly string[]).includes(k))
      throw usage(`--unset ${k}: not a condition field`, `one of ${KEYS.join(", ")}`);
  if (o.rule !== undefined && (fields.length || unset.length))
    throw usage(
      "--rule replaces the whole condition: give it alone, or change fields one by one",
      "--rule hostname=lab-*,os='debian 12'   |   --os 'debian 13' --unset vendor",
    );
  const twice = fields.find((k) => unset.includes(k));
  if (twice) throw usage(`--${twice} and --unset ${twice} contradict each other`, "give one of them");
  if (o.tag !== undefined && o.tags === false)
    throw usage(
      "--tag and --no-tags contradict each other",
      "--tag replaces all the tags; --no-tags removes them",
    );
  if (o.before !== undefined && o.last)
    throw usage("--before and --last contradict each other", "give one of them");
  let rule: UpdateAutoassignRuleRequest["rule"];
  if (o.rule !== undefined) {
    const given = parseAutoassignRule(String(o.rule));
    rule = Object.fromEntries(KEYS.map((k) => [k, given[k] ?? null]));
  } else if (fields.length || unset.length) {
    rule = Object.fromEntries([...fields.map((k) => [k, String(o[k])]), ...unset.map((k) => [k, null])]);
  }
  const req: UpdateAutoassignRuleRequest = {
    ...(o.name !== undefined ? { name: String(o.name) } : {}),
    ...(rule ? { rule } : {}),
    ...(o.policy !== undefined ? { policy: String(o.policy) } : {}),
    ...(o.tag !== undefined
      ? { tags: [...new Set(o.tag as string[])] }
      : o.tags === false
        ? { tags: [] }
        : {}),
    ...(o.before !== undefined ? { before: String(o.before) } : o.last ? { before: null } : {}),
  };
  if (!Object.keys(req).length)
    throw usage(
      "nothing to change",
      "give --name, --rule, --hostname/--os/--vendor/--model, --unset, --policy, --tag/--no-tags, or --before/--last",
    );
  return req;
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
  aa.command("edit")
    .description(
      "change a rule in place (its id stays; its place too, unless --before or --last): the options given change, the rest stays; CVDs it already made do not change",
    )
    .argument("<rule>", "name or id")
    .option("--name <name>", "rename it")
    .option(
      "--rule <spec>",
      "a new condition replacing the whole of it, as in create: hostname=GLOB,os='debian 12',vendor=GLOB,model=GLOB",
    )
    .option("--hostname <glob>", "change the hostname field of the condition (the other fields stay)")
    .option("--os <glob>", "change the os field of the condition, e.g. 'debian 1*' (the other fields stay)")
    .option("--vendor <glob>", "change the vendor field of the condition (the other fields stay)")
    .option("--model <glob>", "change the model field of the condition (the other fields stay)")
    .option(
      "--unset <field>",
      "remove a field (hostname, os, vendor, model) from the condition (repeat; one field must remain)",
      collect,
    )
    .option("--policy <name>", "upload policy of the CVDs it creates from now on")
    .option("--tag <tag>", "a tag its new CVDs get (repeat): replaces all of its tags", collect)
    .option("--no-tags", "its new CVDs get no tags")
    .option("--before <rule>", "move it to just before this rule")
    .option("--last", "move it to the end: evaluated last")
    .action(async (ref: string, _o, cmd: Command) => {
      const o = opts(cmd);
      const req = editRequest(cmd.opts()); // usage errors before the login is read
      const r = await call(client(o).updateAutoassignRule(ref, req));
      if (o.json) return printJson(r);
      out(
        `updated rule ${r.name} (${r.id}), evaluated ${r.position}. of the rules: ${ruleText(r.rule)} → policy ${r.policy}${r.tags.length ? `, tags ${r.tags.join(", ")}` : ""}\n` +
          "CVDs it already made keep their policy and tags; pending endpoints it matches now get their CVD with `strata endpoints approve --by-rules`\n",
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
