import {
  type AccountLines,
  accountName,
  diffAccounts,
  formatAccountFile,
  mergeAccounts,
  parseAccountLines,
  systemAccounts,
} from "@strata/core";
import { describe, expect, it } from "vitest";
import { BOOKWORM_GROUP, BOOKWORM_GSHADOW, BOOKWORM_PASSWD, BOOKWORM_SHADOW } from "./layers-fixtures.js";

const bookworm = (): AccountLines => ({
  passwd: parseAccountLines(BOOKWORM_PASSWD),
  group: parseAccountLines(BOOKWORM_GROUP),
  shadow: parseAccountLines(BOOKWORM_SHADOW),
  gshadow: parseAccountLines(BOOKWORM_GSHADOW),
});

/** What `apt-get install jq postgresql` style installs add: system users with their groups. */
const JQ_USER = "_jq:x:998:998::/nonexistent:/usr/sbin/nologin";
const JQ_GROUP = "_jq:x:998:";
const PG_USER = "postgres:x:104:110:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash";
const PG_GROUP = "postgres:x:110:";
const SSL_GROUP = "ssl-cert:x:109:postgres";

const withLines = (base: AccountLines, add: Partial<AccountLines>): AccountLines => ({
  passwd: [...base.passwd, ...(add.passwd ?? [])],
  group: [...base.group, ...(add.group ?? [])],
  shadow: [...base.shadow, ...(add.shadow ?? [])],
  gshadow: [...base.gshadow, ...(add.gshadow ?? [])],
});

describe("parseAccountLines / formatAccountFile", () => {
  it("reads the lines of a real passwd, and writes them back exactly", () => {
    const lines = parseAccountLines(BOOKWORM_PASSWD);
    expect(lines).toHaveLength(18);
    expect(lines[0]).toBe("root:x:0:0:root:/root:/bin/bash");
    expect(lines.map(accountName)).toContain("_apt");
    expect(formatAccountFile(lines)).toBe(BOOKWORM_PASSWD);
    expect(formatAccountFile([])).toBe("");
    expect(parseAccountLines("a:x:1:1::/:/bin/sh\n\nb:x:2:2::/:/bin/sh")).toHaveLength(2);
  });
});

describe("diffAccounts", () => {
  it("lists lines whose name is new, per file, in post order", () => {
    const pre = bookworm();
    const post = withLines(pre, {
      passwd: [PG_USER],
      group: [SSL_GROUP, PG_GROUP],
      shadow: ["postgres:*:20782:0:99999:7:::"],
      gshadow: ["ssl-cert:!::postgres", "postgres:!::"],
    });
    // A changed line of an existing name (a password set) is not an addition.
    post.shadow[0] = "root:$y$j9T$abc$def:20783:0:99999:7:::";
    const d = diffAccounts(pre, post);
    expect(d).toEqual({
      passwd: [PG_USER],
      group: [SSL_GROUP, PG_GROUP],
      shadow: ["postgres:*:20782:0:99999:7:::"],
      gshadow: ["ssl-cert:!::postgres", "postgres:!::"],
    });
  });
});

describe("mergeAccounts", () => {
  it("keeps live lines verbatim and appends the image's new names in image order", () => {
    const live = bookworm();
    // The endpoint has its own root password and a human user.
    live.shadow[0] = "root:$y$j9T$endpoint$hash:20790:0:99999:7:::";
    live.passwd.push("alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash");
    live.group.push("alice:x:1000:");
    const image = withLines(bookworm(), {
      passwd: [PG_USER, JQ_USER],
      group: [SSL_GROUP, PG_GROUP, JQ_GROUP],
      shadow: ["postgres:*:20782:0:99999:7:::", "_jq:!:20782::::::"],
      gshadow: ["ssl-cert:!::postgres", "postgres:!::", "_jq:!::"],
    });
    image.shadow[0] = "root:$y$j9T$reference$hash:20700:0:99999:7:::";
    const m = mergeAccounts(live, image);
    expect(m.clashes).toEqual([]);
    expect(m.added).toEqual([
      "passwd:postgres",
      "passwd:_jq",
      "group:ssl-cert",
      "group:postgres",
      "group:_jq",
    ]);
    expect(m.files.passwd).toEqual([...live.passwd, PG_USER, JQ_USER]);
    expect(m.files.group).toEqual([...live.group, SSL_GROUP, PG_GROUP, JQ_GROUP]);
    expect(m.files.shadow[0]).toBe("root:$y$j9T$endpoint$hash:20790:0:99999:7:::");
    expect(m.files.shadow.slice(-2)).toEqual(["postgres:*:20782:0:99999:7:::", "_jq:!:20782::::::"]);
    expect(m.files.gshadow.slice(-3)).toEqual(["ssl-cert:!::postgres", "postgres:!::", "_jq:!::"]);
    expect(m.files.shadow).toHaveLength(live.shadow.length + 2);
  });

  it("keeps the endpoint's ids for a name both have", () => {
    const live = withLines(bookworm(), { passwd: ["postgres:x:105:111::/var/lib/postgresql:/bin/bash"] });
    const image = withLines(bookworm(), { passwd: [PG_USER] });
    const m = mergeAccounts(live, image);
    expect(m.files.passwd.filter((l) => l.startsWith("postgres:"))).toEqual([
      "postgres:x:105:111::/var/lib/postgresql:/bin/bash",
    ]);
    expect(m.added).toEqual([]);
  });

  it("reports a new name whose uid or gid the endpoint already uses, and does not add it", () => {
    const live = withLines(bookworm(), {
      passwd: ["mysql:x:998:998::/nonexistent:/bin/false"],
      group: ["mysql:x:998:"],
      shadow: ["mysql:!:20782::::::"],
    });
    const image = withLines(bookworm(), {
      passwd: [JQ_USER],
      group: [JQ_GROUP],
      shadow: ["_jq:!:20782::::::"],
      gshadow: ["_jq:!::"],
    });
    const m = mergeAccounts(live, image);
    expect(m.clashes).toEqual([
      { file: "passwd", name: "_jq", id: 998, holder: "mysql" },
      { file: "group", name: "_jq", id: 998, holder: "mysql" },
    ]);
    expect(m.added).toEqual([]);
    expect(m.files.passwd).toEqual(live.passwd);
    expect(m.files.group).toEqual(live.group);
    // No shadow line for an account that was not added.
    expect(m.files.shadow).toEqual(live.shadow);
    expect(m.files.gshadow).toEqual(live.gshadow);
  });

  it("unions member lists of groups both have, with users the merged passwd has", () => {
    const live = bookworm();
    live.passwd.push("alice:x:1000:1000::/home/alice:/bin/bash");
    live.group = live.group.map((l) => (l.startsWith("sudo:") ? "sudo:x:27:alice" : l));
    live.gshadow = live.gshadow.map((l) => (l.startsWith("sudo:") ? "sudo:*::alice" : l));
    const image = withLines(bookworm(), { passwd: [PG_USER], shadow: ["postgres:*:20782:0:99999:7:::"] });
    // The reference machine's admin "refadmin" is in sudo there; the endpoint has no such user.
    image.group = image.group.map((l) =>
      l.startsWith("sudo:")
        ? "sudo:x:27:refadmin,postgres"
        : l.startsWith("users:")
          ? "users:x:100:postgres"
          : l,
    );
    image.gshadow = image.gshadow.map((l) => (l.startsWith("sudo:") ? "sudo:*::refadmin,postgres" : l));
    const m = mergeAccounts(live, image);
    expect(m.files.group.find((l) => l.startsWith("sudo:"))).toBe("sudo:x:27:alice,postgres");
    expect(m.files.group.find((l) => l.startsWith("users:"))).toBe("users:x:100:postgres");
    expect(m.files.gshadow.find((l) => l.startsWith("sudo:"))).toBe("sudo:*::alice,postgres");
    // Groups the image does not touch stay as they were, in place.
    expect(m.files.group.indexOf("tty:x:5:")).toBe(live.group.indexOf("tty:x:5:"));
  });

  it("adds the image's shadow line for a live user that lacks one", () => {
    const live = withLines(bookworm(), { passwd: [PG_USER] });
    const image = withLines(bookworm(), { passwd: [PG_USER], shadow: ["postgres:*:20782:0:99999:7:::"] });
    const m = mergeAccounts(live, image);
    expect(m.files.shadow.at(-1)).toBe("postgres:*:20782:0:99999:7:::");
    // …but never a shadow line for a name no passwd line has.
    const stray = withLines(bookworm(), { shadow: ["ghost:*:1:0:99999:7:::"] });
    expect(mergeAccounts(bookworm(), stray).files.shadow).toEqual(bookworm().shadow);
  });

  it("formats merged files with a final newline", () => {
    const m = mergeAccounts(bookworm(), withLines(bookworm(), { passwd: [JQ_USER] }));
    expect(formatAccountFile(m.files.passwd)).toBe(`${BOOKWORM_PASSWD}${JQ_USER}\n`);
  });
});

describe("systemAccounts", () => {
  it("drops human users, their private groups and their memberships", () => {
    const ref = withLines(bookworm(), {
      passwd: ["ref:x:1000:1000:Ref,,,:/home/ref:/bin/bash", PG_USER],
      group: ["ref:x:1000:", PG_GROUP],
      shadow: ["ref:$y$j9T$x$y:20782:0:99999:7:::"],
      gshadow: ["ref:!::"],
    });
    ref.group = ref.group.map((l) => (l.startsWith("sudo:") ? "sudo:x:27:ref,postgres" : l));
    ref.gshadow = ref.gshadow.map((l) => (l.startsWith("sudo:") ? "sudo:*:ref:ref" : l));
    const s = systemAccounts(ref);
    expect(s.passwd.map(accountName)).not.toContain("ref");
    expect(s.passwd).toContain(PG_USER);
    expect(s.passwd).toContain("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin");
    expect(s.group.map(accountName)).not.toContain("ref");
    expect(s.group).toContain("sudo:x:27:postgres");
    expect(s.shadow.map(accountName)).not.toContain("ref");
    expect(s.gshadow).toContain("sudo:*::");
    expect(s.gshadow.map(accountName)).not.toContain("ref");
  });
});
