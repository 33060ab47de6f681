/**
 * The one table from error codes to HTTP statuses. The domain throws
 * StrataError with a code; only this file knows about HTTP. Typed as a
 * Record over every ErrorCode, so a new code does not compile until it has
 * a status here.
 */
import { type ErrorCode, StrataError } from "@strata/core";
import type { ApiErrorBody } from "@strata/protocol";

export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  UNSAFE_PATH: 400,
  WRONG_PASSWORD: 401, // bad credentials, or a missing/invalid/expired token
  PERMISSION_DENIED: 403,
  NOT_POSSESSED: 409,
  TOO_LARGE: 413,
  SESSION_EXPIRED: 410,
  NOT_FOUND: 404,
  REPO_NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  AMBIGUOUS: 409,
  CONFLICT: 409,
  LOCKED: 429, // "not now": login rate limit, or a lease held by someone else; retry later
  UNSUPPORTED: 501,
  CONFIG_INVALID: 500,
  DATA_CORRUPT: 500,
  REPO_CORRUPT: 500,
  INTERNAL: 500,
  IO_ERROR: 503,
  NO_SPACE: 507,
};

/** fastify's own request errors (bad JSON, too large, wrong media type) by their code. */
const FASTIFY_ERRORS: Record<string, { status: number; message: string; hint?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, message: "request body too large", hint: "send a smaller body" },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    status: 415,
    message: "unsupported content type",
    hint: "send Content-Type: application/json",
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: {
    status: 400,
    message: "empty JSON body",
    hint: "send a JSON object, or no Content-Type",
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { status: 400, message: "Content-Length does not match the body" },
};

export interface WireError {
  status: number;
  body: { error: ApiErrorBody };
  retryAfter?: number;
}

/** Any thrown value as a status and the wire error body. 5xx never carries internal messages. */
export function toWireError(e: unknown, requestId: string): WireError {
  if (e instanceof StrataError) {
    const status = STATUS_BY_CODE[e.code] ?? 500;
    const body: ApiErrorBody = { code: e.code, message: e.message, requestId };
    if (e.hint) body.hint = e.hint;
    if (e.subject && status < 500) body.subject = e.subject;
    if (status >= 500) {
      body.message = "internal server error";
      body.hint = "the server log has the details under this request id";
    }
    const retry = (e as { retryAfterSeconds?: number }).retryAfterSeconds;
    return { status, body: { error: body }, ...(retry ? { retryAfter: retry } : {}) };
  }
  const fe = e as {
    code?: string;
    statusCode?: number;
    validation?: unknown;
    message?: string;
    validationContext?: string;
  };
  if (fe?.validation) {
    return {
      status: 400,
      body: { error: { code: "INVALID_ARGUMENT", message: `invalid request: ${fe.message}`, requestId } },
    };
  }
  const known = fe?.code ? FASTIFY_ERRORS[fe.code] : undefined;
  if (known) {
    const body: ApiErrorBody = { code: "INVALID_ARGUMENT", message: known.message, requestId };
    if (known.hint) body.hint = known.hint;
    return { status: known.status, body: { error: body } };
  }
  if (typeof fe?.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) {
    // Malformed JSON and other request errors fastify raises (messages name no internals).
    return {
      status: fe.statusCode,
      body: {
        error: {
          code: "INVALID_ARGUMENT",
          message: `bad request: ${fe.message ?? "malformed"}`,
          hint: "send a valid JSON object",
          requestId,
        },
      },
    };
  }
  return {
    status: 500,
    body: {
      error: {
        code: "INTERNAL",
        message: "internal server error",
        hint: "the server log has the details under this request id",
        requestId,
      },
    },
  };
}
