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

/** A secret, not echoed. */
export async function askSecret(
  question: string,
  what = "password",
  hint = "set STRATA_PASSWORD or pass --password-file FILE",
): Promise<string> {
  if (!canAsk()) refuse(what, hint);
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  // Do not echo: mute output after the question.
  const out = rl as unknown as { _writeToOutput?: (s: string) => void };
  process.stderr.write(question);
  out._writeToOutput = () => {};
  try {
    return await rl.question("");
  } finally {
    rl.close();
    process.stderr.write("\n");
  }
}

/** Yes or no; anything but y/yes is no. */
export async function confirm(question: string, what: string, hint: string): Promise<boolean> {
  return /^y(es)?$/i.test(await ask(`${question} [y/N] `, what, hint));
}
