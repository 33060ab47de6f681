/**
 * The agent's transports over app.inject (the whole fastify stack, no
 * socket): JSON calls, the upload protocol's frame streams, the restore
 * protocol's frame answers. Shared by the restore and layer suites.
 */
import { asStrataError, oneBuffer, type RestoreTransport, type UploadTransport } from "@strata/agent";
import { ApiError } from "@strata/protocol";
import type { Harness } from "./suite.js";

const API = "/api/v1";

/** JSON calls with `secret` (an endpoint credential or a user's token); errors as ApiError. */
export function injectJson(h: Harness, secret: string) {
  return async <T>(method: string, p: string, body?: unknown): Promise<T> => {
    const r = await h.app.inject({
      method: method as "GET",
      url: API + p,
      headers: { authorization: `Bearer ${secret}`, "strata-protocol": "1" },
      ...(body !== undefined ? { payload: body as object } : {}),
    });
    if (r.statusCode >= 400) throw new ApiError(r.statusCode, r.json().error);
    return (r.body ? r.json() : undefined) as T;
  };
}

/** The upload protocol over app.inject, as the agent speaks it. */
export function uploadTransport(h: Harness, credential: string): UploadTransport {
  return {
    json: injectJson(h, credential),
    async frames<T>(p: string, body: AsyncIterable<Buffer>): Promise<T> {
      const parts: Buffer[] = [];
      for await (const b of body) parts.push(b);
      const r = await h.app.inject({
        method: "PUT",
        url: API + p,
        headers: {
          authorization: `Bearer ${credential}`,
          "content-type": "application/vnd.strata.frames",
          "strata-protocol": "1",
        },
        payload: Buffer.concat(parts),
      });
      if (r.statusCode >= 400) throw new ApiError(r.statusCode, r.json().error);
      return r.json() as T;
    },
  };
}

/** The restore protocol over app.inject; `tamper` may change a frame body before the source sees it. */
export function restoreTransport(
  h: Harness,
  secret: string,
  tamper?: (b: Buffer) => Buffer,
): RestoreTransport {
  const json = injectJson(h, secret);
  return {
    json: (m, p, b) => json(m, p, b).catch((e) => Promise.reject(asStrataError(e))),
    async frames(method, p, body) {
      const r = await h.app.inject({
        method,
        url: API + p,
        headers: { authorization: `Bearer ${secret}`, "strata-protocol": "1" },
        ...(body !== undefined ? { payload: body as object } : {}),
      });
      if (r.statusCode >= 400) throw asStrataError(new ApiError(r.statusCode, r.json().error));
      return oneBuffer(tamper ? tamper(r.rawPayload) : r.rawPayload);
    },
  };
}
