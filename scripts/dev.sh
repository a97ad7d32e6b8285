#!/bin/sh
# raibid-ci local bootstrapper (like gradlew): makes sure the pinned Nushell is present in a project-local
# tools directory, then hands over to scripts/dev.nu. Usage: ./scripts/dev.sh <up|down|env|test|status> [...]
# Run `./scripts/dev.sh help` for the commands. `./scripts/dev.sh nu [ARGS]` runs the pinned Nushell itself
# (e.g. for `use scripts/raibid.nu; raibid jobs | sort-by received`).
set -eu
root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$root/scripts/pins.env"
tools="$root/.tools"
nu_bin="$tools/bin/nu"

have_pinned_nu() {
  [ -x "$nu_bin" ] && [ "$("$nu_bin" --version 2>/dev/null)" = "$NUSHELL_VERSION" ]
}

if ! have_pinned_nu; then
  command -v npm >/dev/null 2>&1 || {
    echo "dev.sh: npm is needed to install Nushell $NUSHELL_VERSION (apt-get install npm, or install nu $NUSHELL_VERSION yourself into $tools/bin)" >&2
    exit 2
  }
  echo "dev.sh: installing Nushell $NUSHELL_VERSION into $tools (npm package nushell)" >&2
  mkdir -p "$tools/npm" "$tools/bin"
  npm install --silent --no-fund --no-audit --prefix "$tools/npm" "nushell@$NUSHELL_VERSION" >&2
  found=$(find "$tools/npm/node_modules/@nushell" -path '*/bin/nu' -type f 2>/dev/null | head -n 1)
  [ -n "$found" ] || { echo "dev.sh: the nushell npm package shipped no binary for this platform" >&2; exit 2; }
  ln -sf "$found" "$nu_bin"
  have_pinned_nu || { echo "dev.sh: $nu_bin is not Nushell $NUSHELL_VERSION" >&2; exit 2; }
fi

PATH="$tools/bin:$PATH"
export PATH RAIBID_ROOT="$root"
if [ "${1:-}" = nu ]; then
  shift
  exec "$nu_bin" "$@"
fi
exec "$nu_bin" --no-config-file "$root/scripts/dev.nu" "$@"
