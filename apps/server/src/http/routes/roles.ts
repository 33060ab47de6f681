import { API_PREFIX } from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";

type Name = { name: string };

export const roleRoutes: RouteDef[] = [
  route({
    method: "GET",
    url: `${API_PREFIX}/roles`,
    access: { permission: "roles.read" },
    summary: "List built-in and custom roles",
    tag: "roles",
    response: { arrayOf: "Role" },
    handler: (ctx) => ctx.services.roles.list(callerOf(ctx)),
  }),
  route<{ name: string; permissions: string[] }>({
    method: "POST",
    url: `${API_PREFIX}/roles`,
    access: { permission: "roles.write" },
    summary: "Create a custom role from named permissions (only ones the caller holds)",
    tag: "roles",
    body: "CreateRoleRequest",
    status: 201,
    response: "Role",
    handler: (ctx) => ctx.services.roles.create(callerOf(ctx), ctx.body.name, ctx.body.permissions),
  }),
  route<unknown, Name>({
    method: "GET",
    url: `${API_PREFIX}/roles/:name`,
    access: { permission: "roles.read" },
    summary: "Show a role and its permissions",
    tag: "roles",
    params: "RoleNameParams",
    response: "Role",
    handler: (ctx) => ctx.services.roles.get(callerOf(ctx), ctx.params.name),
  }),
  route<{ permissions: string[] }, Name>({
    method: "PUT",
    url: `${API_PREFIX}/roles/:name`,
    access: { permission: "roles.write" },
    summary: "Replace a custom role's permissions",
    tag: "roles",
    params: "RoleNameParams",
    body: "UpdateRoleRequest",
    response: "Role",
    handler: (ctx) => ctx.services.roles.update(callerOf(ctx), ctx.params.name, ctx.body.permissions),
  }),
  route<unknown, Name>({
    method: "DELETE",
    url: `${API_PREFIX}/roles/:name`,
    access: { permission: "roles.write" },
    summary: "Delete a custom role nobody holds",
    tag: "roles",
    params: "RoleNameParams",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.roles.delete(callerOf(ctx), ctx.params.name),
  }),
  route({
    method: "GET",
    url: `${API_PREFIX}/permissions`,
    access: { permission: "roles.read" },
    summary: "The table of named permissions",
    tag: "roles",
    response: { arrayOf: "Permission" },
    handler: (ctx) => ctx.services.roles.permissions(callerOf(ctx)),
  }),
];
