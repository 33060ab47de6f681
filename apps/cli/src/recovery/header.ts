/**
 * The recovery tool's POSIX sh header. It finds the payload by byte offset
 * (the header's own length, written into it), unpacks it with tools every
 * Debian system has (tail, gzip, tar, mktemp: all Essential), runs the
 * shipped node on the program and removes the directory on exit, whatever
 * the program's fate. The program's exit status is the file's.
 */

const ARCH: Record<string, string> = {
  x64: "x86_64",
  arm64: "aarch64",
  arm: "armv7l",
  ppc64: "ppc64le",
  s390x: "s390x",
};

/** The width of the offset field: the header's length is written into it, so its own width must not change. */
const SKIP_WIDTH = 10;

export function headerScript(version: string, arch = process.arch): string {
  const machine = ARCH[arch] ?? arch;
  const text = (skip: string) => `#!/bin/sh
# Strata recovery tool ${version} (${machine}). Run it on the live system of the
# machine to restore:   sh ./THIS-FILE --help
# What follows this header is a gzip'd tar: node, the program, its addons.
set -eu
skip=${skip}
if [ "$(uname -m)" != "${machine}" ]; then
  echo "strata-recovery: this tool is built for ${machine}, this machine is $(uname -m)" >&2
  exit 1
fi
for c in tail gzip tar mktemp; do
  command -v "$c" >/dev/null 2>&1 || { echo "strata-recovery: needs '$c', which is not installed" >&2; exit 1; }
done
dir=$(mktemp -d "\${TMPDIR:-/tmp}/strata-recovery.XXXXXX")
trap 'rm -rf "$dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ! tail -c +"$skip" "$0" | gzip -dc | tar -xf - -C "$dir"; then
  echo "strata-recovery: cannot unpack into $dir (is it full, or mounted noexec? set TMPDIR to another directory)" >&2
  exit 1
fi
unset NODE_OPTIONS NODE_PATH
export STRATA_RECOVERY_FILE="$0"
set +e
"$dir/node" "$dir/dist/recovery.mjs" "$@"
rc=$?
exit "$rc"
`;
  const placeholder = " ".repeat(SKIP_WIDTH);
  const length = Buffer.byteLength(text(placeholder));
  // tail -c +N starts at byte N, counted from 1.
  // Padded with trailing blanks (the shell ignores them; leading zeros could read as octal).
  return text(String(length + 1).padEnd(SKIP_WIDTH, " "));
}
