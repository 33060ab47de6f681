/**
 * Which layers reach a CVD (docs/design/layers.md, "Assignment and
 * composition", "Drivers"): its effective assignment — the newest
 * assignment made to the CVD or to a collection it belongs to — and the
 * driver folders of the driver profiles its endpoint matches.
 *
 * The layer service asks only this interface. `CvdTargeting` knows
 * assignments made to the CVD itself and no driver profiles; collections
 * and driver profiles (migration 0008) come as another implementation.
 */
import type { AssignmentRecord, LayerStore } from "@strata/catalog";

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
