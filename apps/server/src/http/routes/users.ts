import { API_PREFIX } from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";

type Name = { name: string };

export const userRoutes: RouteDef[] = [
  route({
    method: "GET",
    url: `${API_PREFIX}/users`,
    access: { permission: "users.read" },
    summary: "List user accounts",
    tag: "users",
    response: { arrayOf: "User" },
    handler: (ctx) => ctx.services.users.list(callerOf(ctx)),
  }),
  route<{ name: string; role: string; password: string; mustChangePassword?: boolean }>({
    method: "POST",
    url: `${API_PREFIX}/users`,
    access: { permission: "users.write" },
    summary: "Create a user (must change the password at first login unless told otherwise)",
    tag: "users",
    body: "CreateUserRequest",
    status: 201,
    response: "User",
    handler: (ctx) => ctx.services.users.create(callerOf(ctx), ctx.body),
  }),
  route<unknown, Name>({
    method: "GET",
    url: `${API_PREFIX}/users/:name`,
    access: { permission: "users.read" },
    summary: "Show a user",
    tag: "users",
    params: "UserNameParams",
    response: "User",
    handler: (ctx) => ctx.services.users.get(callerOf(ctx), ctx.params.name),
  }),
  route<{ role?: string; disabled?: boolean }, Name>({
    method: "PATCH",
    url: `${API_PREFIX}/users/:name`,
    access: { permission: "users.write" },
    summary: "Change a user's role or disable/enable the account (disabling revokes its tokens)",
    tag: "users",
    params: "UserNameParams",
    body: "UpdateUserRequest",
    response: "User",
    handler: (ctx) => ctx.services.users.update(callerOf(ctx), ctx.params.name, ctx.body),
  }),
  route<{ password: string; mustChangePassword?: boolean }, Name>({
    method: "POST",
    url: `${API_PREFIX}/users/:name/password`,
    access: { permission: "users.write" },
    summary: "Set another user's password (revokes their tokens)",
    tag: "users",
    params: "UserNameParams",
    body: "ResetPasswordRequest",
    response: "User",
    handler: (ctx) =>
      ctx.services.users.resetPassword(
        callerOf(ctx),
        ctx.params.name,
        ctx.body.password,
        ctx.body.mustChangePassword,
      ),
  }),
];
