/**
 * One error class for the whole project. `code` is stable (scripts and the
 * HTTP layer map on it), `message` names the object, `hint` tells the user
 * what to do next.
 */
export const ErrorCodes = {
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
  NOT_FOUND: "NOT_FOUND",
  ALREADY_EXISTS: "ALREADY_EXISTS",
  AMBIGUOUS: "AMBIGUOUS",
  WRONG_PASSWORD: "WRONG_PASSWORD",
  REPO_NOT_FOUND: "REPO_NOT_FOUND",
  REPO_CORRUPT: "REPO_CORRUPT",
  CONFIG_INVALID: "CONFIG_INVALID",
  DATA_CORRUPT: "DATA_CORRUPT",
  IO_ERROR: "IO_ERROR",
  NO_SPACE: "NO_SPACE",
  UNSAFE_PATH: "UNSAFE_PATH",
  LOCKED: "LOCKED",
  UNSUPPORTED: "UNSUPPORTED",
  PERMISSION_DENIED: "PERMISSION_DENIED",
  /** A request or frame over a declared limit. */
  TOO_LARGE: "TOO_LARGE",
  /** An upload referenced a chunk or tree the session does not own (protocol.md, "Ownership"). */
  NOT_POSSESSED: "NOT_POSSESSED",
  /** The upload session was committed, aborted or expired. */
  SESSION_EXPIRED: "SESSION_EXPIRED",
  /** The request contradicts what is stored (layers.md: an assignment mixing OS releases). */
  CONFLICT: "CONFLICT",
  INTERNAL: "INTERNAL",
} as const;
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export interface StrataErrorOptions {
  hint?: string;
  cause?: unknown;
  /** The object the error is about: a path, a pack id, a snapshot id. */
  subject?: string;
}

export class StrataError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly subject: string | undefined;

  constructor(code: ErrorCode, message: string, opts: StrataErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "StrataError";
    this.code = code;
    this.hint = opts.hint;
    this.subject = opts.subject;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, hint: this.hint, subject: this.subject };
  }
}

export function isStrataError(e: unknown, code?: ErrorCode): e is StrataError {
  return e instanceof StrataError && (code === undefined || e.code === code);
}

/** Map a Node.js system error (ENOSPC, EACCES, …) to a StrataError naming `subject`. */
export function fromSystemError(e: unknown, action: string, subject: string): StrataError {
  if (e instanceof StrataError) return e;
  const err = e as NodeJS.ErrnoException;
  const code = err?.code;
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new StrataError("NO_SPACE", `no space left while ${action} ${subject}`, {
      subject,
      cause: e,
      hint: "free space on the device holding the repository and run the command again; stored data is unchanged",
    });
  }
  if (code === "EACCES" || code === "EPERM") {
    return new StrataError("PERMISSION_DENIED", `permission denied while ${action} ${subject}`, {
      subject,
      cause: e,
      hint: "run as a user that may access it",
    });
  }
  if (code === "ENOENT") {
    return new StrataError("NOT_FOUND", `${subject} does not exist (while ${action})`, { subject, cause: e });
  }
  return new StrataError("IO_ERROR", `${action} ${subject} failed: ${err?.message ?? String(e)}`, {
    subject,
    cause: e,
  });
}
