import type { RouteDef } from "../registry.js";
import { auditRoutes } from "./audit.js";
import { authRoutes } from "./auth.js";
import { autoassignRoutes } from "./autoassign.js";
import { endpointRoutes } from "./endpoints.js";
import { enrollmentRoutes } from "./enrollment.js";
import { layerRoutes } from "./layers.js";
import { policyRoutes } from "./policies.js";
import { restoreRoutes } from "./restores.js";
import { roleRoutes } from "./roles.js";
import { targetingRoutes } from "./targeting.js";
import { tokenRoutes } from "./tokens.js";
import { uploadRoutes } from "./uploads.js";
import { userRoutes } from "./users.js";

/** Every /api/v1 route. A new resource adds its file here. (System routes live in app.ts: they need the app's deps.) */
export const apiRoutes: RouteDef[] = [
  ...authRoutes,
  ...tokenRoutes,
  ...userRoutes,
  ...roleRoutes,
  ...auditRoutes,
  ...enrollmentRoutes,
  ...endpointRoutes,
  ...autoassignRoutes,
  ...policyRoutes,
  ...uploadRoutes,
  ...restoreRoutes,
  ...targetingRoutes,
  ...layerRoutes,
];
