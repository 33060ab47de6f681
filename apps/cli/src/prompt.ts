/**
 * Questions on the terminal (stdin and stderr, so stdout stays the
 * command's output). Each refuses, with a hint naming the flag, when stdin
 * is not a terminal: a script must give every answer as a flag.
 */
import { createInterface } from "node:readline/promises";
import { StrataError } from "@strata/core";

export const canAsk = () => Boolean(process.stdin.isTTY);

function refuse(what: string, hint: string): never {
  throw new StrataError("INVALID_ARGUMENT", `no ${what} given`, { hint });
}

/** A line of text; `hint` says which flag gives it without a terminal. */
export async function ask(question: string, what: string, hint: string): Promise<string> {
  if (!canAsk()) refuse(what, hint);
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  try {
    return (await rl.question(question)).trim();
  } finally {
    rl.close();
  }
}

/**
 * A secret, not echoed. The terminal is put in raw mode and read here
 * (readline's promise interface echoes whatever its output hook says):
 * Enter ends it, Backspace erases, Ctrl-C or Ctrl-D on an empty line
 * gives up.
 */
export async function askSecret(
  question: string,
  what = "password",
  hint = "set STRATA_PASSWORD or pass --password-file FILE",
): Promise<string> {
  if (!canAsk()) refuse(what, hint);
  const stdin = process.stdin;
  // Raw (no echo) before the question shows: an answer typed the moment it
  // appears must not be echoed by the terminal.
  stdin.setRawMode(true);
  process.stderr.write(question);
  stdin.resume();
  return new Promise<string>((resolve, reject) => {
    let chars: string[] = [];
    const finish = (err?: StrataError) => {
      stdin.off("data", onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write("\n");
      if (err) reject(err);
      else resolve(chars.join(""));
    };
    const onData = (d: Buffer) => {
      for (const ch of d.toString("utf8")) {
        if (ch === "\r" || ch === "\n") return finish();
        if (ch === "\u0003" || (ch === "\u0004" && chars.length === 0))
          return finish(new StrataError("INVALID_ARGUMENT", `no ${what} given`, { hint }));
        if (ch === "\u007f" || ch === "\b") chars = chars.slice(0, -1);
        else if (ch >= " ") chars.push(ch);
      }
    };
    stdin.on("data", onData);
  });
}

/** Yes or no; anything but y/yes is no. */
export async function confirm(question: string, what: string, hint: string): Promise<boolean> {
  return /^y(es)?$/i.test(await ask(`${question} [y/N] `, what, hint));
}
