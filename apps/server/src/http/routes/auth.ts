import { API_PREFIX, type LoginRequest } from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";

export const authRoutes: RouteDef[] = [
  route<LoginRequest>({
    method: "POST",
    url: `${API_PREFIX}/auth/login`,
    access: "public",
    summary: "Log in with user name and password; returns a new API token (shown once)",
    tag: "auth",
    body: "LoginRequest",
    response: "LoginResponse",
    handler: ({ services, body, remoteAddr }) => services.auth.login(body, remoteAddr),
  }),
  route({
    method: "POST",
    url: `${API_PREFIX}/auth/logout`,
    access: "authenticated",
    whilePasswordMustChange: true,
    summary: "Revoke the API token of this request",
    tag: "auth",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.auth.logout(callerOf(ctx)),
  }),
  route({
    method: "GET",
    url: `${API_PREFIX}/auth/whoami`,
    access: "authenticated",
    whilePasswordMustChange: true,
    summary: "The caller's account and permissions",
    tag: "auth",
    response: "WhoAmI",
    handler: (ctx) => ctx.services.auth.whoami(callerOf(ctx)),
  }),
  route<{ currentPassword: string; newPassword: string }>({
    method: "POST",
    url: `${API_PREFIX}/auth/password`,
    access: "authenticated",
    whilePasswordMustChange: true,
    summary: "Change the caller's own password (revokes the caller's other tokens)",
    tag: "auth",
    body: "ChangePasswordRequest",
    status: 204,
    response: null,
    handler: (ctx) =>
      ctx.services.auth.changeOwnPassword(callerOf(ctx), ctx.body.currentPassword, ctx.body.newPassword),
  }),
];
