/**
 * Targeting through the HTTP stack, on every catalog (server.test.ts):
 * three endpoints with fabricated inventories (vendors, models,
 * modaliases, hostnames, OS releases) reported with PUT /agent/facts;
 * dynamic and static collections, CVD tags, driver profiles and the
 * driver folders each CVD gets, the layer rules, and which assignment wins
 * between one made to a CVD and one made to a collection it belongs to.
 */
import type { AssignmentRecord, ServerStore } from "@strata/catalog";
import { BASE_CAPTURE_RULES, DEFAULT_DO_NOT_OVERRIDE } from "@strata/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetTargeting } from "../src/services/targeting.js";
import { enroll, enrollmentToken, FACTS, type Harness, makeHarness } from "./suite.js";

const NVIDIA = "pci:v000010DEd00002520sv000017AAsd00003A58bc03sc00i00";
const INTEL_WIFI = "pci:v00008086d0000A0F0sv00008086sd00000244bc02sc80i00";
const INTEL_GPU = "pci:v00008086d00009A49sv00001028sd00000A5Bbc03sc00i00";
const FINGERPRINT_READER = "usb:v06CBp00FCd0000dcFFdsc10dpFFicFFisc00ip00in00";

/** Three machines: two in the lab (a Lenovo with an NVIDIA card, a Dell), one Lenovo in the office on Debian 13. */
const INVENTORY = [
  {
    n: 301,
    hostname: "lab-01",
    os: { id: "debian", versionId: "12" },
    dmi: { vendor: "LENOVO", model: "20XW0026GE" },
    modaliases: [NVIDIA, INTEL_WIFI, FINGERPRINT_READER],
  },
  {
    n: 302,
    hostname: "lab-02",
    os: { id: "debian", versionId: "12" },
    dmi: { vendor: "Dell Inc.", model: "XPS 13 9310" },
    modaliases: [INTEL_GPU, INTEL_WIFI],
  },
  {
    n: 303,
    hostname: "office-01",
    os: { id: "debian", versionId: "13" },
    dmi: { vendor: "LENOVO", model: "21AH00FGGE" },
    modaliases: [INTEL_GPU],
  },
] as const;

export function runTargetingSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`targeting on ${name}`, () => {
    let h: Harness;
    /** By hostname. */
    const cvd: Record<string, string> = {};
    const creds: Record<string, string> = {};
    const admin = () => ({ authorization: `Bearer ${h.adminToken}` });
    const get = (url: string) => h.app.inject({ method: "GET", url: `/api/v1${url}`, headers: admin() });
    const send = (method: "POST" | "PUT" | "PATCH" | "DELETE", url: string, payload?: unknown) =>
      h.app.inject({
        method,
        url: `/api/v1${url}`,
        headers: admin(),
        ...(payload === undefined ? {} : { payload }),
      });
    const reportFacts = (host: string, facts: Record<string, unknown>) =>
      h.app.inject({
        method: "PUT",
        url: "/api/v1/agent/facts",
        headers: { authorization: `Bearer ${creds[host]}`, "strata-protocol": "1" },
        payload: { facts },
      });
    const factsOf = (i: (typeof INVENTORY)[number]) => ({
      ...FACTS(i.n),
      hostname: i.hostname,
      os: { ...i.os, prettyName: `Debian GNU/Linux ${i.os.versionId}` },
      dmi: i.dmi,
      modaliases: [...i.modaliases],
    });
    const ids = (...hosts: string[]) => hosts.map((x) => cvd[x]!).sort();
    let targeting: FleetTargeting;

    beforeAll(async () => {
      h = await makeHarness(open);
      targeting = new FleetTargeting(h.store.layers, h.services.targeting);
      // A base layer the assignments name (its trees are not needed: nothing is composed here).
      await h.store.layers.createLayer({
        id: "lay_bookworm",
        name: "bookworm-base",
        kind: "base",
        description: "",
        createdAt: new Date(h.now.t),
      });
      const hex = (c: string) => c.repeat(64);
      // An empty tree in the harness's repository: composing an image reads it.
      const tree = await h.repo.saveTree([]);
      await h.repo.flush();
      await h.store.layers.addLayerVersion(
        {
          layerId: "lay_bookworm",
          version: 1,
          label: "12.8",
          snapshot: hex("a") as never,
          tree,
          osId: "debian",
          osVersion: "12",
          files: 1,
          bytes: 1,
          packages: 0,
          sourceCvd: null,
          sourceSnapshots: [],
          createdAt: new Date(h.now.t),
          createdBy: "user:admin",
        },
        {},
      );
      const t = await enrollmentToken(h, { uses: 3, autoApprove: true });
      for (const i of INVENTORY) {
        // Enrolled with the facts an older agent sent (no hardware), then reported in full.
        const e = (await enroll(h, t.token, { ...FACTS(i.n), hostname: i.hostname })).json();
        creds[i.hostname] = e.credential;
        const r = await reportFacts(i.hostname, factsOf(i));
        expect(r.statusCode, r.body).toBe(204);
        cvd[i.hostname] = (await get(`/endpoints/${e.endpointId}`)).json().cvdId;
      }
    });
    afterAll(async () => {
      await h?.app.close();
      await h?.store.close();
    });

    it("dynamic collections match hostname, OS, vendor and model globs and tags on the reported facts, at every question", async () => {
      const create = async (name: string, rule: unknown) => {
        const r = await send("POST", "/collections", { name, rule });
        expect(r.statusCode, r.body).toBe(201);
        return r.json();
      };
      expect((await create("Lab", { hostname: "lab-*" })).members).toEqual(ids("lab-01", "lab-02"));
      // vendor and model compare case-insensitively; os is "ID VERSION_ID".
      expect((await create("Lenovos", { vendor: "lenovo" })).members).toEqual(ids("lab-01", "office-01"));
      expect((await create("ThinkPad X1", { vendor: "LENOVO", model: "20XW*" })).members).toEqual(
        ids("lab-01"),
      );
      expect((await create("Bookworm", { os: "debian  12" })).members).toEqual(ids("lab-01", "lab-02"));
      expect((await create("Trixie lab", { os: "debian 13", hostname: "lab-*" })).members).toEqual([]);
      expect((await create("Kiosks", { tags: ["kiosk"] })).members).toEqual([]);
      // Tags: the kiosk collection follows them.
      const tagged = await send("POST", `/cvds/${cvd["office-01"]}/tags`, { add: ["kiosk", "floor:3"] });
      expect(tagged.statusCode, tagged.body).toBe(200);
      expect(tagged.json()).toEqual({ cvd: cvd["office-01"], tags: ["floor:3", "kiosk"] });
      expect((await get(`/cvds/${cvd["office-01"]}`)).json().tags).toEqual(["floor:3", "kiosk"]);
      expect((await get("/collections/Kiosks")).json().members).toEqual(ids("office-01"));
      // A renamed machine reports it: it leaves the lab collection at once.
      const lab2 = INVENTORY[1];
      expect((await reportFacts("lab-02", { ...factsOf(lab2), hostname: "office-02" })).statusCode).toBe(204);
      const list = (await get("/collections")).json() as { name: string; members: string[] }[];
      expect(list.map((c) => c.name)).toEqual([
        "Bookworm",
        "Kiosks",
        "Lab",
        "Lenovos",
        "ThinkPad X1",
        "Trixie lab",
      ]);
      expect(list.find((c) => c.name === "Lab")?.members).toEqual(ids("lab-01"));
      expect(list.find((c) => c.name === "Kiosks")?.members).toEqual(ids("office-01"));
      await reportFacts("lab-02", factsOf(lab2));
      expect(await h.services.targeting.collectionsOf(cvd["lab-01"]!)).toHaveLength(4);
      // Refused: empty rule, bad glob, members with a rule, a taken name; nothing stored.
      for (const [body, status] of [
        [{ name: "Empty", rule: {} }, 400],
        [{ name: "Bad glob", rule: { hostname: "[z-a]" } }, 400],
        [{ name: "Both", rule: { hostname: "*" }, members: [cvd["lab-01"]] }, 400],
        [{ name: "col_sneaky" }, 400],
        [{ name: "Lab" }, 409],
      ] as const) {
        const r = await send("POST", "/collections", body);
        expect(r.statusCode, `${JSON.stringify(body)} ${r.body}`).toBe(status);
      }
      expect((await get("/collections")).json()).toHaveLength(6);
      // A dynamic collection's members cannot be edited by hand.
      const add = await send("POST", "/collections/Lab/members", { cvds: [cvd["office-01"]] });
      expect(add.statusCode).toBe(400);
      expect(add.json().error.message).toContain("dynamic");
    });

    it("static collections: members by hand, checked; by id or name; delete takes its assignments", async () => {
      const c = await send("POST", "/collections", { name: "Pilot", members: [cvd["lab-02"]] });
      expect(c.statusCode, c.body).toBe(201);
      const col = c.json();
      expect(col).toMatchObject({ id: expect.stringMatching(/^col_/), rule: null, members: ids("lab-02") });
      const added = await send("POST", `/collections/${col.id}/members`, {
        cvds: [cvd["office-01"], cvd["lab-02"]],
      });
      expect(added.json().members).toEqual(ids("lab-02", "office-01"));
      const missing = await send("POST", "/collections/Pilot/members", { cvds: ["cvd_gone"] });
      expect(missing.statusCode).toBe(404);
      expect(missing.json().error.message).toContain("cvd_gone");
      const removed = await send("DELETE", `/collections/Pilot/members/${cvd["lab-02"]}`);
      expect(removed.json().members).toEqual(ids("office-01"));
      expect((await send("DELETE", `/collections/Pilot/members/${cvd["lab-02"]}`)).statusCode).toBe(404);
      expect((await get("/collections/Nope")).statusCode).toBe(404);
      const audit = (await get(`/audit?object=collection:${col.id}`)).json() as { action: string }[];
      expect(audit.map((a) => a.action)).toEqual([
        "collection.remove",
        "collection.add",
        "collection.create",
      ]);
      // Deleting a collection deletes the assignments made to it.
      await h.store.layers.addAssignment(assignment(`asg_pilot`, "collection", col.id, 1));
      expect((await send("DELETE", "/collections/Pilot")).statusCode).toBe(204);
      expect((await get("/collections/Pilot")).statusCode).toBe(404);
      expect(await h.store.layers.assignmentsFor([{ kind: "collection", id: col.id }], 10)).toEqual([]);
      expect((await get(`/audit?object=collection:${col.id}`)).json()[0]).toMatchObject({
        action: "collection.delete",
        detail: { name: "Pilot", assignments: 1 },
      });
    });

    function assignment(
      id: string,
      kind: "cvd" | "collection",
      target: string,
      minute: number,
    ): AssignmentRecord {
      return {
        id,
        targetKind: kind,
        targetId: target,
        base: { layer: "lay_bookworm", version: null },
        apps: [],
        assignedAt: new Date(h.now.t + minute * 60_000),
        assignedBy: "user:admin",
      };
    }

    it("the newest assignment wins, the CVD's own or a collection's (static or dynamic); the others are overridden", async () => {
      const lab = (await get("/collections/Lab")).json();
      const fixed = (await send("POST", "/collections", { name: "Fixed", members: [cvd["lab-01"]] })).json();
      const own1 = assignment("asg_own1", "cvd", cvd["lab-01"]!, 10);
      const toLab = assignment("asg_lab", "collection", lab.id, 20);
      await h.store.layers.addAssignment(own1);
      await h.store.layers.addAssignment(toLab);
      // lab-01 and lab-02 get the collection's; office-01 none.
      expect(await targeting.effectiveAssignment(cvd["lab-01"]!)).toEqual({
        effective: toLab,
        overridden: [own1],
      });
      expect(await targeting.effectiveAssignment(cvd["lab-02"]!)).toEqual({
        effective: toLab,
        overridden: [],
      });
      expect(await targeting.effectiveAssignment(cvd["office-01"]!)).toEqual({
        effective: null,
        overridden: [],
      });
      // A newer one to the CVD wins over the collection's.
      const own2 = assignment("asg_own2", "cvd", cvd["lab-01"]!, 30);
      await h.store.layers.addAssignment(own2);
      expect(await targeting.effectiveAssignment(cvd["lab-01"]!)).toEqual({
        effective: own2,
        overridden: [toLab, own1],
      });
      // Then a newer one to a static collection it is in.
      const toFixed = assignment("asg_fixed", "collection", fixed.id, 40);
      await h.store.layers.addAssignment(toFixed);
      expect((await targeting.effectiveAssignment(cvd["lab-01"]!)).effective).toEqual(toFixed);
      // Leaving a dynamic collection (renamed) drops its assignment from the CVD's.
      await reportFacts("lab-02", { ...factsOf(INVENTORY[1]), hostname: "office-02" });
      expect(await targeting.effectiveAssignment(cvd["lab-02"]!)).toEqual({
        effective: null,
        overridden: [],
      });
      await reportFacts("lab-02", factsOf(INVENTORY[1]));
      expect((await targeting.effectiveAssignment(cvd["lab-02"]!)).effective).toEqual(toLab);
      // An assignment to a collection it is not in does not reach it.
      await h.store.layers.addAssignment(
        assignment("asg_kiosk", "collection", (await get("/collections/Kiosks")).json().id, 50),
      );
      expect((await targeting.effectiveAssignment(cvd["lab-02"]!)).effective).toEqual(toLab);
      expect((await targeting.effectiveAssignment(cvd["office-01"]!)).effective?.id).toBe("asg_kiosk");
      expect(await targeting.effectiveAssignment("cvd_gone")).toEqual({ effective: null, overridden: [] });
    });

    it("over HTTP: POST /assignments to a CVD and to a collection, the newest wins; GET /cvds/:cvd/layers shows the rest overridden", async () => {
      const assign = async (target: unknown) => {
        h.now.t += 60_000; // one assignment a minute: the newest is unambiguous
        const r = await send("POST", "/assignments", { target, base: { layer: "bookworm-base" } });
        expect(r.statusCode, r.body).toBe(201);
        return r.json();
      };
      const layersOf = async (host: string) => {
        const r = await get(`/cvds/${cvd[host]}/layers`);
        expect(r.statusCode, r.body).toBe(200);
        return r.json();
      };
      h.now.t += 2 * 3_600_000; // after the assignments the test above made
      const mine = await assign({ cvd: cvd["office-01"] });
      const lenovo = await assign({ collection: "Lenovos" }); // dynamic: lab-01 and office-01
      expect(lenovo.target).toEqual({
        kind: "collection",
        id: (await get("/collections/Lenovos")).json().id,
      });
      const first = await layersOf("office-01");
      expect(first.effective).toEqual(lenovo);
      expect(first.overridden[0]).toEqual(mine); // then the older ones of the tests above
      expect((await layersOf("lab-02")).effective?.id).not.toBe(lenovo.id);
      const again = await assign({ cvd: cvd["office-01"] });
      const second = await layersOf("office-01");
      expect(second.effective).toEqual(again);
      expect(second.overridden.slice(0, 2)).toEqual([lenovo, mine]);
      // The collection by id works too; a missing one is 404.
      const byId = await assign({ collection: lenovo.target.id });
      expect((await layersOf("office-01")).effective).toEqual(byId);
      const missing = await send("POST", "/assignments", {
        target: { collection: "Nope" },
        base: { layer: "bookworm-base" },
      });
      expect(missing.statusCode).toBe(404);
    });

    it("driver profiles give their folders to the endpoints their rules match; editing a profile changes which CVDs match", async () => {
      const layer = async (id: string, name: string, kind: "driver" | "app") =>
        h.store.layers.createLayer({ id, name, kind, description: "", createdAt: new Date(h.now.t) });
      await layer("lay_nvidia", "nvidia-535", "driver");
      await layer("lay_iwlwifi", "iwlwifi-fw", "driver");
      await layer("lay_fprint", "synaptics-fprint", "driver");
      await layer("lay_jq", "jq", "app");
      const create = async (body: unknown) => {
        const r = await send("POST", "/driver-profiles", body);
        expect(r.statusCode, r.body).toBe(201);
        return r.json();
      };
      const nvidia = await create({
        name: "NVIDIA",
        folders: ["nvidia-535"],
        rules: [{ modalias: "pci:v000010DEd*" }],
      });
      expect(nvidia).toMatchObject({
        id: expect.stringMatching(/^drv_/),
        folders: ["lay_nvidia"],
        cvds: ids("lab-01"),
      });
      const wifi = await create({
        name: "Intel AX201",
        folders: ["lay_iwlwifi"],
        rules: [{ modalias: "pci:v00008086d0000A0F0*" }],
      });
      expect(wifi.cvds).toEqual(ids("lab-01", "lab-02"));
      // Several rules: any one matches; a rule's fields must all match.
      const lenovo = await create({
        name: "Lenovo fingerprint",
        folders: ["synaptics-fprint", "iwlwifi-fw", "synaptics-fprint"],
        rules: [
          { vendor: "LENOVO", model: "20XW*", modalias: "usb:v06CBp00FC*" },
          { vendor: "lenovo", model: "21AH*" },
        ],
      });
      expect(lenovo).toMatchObject({
        folders: ["lay_fprint", "lay_iwlwifi"],
        folderNames: ["synaptics-fprint", "iwlwifi-fw"],
        cvds: ids("lab-01", "office-01"),
      });
      expect(await targeting.driverFolders(cvd["lab-01"]!)).toEqual([
        { profile: "Intel AX201", folders: ["lay_iwlwifi"] },
        { profile: "Lenovo fingerprint", folders: ["lay_fprint", "lay_iwlwifi"] },
        { profile: "NVIDIA", folders: ["lay_nvidia"] },
      ]);
      expect(await targeting.driverFolders(cvd["lab-02"]!)).toEqual([
        { profile: "Intel AX201", folders: ["lay_iwlwifi"] },
      ]);
      // The layer service asks the same: GET /cvds/:cvd/layers lists them.
      expect((await get(`/cvds/${cvd["lab-01"]}/layers`)).json().drivers).toEqual(
        await targeting.driverFolders(cvd["lab-01"]!),
      );
      expect(await targeting.driverFolders(cvd["office-01"]!)).toEqual([
        { profile: "Lenovo fingerprint", folders: ["lay_fprint", "lay_iwlwifi"] },
      ]);
      // Edit: the Intel profile now matches the Dell only; the NVIDIA one the model, renamed.
      const edited = await send("PATCH", "/driver-profiles/Intel AX201", {
        rules: [{ vendor: "Dell*", modalias: "pci:v00008086d0000A0F0*" }],
      });
      expect(edited.statusCode, edited.body).toBe(200);
      expect(edited.json().cvds).toEqual(ids("lab-02"));
      const renamed = await send("PATCH", `/driver-profiles/${nvidia.id}`, {
        name: "NVIDIA RTX",
        folders: ["lay_nvidia", "iwlwifi-fw"],
      });
      expect(renamed.json()).toMatchObject({
        name: "NVIDIA RTX",
        folders: ["lay_nvidia", "lay_iwlwifi"],
        cvds: ids("lab-01"),
      });
      expect(await targeting.driverFolders(cvd["lab-01"]!)).toEqual([
        { profile: "Lenovo fingerprint", folders: ["lay_fprint", "lay_iwlwifi"] },
        { profile: "NVIDIA RTX", folders: ["lay_nvidia", "lay_iwlwifi"] },
      ]);
      expect(await targeting.driverFolders(cvd["lab-02"]!)).toEqual([
        { profile: "Intel AX201", folders: ["lay_iwlwifi"] },
      ]);
      // New hardware reported: the profile follows the facts.
      await reportFacts("office-01", { ...factsOf(INVENTORY[2]), modaliases: [INTEL_GPU, NVIDIA] });
      expect((await get("/driver-profiles/NVIDIA RTX")).json().cvds).toEqual(ids("lab-01", "office-01"));
      await reportFacts("office-01", factsOf(INVENTORY[2]));
      // Listed by name with their matches.
      const list = (await get("/driver-profiles")).json() as { name: string; cvds: string[] }[];
      expect(list.map((p) => [p.name, p.cvds.length])).toEqual([
        ["Intel AX201", 1],
        ["Lenovo fingerprint", 2],
        ["NVIDIA RTX", 1],
      ]);
      // Refused, nothing changed: an app layer, a missing layer, an empty rule, a bad glob, a taken name.
      for (const [body, status] of [
        [{ name: "App", folders: ["jq"], rules: [{ vendor: "*" }] }, 400],
        [{ name: "Missing", folders: ["nope"], rules: [{ vendor: "*" }] }, 404],
        [{ name: "Empty rule", folders: [], rules: [{}] }, 400],
        [{ name: "No rules", folders: [], rules: [] }, 400],
        [{ name: "Glob", folders: [], rules: [{ model: "[9-0]" }] }, 400],
        [{ name: "NVIDIA RTX", folders: [], rules: [{ vendor: "*" }] }, 409],
      ] as const) {
        const r = await send("POST", "/driver-profiles", body);
        expect(r.statusCode, `${JSON.stringify(body)} ${r.body}`).toBe(status);
      }
      expect((await send("PATCH", "/driver-profiles/NVIDIA RTX", { name: "Intel AX201" })).statusCode).toBe(
        409,
      );
      expect((await send("PATCH", "/driver-profiles/NVIDIA RTX", { folders: ["jq"] })).statusCode).toBe(400);
      expect((await get("/driver-profiles/NVIDIA RTX")).json().folders).toEqual([
        "lay_nvidia",
        "lay_iwlwifi",
      ]);
      expect((await get("/driver-profiles")).json()).toHaveLength(3);
      // Delete: its folders leave the images.
      expect((await send("DELETE", "/driver-profiles/NVIDIA RTX")).statusCode).toBe(204);
      expect((await send("DELETE", "/driver-profiles/NVIDIA RTX")).statusCode).toBe(404);
      expect((await targeting.driverFolders(cvd["lab-01"]!)).map((d) => d.profile)).toEqual([
        "Lenovo fingerprint",
      ]);
      const audit = (await get(`/audit?object=driver-profile:${nvidia.id}`)).json() as { action: string }[];
      expect(audit.map((a) => a.action)).toEqual([
        "driver_profile.delete",
        "driver_profile.update",
        "driver_profile.create",
      ]);
    });

    it("layer rules: the built-in defaults until set; set replaces both lists; bad rules refused with every error", async () => {
      const d = await get("/layer-rules");
      expect(d.json()).toEqual({
        doNotOverride: DEFAULT_DO_NOT_OVERRIDE.map((r) => ({ ...r })),
        baseCapture: BASE_CAPTURE_RULES.map((r) => ({ ...r })),
        isDefault: true,
        updatedAt: null,
        updatedBy: null,
      });
      const set = await send("PUT", "/layer-rules", {
        doNotOverride: [
          ...d.json().doNotOverride,
          { dir: "/etc/cups", pattern: "printers.conf" },
          "/opt/site/**",
        ],
        baseCapture: d.json().baseCapture,
      });
      expect(set.statusCode, set.body).toBe(200);
      expect(set.json()).toMatchObject({ isDefault: false, updatedBy: "user:admin" });
      expect(set.json().doNotOverride.slice(-2)).toEqual([
        { dir: "/etc/cups", pattern: "printers.conf" },
        { dir: "/opt/site", pattern: "**" },
      ]);
      expect((await get("/layer-rules")).json()).toEqual(set.json());
      expect(await h.services.targeting.layerRules()).toEqual({
        doNotOverride: set.json().doNotOverride,
        baseCapture: set.json().baseCapture,
      });
      const bad = await send("PUT", "/layer-rules", {
        doNotOverride: [{ dir: "relative" }],
        baseCapture: [{ dir: "/var", pattern: "[" }],
      });
      expect(bad.statusCode).toBe(400);
      expect(bad.json().error.message).toContain("doNotOverride[0]");
      expect(bad.json().error.message).toContain("baseCapture[0]");
      expect((await send("PUT", "/layer-rules", { doNotOverride: [] })).statusCode).toBe(400);
      expect((await get("/layer-rules")).json()).toEqual(set.json());
      expect((await get("/audit?action=layer_rules.set")).json()).toHaveLength(1);
    });

    it("CVD tags: bounded, validated, audited; a missing CVD is 404", async () => {
      const c = cvd["lab-02"]!;
      expect((await send("POST", `/cvds/${c}/tags`, { add: ["bad tag"] })).statusCode).toBe(400);
      expect((await send("POST", `/cvds/${c}/tags`, {})).statusCode).toBe(400);
      expect((await send("POST", "/cvds/cvd_gone/tags", { add: ["x"] })).statusCode).toBe(404);
      const many = Array.from({ length: 32 }, (_, i) => `t${i}`);
      expect((await send("POST", `/cvds/${c}/tags`, { add: many })).json().tags).toHaveLength(32);
      const over = await send("POST", `/cvds/${c}/tags`, { add: ["one-more"] });
      expect(over.statusCode).toBe(400);
      expect(over.json().error.message).toContain("at most 32");
      expect((await send("POST", `/cvds/${c}/tags`, { remove: many })).json().tags).toEqual([]);
      const audit = (await get(`/audit?object=cvd:${c}&action=cvd.tag`)).json();
      expect(audit).toHaveLength(2);
      expect(audit[0].detail).toMatchObject({ after: [] });
    });
  });
}
