/**
 * The upload protocol over HTTPS: JSON requests through the typed client,
 * frame streams as `application/vnd.strata.frames` bodies streamed from the
 * agent's buffers, both on the pinned connection (client.ts).
 */
import { Readable } from "node:stream";
import { API_PREFIX, ApiError, PROTOCOL_HEADER, PROTOCOL_VERSION } from "@strata/protocol";
import { FRAMES_CONTENT_TYPE } from "@strata/repo";
import { agentClient, enrolledState, pinnedDispatcher, reachError, undici } from "./client.js";
import type { UploadTransport } from "./upload.js";

export function httpTransport(url: string, fingerprint: string, credential: string): UploadTransport {
  const client = agentClient(url, fingerprint, credential);
  const dispatcher = pinnedDispatcher(fingerprint);
  return {
    json: <T>(method: "GET" | "POST" | "PUT" | "DELETE", path: string, body?: unknown) =>
      client.request<T>(method, API_PREFIX + path, body),
    async frames<T>(path: string, body: AsyncIterable<Buffer>, bytes: number): Promise<T> {
      const target = url + API_PREFIX + path;
      let res: Awaited<ReturnType<ReturnType<typeof undici>["request"]>>;
      try {
        res = await undici().request(target, {
          method: "PUT",
          dispatcher,
          body: Readable.from(body, { objectMode: false }),
          headers: {
            authorization: `Bearer ${credential}`,
            "content-type": FRAMES_CONTENT_TYPE,
            "content-length": String(bytes),
            accept: "application/json",
            [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
          },
        });
      } catch (e) {
        throw reachError(target, e);
      }
      const text = await res.body.text();
      let parsed: unknown;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        parsed = undefined;
      }
      if (res.statusCode >= 400) {
        const err = (parsed as { error?: { code: string; message: string } } | undefined)?.error;
        throw new ApiError(
          res.statusCode,
          err?.code
            ? err
            : { code: "INTERNAL", message: `HTTP ${res.statusCode} from ${target}: ${text.slice(0, 200)}` },
        );
      }
      return parsed as T;
    },
  };
}

/** The transport of an enrolled endpoint, from its state directory. */
export function endpointTransport(stateDir: string): UploadTransport {
  const { state, credential } = enrolledState(stateDir);
  return httpTransport(state.serverUrl, state.fingerprint, credential);
}
