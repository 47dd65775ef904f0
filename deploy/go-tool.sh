#!/usr/bin/env bash
# Builds PACKAGE of the Go module in MODULE_DIR into OUT (a file), skipping the build when a hash
# of the module's go.mod, go.sum and Go sources matches the last successful build of OUT.
# Used for the image builder (deploy/image) and krew (tests/krew); the local control plane has
# its own script (tests/testenv/build.sh).
#
# usage: deploy/go-tool.sh MODULE_DIR PACKAGE OUT
set -euo pipefail
module=$(cd "${1:?usage: go-tool.sh MODULE_DIR PACKAGE OUT}" && pwd)
package=${2:?usage: go-tool.sh MODULE_DIR PACKAGE OUT}
out=${3:?usage: go-tool.sh MODULE_DIR PACKAGE OUT}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
hash=$(cd "$module" && { echo "$package"; cat go.mod go.sum; find . -name '*.go' | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1)
name=$(basename "$out")
if [ -f "$out.hash" ] && [ "$(cat "$out.hash")" = "$hash" ] && [ -x "$out" ]; then
  echo "$name: up to date (${hash:0:12})"
  exit 0
fi
echo "$name: building $package"
(cd "$module" && go build -trimpath -ldflags "-s -w" -o "$out" "$package")
echo "$hash" >"$out.hash"
echo "$name: built into $out"
