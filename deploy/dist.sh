#!/usr/bin/env bash
# A release archive of the switchyard binary in the layout krew installs from, and its krew
# manifest: OUT/switchyard_VERSION_OS_ARCH.tar.gz holds kubectl-switchyard (the binary under the
# plugin's name: it acts as `kubectl switchyard` by its name), LICENSE, README.md, shell
# completions and man pages; OUT/plugins/switchyard.yaml is deploy/krew/switchyard.yaml with the
# version, platform, archive name and sha256 filled in. The archive is reproducible: sorted
# names, no owners, and mtimes from SOURCE_DATE_EPOCH (default: the last commit's time).
#
# usage: deploy/dist.sh BINARY OUT_DIR VERSION [OS ARCH]     e.g. deploy/dist.sh target/.../switchyard target/dist v0.1.0
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=$(realpath "${1:?usage: dist.sh BINARY OUT_DIR VERSION [OS ARCH]}")
out=${2:?usage: dist.sh BINARY OUT_DIR VERSION [OS ARCH]}
version=${3:?usage: dist.sh BINARY OUT_DIR VERSION [OS ARCH]}
os=${4:-linux}
arch=${5:-amd64}
case "$version" in v[0-9]*.[0-9]*.[0-9]*) ;; *) echo "dist: VERSION must look like v1.2.3, not $version" >&2; exit 2 ;; esac
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bin" "$stage/kubectl-switchyard"
install -m 0644 "$root/LICENSE" "$root/README.md" "$stage/"
mkdir -p "$stage/completions" "$stage/man"
"$bin" completion bash >"$stage/completions/switchyard.bash"
"$bin" completion zsh >"$stage/completions/_switchyard"
"$bin" completion fish >"$stage/completions/switchyard.fish"
"$bin" man --out-dir "$stage/man"

mkdir -p "$out/plugins"
archive="switchyard_${version}_${os}_${arch}.tar.gz"
(cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
  tar --no-recursion --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -cf - -T - | gzip -n) >"$out/$archive"
sha=$(sha256sum "$out/$archive" | cut -d' ' -f1)
sed -e "s|@VERSION@|$version|g" -e "s|@OS@|$os|g" -e "s|@ARCH@|$arch|g" -e "s|@ARCHIVE@|$archive|g" -e "s|@SHA256@|$sha|g" \
  -e '/^# /d' "$here/krew/switchyard.yaml" >"$out/plugins/switchyard.yaml"
echo "dist: $out/$archive ($sha)"
echo "dist: $out/plugins/switchyard.yaml"
