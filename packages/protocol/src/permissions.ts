/**
 * Named permissions and the built-in roles: the one table both the server
 * (which enforces it) and the CLI (which lists it) read. Adding a permission
 * here is all it takes to make it grantable; a route names it in the server's
 * route registry.
 */
export const PERMISSIONS = [
  { name: "system.read", description: "see server status, version and certificate" },
  { name: "users.read", description: "list and show user accounts" },
  { name: "users.write", description: "create, disable, re-role users and reset their passwords" },
  { name: "roles.read", description: "list roles and the permission table" },
  { name: "roles.write", description: "create, change and delete custom roles" },
  { name: "audit.read", description: "read the audit log" },
  { name: "tokens.create", description: "create endpoint enrollment tokens" },
  { name: "endpoints.read", description: "list and show endpoints" },
  { name: "endpoints.approve", description: "approve pending endpoints and give them a CVD" },
  { name: "endpoints.write", description: "rename, retire and delete endpoints" },
  { name: "endpoints.control", description: "ask an endpoint's agent to upload now or to snooze" },
  { name: "cvd.read", description: "list CVDs, their snapshots and transactions" },
  { name: "cvd.browse", description: "browse and download files inside CVD snapshots" },
  { name: "cvd.write", description: "change a CVD's policy, delete CVDs or snapshots" },
  { name: "policy.read", description: "list, show, export and preview upload policies" },
  { name: "policy.write", description: "create, edit and import upload policies" },
  { name: "layers.read", description: "list and show base, app and driver layers" },
  { name: "layers.write", description: "capture, edit and delete layers" },
  { name: "layers.assign", description: "assign layers to endpoints and collections, enforce them" },
  { name: "restore.run", description: "restore files, system-only or whole CVDs to endpoints" },
] as const;

export type Permission = (typeof PERMISSIONS)[number]["name"];

export const PERMISSION_NAMES: readonly Permission[] = PERMISSIONS.map((p) => p.name);

export function isPermission(s: string): s is Permission {
  return (PERMISSION_NAMES as readonly string[]).includes(s);
}

export interface BuiltinRole {
  name: string;
  description: string;
  permissions: readonly Permission[];
}

const reads = PERMISSION_NAMES.filter((p) => p.endsWith(".read"));

/**
 * In the manner of Mirage: administrators do everything; image managers own
 * layers and their assignment; protection managers own enrollment, CVDs and
 * upload policies; help desk restores files for users; read-only sees the
 * inventory. Only Administrator manages accounts and reads the audit log.
 */
export const BUILTIN_ROLES: readonly BuiltinRole[] = [
  {
    name: "Administrator",
    description: "every permission, including accounts, roles and the audit log",
    permissions: PERMISSION_NAMES,
  },
  {
    name: "Image Manager",
    description: "captures base, app and driver layers and assigns them",
    permissions: [
      "system.read",
      "endpoints.read",
      "cvd.read",
      "policy.read",
      "layers.read",
      "layers.write",
      "layers.assign",
    ],
  },
  {
    name: "Protection Manager",
    description: "enrolls endpoints, manages CVDs and upload policies, restores",
    permissions: [
      "system.read",
      "tokens.create",
      "endpoints.read",
      "endpoints.approve",
      "endpoints.write",
      "endpoints.control",
      "cvd.read",
      "cvd.browse",
      "cvd.write",
      "policy.read",
      "policy.write",
      "layers.read",
      "restore.run",
    ],
  },
  {
    name: "Help Desk",
    description: "finds a user's endpoint, browses its CVD and restores files",
    permissions: [
      "system.read",
      "endpoints.read",
      "endpoints.control",
      "cvd.read",
      "cvd.browse",
      "policy.read",
      "layers.read",
      "restore.run",
    ],
  },
  {
    name: "Read-only",
    description: "sees the inventory, never file contents, accounts or the audit log",
    permissions: reads.filter((p) => p !== "users.read" && p !== "audit.read"),
  },
];

export const ADMINISTRATOR_ROLE = "Administrator";
