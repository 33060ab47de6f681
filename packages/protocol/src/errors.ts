/** The body of every error response: `{ "error": ApiErrorBody }`. */
export interface ApiErrorBody {
  /** A stable code (the server's StrataError codes). */
  code: string;
  message: string;
  hint?: string;
  subject?: string;
  /** The request id, to find the server's log lines. */
  requestId?: string;
}

/** An error response, as the client sees it. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly hint: string | undefined;
  readonly subject: string | undefined;
  readonly requestId: string | undefined;

  constructor(status: number, body: ApiErrorBody) {
    super(body.message);
    this.name = "ApiError";
    this.status = status;
    this.code = body.code;
    this.hint = body.hint;
    this.subject = body.subject;
    this.requestId = body.requestId;
  }
}
