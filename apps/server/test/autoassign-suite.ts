/**
 * Auto-assignment rules and remote sync/snooze through the HTTP stack, on
 * every catalog (server.test.ts). Rules are fleet-wide, so this suite has
 * a harness (a database) of its own.
 */
import type { ServerStore } from "@strata/catalog";
import type { CvdSnapshotSummary } from "@strata/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { enroll, enrollmentToken, FACTS, type Harness, makeHarness } from "./suite.js";

const PW = "correct horse battery staple";

export function runAutoassignSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`auto-assignment and remote control on ${name}`, () => {
    let h: Harness;
    const snapshots = new Map<string, CvdSnapshotSummary[]>();
    const bearer = (t: string) => ({ authorization: `Bearer ${t}`, "strata-protocol": "1" });
    const get = (url: string, token = h.adminToken) =>
      h.app.inject({ method: "GET", url, headers: bearer(token) });
    const send = (
      method: "POST" | "PUT" | "PATCH" | "DELETE",
      url: string,
      payload?: unknown,
      token = h.adminToken,
    ) => h.app.inject({ method, url, headers: bearer(token), ...(payload === undefined ? {} : { payload }) });
    const tokens = new Map<string, string>();
    /** A user of the role, logged in. */
    const as = async (role: string) => {
      let t = tokens.get(role);
      if (t) return t;
      const user = `aa-${role.toLowerCase().replace(/[^a-z]/g, "")}`;
      const c = await send("POST", "/api/v1/users", {
        name: user,
        role,
        password: PW,
        mustChangePassword: false,
      });
      expect(c.statusCode, c.body).toBe(201);
      const l = await h.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { user, password: PW },
      });
      t = l.json().token as string;
      tokens.set(role, t);
      return t;
    };
    const withFacts = (n: number, hostname: string, extra: Record<string, unknown> = {}) => ({
      ...FACTS(n),
      hostname,
      ...extra,
    });

    beforeAll(async () => {
      h = await makeHarness(open, { snapshotsOf: async (cvdId) => snapshots.get(cvdId) ?? [] });
      for (const p of ["Lab", "Kiosk", "Servers"]) {
        const r = await send("POST", "/api/v1/policies", { name: p, intervalMinutes: 30 });
        expect(r.statusCode, r.body).toBe(201);
      }
    });
    afterAll(async () => {
      await h?.app.close();
      await h?.store.close();
    });

    it("rules: ordered, first match wins at enrollment; a non-matching endpoint stays pending", async () => {
      const mk = (body: Record<string, unknown>) => send("POST", "/api/v1/autoassign-rules", body);
      const lab = await mk({ name: "lab", rule: { hostname: "lab-*" }, policy: "Lab", tags: ["lab"] });
      expect(lab.statusCode, lab.body).toBe(201);
      expect(lab.json()).toMatchObject({ name: "lab", position: 1, policy: "Lab", tags: ["lab"] });
      expect((await mk({ name: "debian", rule: { os: "debian  12" }, policy: "Servers" })).statusCode).toBe(
        201,
      );
      // Inserted first: kiosks named lab-kiosk-* are kiosks, not lab machines.
      const kiosk = await mk({
        name: "kiosk",
        rule: { hostname: "lab-kiosk-*", vendor: "acme*" },
        policy: "Kiosk",
        before: "lab",
      });
      expect(kiosk.statusCode, kiosk.body).toBe(201);
      const list = (await get("/api/v1/autoassign-rules")).json();
      expect(list.map((r: { name: string; position: number }) => `${r.position}:${r.name}`)).toEqual([
        "1:kiosk",
        "2:lab",
        "3:debian",
      ]);
      expect(list[2].rule).toEqual({ os: "debian 12" });

      const t = await enrollmentToken(h, { uses: 10 });
      const a = (await enroll(h, t.token, withFacts(101, "lab-01"))).json();
      expect(a.state).toBe("active");
      const self = (await get("/api/v1/agent/self", a.credential)).json();
      expect(self.cvd.policy.name).toBe("Lab");
      const cvd = (await get(`/api/v1/cvds/${self.cvd.id}`)).json();
      expect(cvd.tags).toEqual(["lab"]);
      // The kiosk rule comes first and matches; the lab rule matches too but loses.
      const k = (
        await enroll(h, t.token, withFacts(102, "LAB-KIOSK-7", { dmi: { vendor: "ACME Corp", model: "K1" } }))
      ).json();
      expect((await get("/api/v1/agent/self", k.credential)).json().cvd.policy.name).toBe("Kiosk");
      // Neither a lab host nor Debian 12: pending.
      const other = (
        await enroll(h, t.token, {
          ...withFacts(103, "ws-1"),
          os: { id: "ubuntu", versionId: "24.04", prettyName: "Ubuntu" },
        })
      ).json();
      expect(other.state).toBe("pending");
      expect((await get("/api/v1/agent/self", other.credential)).json().cvd).toBeNull();
      // Debian 12 by the third rule.
      const d = (await enroll(h, t.token, withFacts(104, "srv-1"))).json();
      expect((await get("/api/v1/agent/self", d.credential)).json().cvd.policy.name).toBe("Servers");

      const audit = (await get(`/api/v1/audit?object=endpoint:${a.endpointId}`)).json();
      expect(audit[0]).toMatchObject({
        actor: `enrollment-token:${t.id}`,
        action: "endpoint.enroll",
        detail: { state: "active", assignedBy: "autoassign-rule:lab", tags: ["lab"] },
      });
      const created = (await get("/api/v1/audit?action=autoassign.create")).json();
      expect(created.map((e: { detail: { name: string } }) => e.detail.name)).toEqual([
        "kiosk",
        "debian",
        "lab",
      ]);
    });

    it("precedence: a token's own policy beats the rules, a token may exclude them, a clone stays pending", async () => {
      const own = await enrollmentToken(h, { uses: 1, autoApprove: true, policy: "Kiosk" });
      const a = (await enroll(h, own.token, withFacts(201, "lab-02"))).json();
      expect((await get("/api/v1/agent/self", a.credential)).json().cvd.policy.name).toBe("Kiosk");
      // Auto-approve without a policy: the matching rule's policy, else the default.
      const plain = await enrollmentToken(h, { uses: 2, autoApprove: true });
      const b = (await enroll(h, plain.token, withFacts(202, "lab-03"))).json();
      expect((await get("/api/v1/agent/self", b.credential)).json().cvd.policy.name).toBe("Lab");
      const c = (
        await enroll(h, plain.token, { ...withFacts(203, "x-1"), os: { id: "arch", versionId: "" } })
      ).json();
      expect((await get("/api/v1/agent/self", c.credential)).json().cvd.policy.name).toBe("Default");
      // A recovery token: the rules do not apply.
      const rec = await enrollmentToken(h, { uses: 1, autoAssign: false });
      const listed = (await get("/api/v1/enrollment-tokens")).json();
      expect(listed.find((x: { id: string }) => x.id === rec.id)).toMatchObject({ autoAssign: false });
      const r = (await enroll(h, rec.token, withFacts(204, "lab-04"))).json();
      expect(r.state).toBe("pending");
      // A clone of lab-01's machine id matches the rule but stays pending.
      const t = await enrollmentToken(h, { uses: 1 });
      const clone = (
        await enroll(h, t.token, { ...withFacts(205, "lab-05"), machineId: FACTS(101).machineId })
      ).json();
      expect(clone.state).toBe("pending");
      // approve --by-rules leaves both pending, and says why.
      const res = await send("POST", "/api/v1/endpoints/approve-by-rules", {
        endpoints: [r.endpointId, clone.endpointId],
      });
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().approved).toEqual([]);
      expect(res.json().pending.map((p: { reason: string }) => p.reason)).toEqual([
        expect.stringMatching(/excludes the rules/),
        expect.stringMatching(/machine id another endpoint has/),
      ]);
    });

    it("approve --by-rules gives pending endpoints the CVD of a rule added later; test says which rule matches", async () => {
      const t = await enrollmentToken(h, { uses: 2 });
      const p = (
        await enroll(h, t.token, { ...withFacts(301, "build-1"), os: { id: "fedora", versionId: "40" } })
      ).json();
      const q = (
        await enroll(h, t.token, { ...withFacts(302, "desk-1"), os: { id: "fedora", versionId: "40" } })
      ).json();
      expect([p.state, q.state]).toEqual(["pending", "pending"]);
      const before = await send("POST", "/api/v1/autoassign-rules/test", { endpoint: p.endpointId });
      expect(before.json()).toMatchObject({
        endpoint: p.endpointId,
        facts: { hostname: "build-1", os: "fedora 40" },
        match: null,
      });
      expect(
        (
          await send("POST", "/api/v1/autoassign-rules", {
            name: "builders",
            rule: { hostname: "build-*" },
            policy: "Servers",
            tags: ["ci"],
          })
        ).statusCode,
      ).toBe(201);
      const after = await send("POST", "/api/v1/autoassign-rules/test", { endpoint: p.endpointId });
      expect(after.json().match).toMatchObject({ name: "builders", policy: "Servers", tags: ["ci"] });
      expect(after.json().rules.find((r: { name: string }) => r.name === "builders").matches).toBe(true);
      const hypo = await send("POST", "/api/v1/autoassign-rules/test", { facts: { hostname: "lab-9" } });
      expect(hypo.json().match.name).toBe("lab");

      const res = (await send("POST", "/api/v1/endpoints/approve-by-rules", {})).json();
      expect(res.approved).toEqual([
        expect.objectContaining({ endpoint: p.endpointId, rule: "builders", policy: "Servers" }),
      ]);
      expect(res.pending.map((x: { endpoint: string }) => x.endpoint)).toContain(q.endpointId);
      const shown = (await get(`/api/v1/endpoints/${p.endpointId}`)).json();
      expect(shown.state).toBe("active");
      expect((await get(`/api/v1/cvds/${shown.cvdId}`)).json()).toMatchObject({
        policy: "Servers",
        tags: ["ci"],
      });
      const audit = (
        await get(`/api/v1/audit?object=endpoint:${p.endpointId}&action=endpoint.approve`)
      ).json();
      expect(audit[0]).toMatchObject({ actor: "admin", detail: { rule: "builders", policy: "Servers" } });

      // A policy a rule names cannot be deleted; removing the rule frees it.
      await send("POST", "/api/v1/policies", { name: "Spare" });
      await send("POST", "/api/v1/autoassign-rules", {
        name: "spare",
        rule: { model: "nothing" },
        policy: "Spare",
      });
      const del = await send("DELETE", "/api/v1/policies/Spare");
      expect(del.statusCode).toBe(400);
      expect(del.json().error.message).toMatch(/1 auto-assignment rule/);
      expect((await send("DELETE", "/api/v1/autoassign-rules/spare")).statusCode).toBe(204);
      expect((await send("DELETE", "/api/v1/autoassign-rules/spare")).statusCode).toBe(404);
      expect((await send("DELETE", "/api/v1/policies/Spare")).statusCode).toBe(204);
      expect((await get("/api/v1/audit?action=autoassign.delete")).json()[0].detail.name).toBe("spare");
    });

    it("edit in place: fields, condition (merge patch) and place change, the id stays, CVDs made stay; audited; checked as create", async () => {
      const names = async () =>
        (await get("/api/v1/autoassign-rules")).json().map((r: { name: string }) => r.name);
      const patch = (ref: string, body: unknown, token = h.adminToken) =>
        send("PATCH", `/api/v1/autoassign-rules/${encodeURIComponent(ref)}`, body, token);
      const t = await enrollmentToken(h, { uses: 1 });
      const q = (
        await enroll(h, t.token, { ...withFacts(401, "desk-7"), os: { id: "fedora", versionId: "41" } })
      ).json();
      expect(q.state).toBe("pending");
      const made = await send("POST", "/api/v1/autoassign-rules", {
        name: "desks",
        rule: { hostname: "desk-*" },
        policy: "Lab",
      });
      expect(made.statusCode, made.body).toBe(201);
      const order = await names();
      expect(order.at(-1)).toBe("desks");
      // By id: rename, add a condition field, new policy and tags, move first.
      const e1 = await patch(made.json().id, {
        name: "desktops",
        rule: { os: "fedora 4*" },
        policy: "Kiosk",
        tags: ["desk"],
        before: order[0],
      });
      expect(e1.statusCode, e1.body).toBe(200);
      expect(e1.json()).toEqual({
        ...made.json(),
        name: "desktops",
        position: 1,
        rule: { hostname: "desk-*", os: "fedora 4*" },
        policyId: expect.stringMatching(/^pol_/),
        policy: "Kiosk",
        tags: ["desk"],
      });
      expect(await names()).toEqual(["desktops", ...order.slice(0, -1)]);
      expect(
        (await send("POST", "/api/v1/autoassign-rules/test", { endpoint: q.endpointId })).json().match,
      ).toMatchObject({ name: "desktops", policy: "Kiosk", tags: ["desk"] });
      // By name: drop a condition field (null), move last.
      const e2 = await patch("desktops", { rule: { hostname: null }, before: null });
      expect(e2.statusCode, e2.body).toBe(200);
      expect(e2.json()).toMatchObject({
        id: made.json().id,
        rule: { os: "fedora 4*" },
        position: order.length,
      });
      expect(e2.json().rule).not.toHaveProperty("hostname");
      const audit = (await get(`/api/v1/audit?object=autoassign-rule:${made.json().id}`)).json();
      expect(audit.map((a: { action: string }) => a.action)).toEqual([
        "autoassign.update",
        "autoassign.update",
        "autoassign.create",
      ]);
      expect(audit[1].detail).toEqual({
        name: "desktops",
        before: {
          name: "desks",
          rule: { hostname: "desk-*" },
          policy: "Lab",
          tags: [],
          position: order.length,
        },
        after: {
          name: "desktops",
          rule: { hostname: "desk-*", os: "fedora 4*" },
          policy: "Kiosk",
          tags: ["desk"],
          position: 1,
        },
      });
      expect(audit[0].detail).toEqual({
        name: "desktops",
        before: { rule: { hostname: "desk-*", os: "fedora 4*" }, position: 1 },
        after: { rule: { os: "fedora 4*" }, position: order.length },
      });
      // A no-op edit answers the rule and is not audited.
      expect((await patch("desktops", { name: "desktops", tags: ["desk"] })).statusCode).toBe(200);
      expect((await get(`/api/v1/audit?object=autoassign-rule:${made.json().id}`)).json()).toHaveLength(3);

      // Refused as create refuses them; nothing changes.
      const rules = (await get("/api/v1/autoassign-rules")).json();
      for (const [ref, body, status] of [
        ["desktops", {}, 400],
        ["desktops", { rule: { os: null } }, 400],
        ["desktops", { rule: {} }, 400],
        ["desktops", { rule: { tags: "x" } }, 400],
        ["desktops", { rule: { hostname: "x".repeat(300) } }, 400],
        ["desktops", { name: "aar_x" }, 400],
        ["desktops", { tags: ["bad tag!"] }, 400],
        ["desktops", { name: "lab", tags: [] }, 409],
        ["desktops", { policy: "Nope" }, 404],
        ["desktops", { before: "nope" }, 404],
        ["nope", { name: "x" }, 404],
        ["aar_nope", { name: "x" }, 404],
      ] as const) {
        const r = await patch(ref, body);
        expect(r.statusCode, `${ref} ${JSON.stringify(body)}: ${r.body}`).toBe(status);
      }
      expect((await get("/api/v1/autoassign-rules")).json()).toEqual(rules);

      // The endpoint gets the rule's CVD; editing the rule later changes no CVD it made.
      const by = (
        await send("POST", "/api/v1/endpoints/approve-by-rules", { endpoints: [q.endpointId] })
      ).json();
      expect(by.approved).toEqual([expect.objectContaining({ rule: "desktops", policy: "Kiosk" })]);
      expect((await patch("desktops", { policy: "Servers", tags: [] })).statusCode).toBe(200);
      expect((await get(`/api/v1/cvds/${by.approved[0].cvd}`)).json()).toMatchObject({
        policy: "Kiosk",
        tags: ["desk"],
      });

      // Permissions: endpoints.approve; tags (had or given) also layers.assign.
      for (const role of ["Read-only", "Help Desk"]) {
        const r = await patch("desktops", { name: "x" }, await as(role));
        expect(r.statusCode).toBe(403);
      }
      const pm = await as("Protection Manager");
      const untagged = await patch("desktops", { rule: { hostname: "desk-*" }, before: "desktops" }, pm);
      expect(untagged.statusCode, untagged.body).toBe(200);
      for (const [ref, body] of [
        ["desktops", { tags: ["t"] }],
        ["builders", { name: "builders2" }],
        ["builders", { tags: [] }],
      ] as const) {
        const r = await patch(ref, body, pm);
        expect(r.statusCode, `${ref} ${JSON.stringify(body)}`).toBe(403);
        expect(r.json().error.message).toMatch(/layers.assign/);
      }
      expect((await send("DELETE", "/api/v1/autoassign-rules/desktops")).statusCode).toBe(204);
    });

    it("the OpenAPI document has the new routes with their access", async () => {
      const doc = (await h.app.inject({ url: "/api/openapi.json" })).json();
      const access = (p: string, m: string) => doc.paths[p]?.[m]?.["x-strata-access"];
      expect(access("/api/v1/autoassign-rules", "get")).toBe("endpoints.read");
      expect(access("/api/v1/autoassign-rules", "post")).toBe("endpoints.approve");
      expect(access("/api/v1/autoassign-rules/test", "post")).toBe("endpoints.read");
      expect(access("/api/v1/autoassign-rules/{rule}", "delete")).toBe("endpoints.approve");
      expect(access("/api/v1/autoassign-rules/{rule}", "patch")).toBe("endpoints.approve");
      expect(access("/api/v1/endpoints/approve-by-rules", "post")).toBe("endpoints.approve");
      expect(access("/api/v1/endpoints/{id}/sync", "post")).toBe("endpoints.control");
      expect(access("/api/v1/endpoints/{id}/snooze", "post")).toBe("endpoints.control");
      expect(access("/api/v1/endpoints/{id}/snooze", "delete")).toBe("endpoints.control");
    });

    it("bad rules are refused, nothing stored; Read-only and Help Desk may read but not change them", async () => {
      const n = (await get("/api/v1/autoassign-rules")).json().length;
      for (const body of [
        { name: "empty", rule: {} },
        { name: "tags", rule: { tags: ["x"] } },
        { name: "long", rule: { hostname: "x".repeat(300) } },
        { name: "aar_x", rule: { hostname: "*" } },
        { name: "nopolicy", rule: { hostname: "*" }, policy: "Nope" },
        { name: "lab", rule: { hostname: "*" } },
        { name: "nobefore", rule: { hostname: "*" }, before: "nope" },
      ]) {
        const r = await send("POST", "/api/v1/autoassign-rules", body);
        expect([400, 404, 409], `${body.name}: ${r.body}`).toContain(r.statusCode);
      }
      expect((await get("/api/v1/autoassign-rules")).json()).toHaveLength(n);
      for (const role of ["Read-only", "Help Desk"]) {
        const t = await as(role);
        expect((await get("/api/v1/autoassign-rules", t)).statusCode).toBe(200);
        const c = await send("POST", "/api/v1/autoassign-rules", { name: "x", rule: { hostname: "*" } }, t);
        expect(c.statusCode).toBe(403);
        expect(c.json().error.code).toBe("PERMISSION_DENIED");
        expect((await send("DELETE", "/api/v1/autoassign-rules/lab", undefined, t)).statusCode).toBe(403);
        expect((await send("POST", "/api/v1/endpoints/approve-by-rules", {}, t)).statusCode).toBe(403);
      }
      // Tags are layers.assign's: a Protection Manager makes rules, but not tagging ones.
      const pm = await as("Protection Manager");
      const tagged = await send(
        "POST",
        "/api/v1/autoassign-rules",
        { name: "pm", rule: { hostname: "pm-*" }, tags: ["t"] },
        pm,
      );
      expect(tagged.statusCode).toBe(403);
      expect(tagged.json().error.message).toMatch(/layers.assign/);
      const plain = await send(
        "POST",
        "/api/v1/autoassign-rules",
        { name: "pm", rule: { hostname: "pm-*" } },
        pm,
      );
      expect(plain.statusCode, plain.body).toBe(201);
      expect(plain.json()).toMatchObject({ policy: "Default", createdBy: "user:aa-protectionmanager" });
    });

    it("remote sync and snooze: recorded on the CVD, handed to the agent in agent/self, shown with the endpoint, audited", async () => {
      const t = await enrollmentToken(h, { uses: 2, autoApprove: true, policy: "Lab" });
      const a = (await enroll(h, t.token, withFacts(501, "lab-50"))).json();
      const p = (
        await enroll(h, (await enrollmentToken(h, { autoAssign: false })).token, withFacts(502, "lab-51"))
      ).json();
      const helpdesk = await as("Help Desk");
      const s1 = await send("POST", `/api/v1/endpoints/${a.endpointId}/sync`, undefined, helpdesk);
      expect(s1.statusCode, s1.body).toBe(200);
      const at = new Date(h.now.t).toISOString();
      expect(s1.json().remote).toEqual({
        syncRequestedAt: at,
        syncRequestedBy: "user:aa-helpdesk",
        sync: "pending",
        snoozedUntil: null,
        snoozedBy: null,
        latestSnapshotAt: null,
      });
      let self = (await get("/api/v1/agent/self", a.credential)).json();
      expect(self.cvd).toMatchObject({ syncRequestedAt: at, snoozedUntil: null });
      // The agent uploads: a snapshot at least as new as the request serves it.
      snapshots.set(self.cvd.id, [
        {
          id: "a".repeat(64),
          time: new Date(h.now.t + 5000).toISOString(),
          hostname: "lab-50",
          kind: "upload",
          parent: null,
          totalFiles: 1,
          totalBytes: 1,
        },
      ]);
      expect((await get(`/api/v1/endpoints/${a.endpointId}`)).json().remote.sync).toBe("done");

      const z = await send("POST", `/api/v1/endpoints/${a.endpointId}/snooze`, { minutes: 90 }, helpdesk);
      expect(z.statusCode, z.body).toBe(200);
      const until = new Date(h.now.t + 90 * 60_000).toISOString();
      expect(z.json().remote).toMatchObject({ snoozedUntil: until, snoozedBy: "user:aa-helpdesk" });
      self = (await get("/api/v1/agent/self", a.credential)).json();
      expect(self.cvd.snoozedUntil).toBe(until);
      expect((await get(`/api/v1/cvds/${self.cvd.id}`)).json()).toMatchObject({
        snoozedUntil: until,
        snoozedBy: "user:aa-helpdesk",
      });
      const r = await send("DELETE", `/api/v1/endpoints/${a.endpointId}/snooze`, undefined, helpdesk);
      expect(r.statusCode, r.body).toBe(200);
      expect(r.json().remote).toMatchObject({ snoozedUntil: null, snoozedBy: null });
      expect((await get("/api/v1/agent/self", a.credential)).json().cvd.snoozedUntil).toBeNull();
      const audit = (await get(`/api/v1/audit?object=endpoint:${a.endpointId}`)).json();
      expect(
        audit.slice(0, 3).map((e: { action: string; actor: string }) => `${e.actor} ${e.action}`),
      ).toEqual(["aa-helpdesk endpoint.resume", "aa-helpdesk endpoint.snooze", "aa-helpdesk endpoint.sync"]);
      // Refused: out-of-range snoozes, pending endpoints, unknown ones, Read-only users.
      for (const minutes of [0, 1441, 1.5]) {
        expect((await send("POST", `/api/v1/endpoints/${a.endpointId}/snooze`, { minutes })).statusCode).toBe(
          400,
        );
      }
      const pend = await send("POST", `/api/v1/endpoints/${p.endpointId}/sync`);
      expect(pend.statusCode).toBe(400);
      expect(pend.json().error.message).toMatch(/is pending/);
      expect((await send("POST", "/api/v1/endpoints/ep_nothere/sync")).statusCode).toBe(404);
      const ro = await as("Read-only");
      expect((await send("POST", `/api/v1/endpoints/${a.endpointId}/sync`, undefined, ro)).statusCode).toBe(
        403,
      );
      expect(
        (await send("POST", `/api/v1/endpoints/${a.endpointId}/snooze`, { minutes: 5 }, ro)).statusCode,
      ).toBe(403);
    });
  });
}
