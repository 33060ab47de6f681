/**
 * Which layers reach a CVD (docs/design/layers.md, "Assignment and
 * composition", "Drivers"): its effective assignment — the newest
 * assignment made to the CVD or to a collection it belongs to — and the
 * driver folders of the driver profiles its endpoint matches.
 *
 * The layer service asks only this interface. `FleetTargeting` is the
 * server's: collections (static and dynamic) and driver profiles
 * (migration 0008, TargetingService). `CvdTargeting` knows assignments made
 * to the CVD itself and no driver profiles (a layer service built without
 * targeting, in tests).
 */
import type { AssignmentRecord, LayerStore } from "@strata/catalog";
import type { TargetingService } from "./targeting-service.js";

export interface LayerTargeting {
  /** The winning assignment and, newest first, the ones it won over. */
  effectiveAssignment(
    cvdId: string,
  ): Promise<{ effective: AssignmentRecord | null; overridden: AssignmentRecord[] }>;
  /** Per matching driver profile, its driver layers (ids or names), in the profile's order. */
  driverFolders(cvdId: string): Promise<{ profile: string; folders: string[] }[]>;
}

/** How many overridden assignments `strata cvd layers` shows. */
export const OVERRIDDEN_SHOWN = 20;

/** Assignments made to the CVD itself; no collections, no driver profiles. */
export class CvdTargeting implements LayerTargeting {
  constructor(private readonly layers: LayerStore) {}

  async effectiveAssignment(cvdId: string) {
    const [effective = null, ...overridden] = await this.layers.assignmentsFor(
      [{ kind: "cvd", id: cvdId }],
      OVERRIDDEN_SHOWN + 1,
    );
    return { effective, overridden };
  }

  async driverFolders(_cvdId: string) {
    return [];
  }
}

/**
 * Collections and driver profiles, evaluated when asked on the endpoints'
 * stored facts and the CVDs' tags: the effective assignment is the newest
 * (assigned_at, then id) among the assignments made to the CVD and to every
 * collection it belongs to now — static or dynamic — and `overridden` the
 * others, newest first; the driver folders are those of every profile whose
 * rules the CVD's endpoint matches, by profile name.
 */
export class FleetTargeting implements LayerTargeting {
  constructor(
    private readonly layers: LayerStore,
    private readonly targeting: Pick<TargetingService, "collectionsOf" | "driverFolders">,
  ) {}

  async effectiveAssignment(cvdId: string) {
    const collections = await this.targeting.collectionsOf(cvdId);
    const [effective = null, ...overridden] = await this.layers.assignmentsFor(
      [{ kind: "cvd", id: cvdId }, ...collections.map((id) => ({ kind: "collection" as const, id }))],
      OVERRIDDEN_SHOWN + 1,
    );
    return { effective, overridden };
  }

  driverFolders(cvdId: string) {
    return this.targeting.driverFolders(cvdId);
  }
}
