#!/usr/bin/env bash
# Builds switchyard-testenv, kube-controller-manager, kube-scheduler, kubectl and kstatus into OUT
# (default target/testenv/bin), skipping the build when a hash of go.mod, go.sum and the sources
# of cmd/ matches the last successful build; then helm (helm/) and KWOK (kwok/), each from its own
# module and cached by its own hash, so that no build forces another.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/testenv/bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly

# The control plane and kubectl: kube-apiserver + etcd from the pinned Kubernetes module.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
hash=$(cd "$here" && { echo "$k8s_version"; cat go.mod go.sum; find cmd -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1)
main_bins="switchyard-testenv kube-controller-manager kube-scheduler kubectl kstatus"
have_all() { for b in "$@"; do [ -x "$out/$b" ] || return 1; done; }
if [ -f "$out/.hash" ] && [ "$(cat "$out/.hash")" = "$hash" ] && have_all $main_bins; then
  echo "testenv: up to date ($k8s_version, ${hash:0:12})"
else
  minor=$(echo "$k8s_version" | cut -d. -f2)
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  echo "testenv: building kube-apiserver+etcd, kube-controller-manager, kube-scheduler and kubectl $k8s_version (several minutes when cold)"
  (cd "$here" &&
    go build -trimpath -ldflags "$ldflags" -o "$out/switchyard-testenv" ./cmd/switchyard-testenv &&
    go build -trimpath -ldflags "$ldflags" -o "$out/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager &&
    go build -trimpath -ldflags "$ldflags" -o "$out/kube-scheduler" k8s.io/kubernetes/cmd/kube-scheduler &&
    go build -trimpath -ldflags "$ldflags" -o "$out/kubectl" k8s.io/kubernetes/cmd/kubectl &&
    # kstatus: Flux's status rules (sigs.k8s.io/cli-utils), for the GitOps tests.
    go build -trimpath -o "$out/kstatus" ./cmd/kstatus)
  echo "$hash" > "$out/.hash"
  echo "testenv: built into $out"
fi

# own_module NAME MODULE: a tool built from its own module in NAME/ by build_NAME VERSION, with
# VERSION that of MODULE in NAME/go.mod; cached by a hash of that module alone.
own_module() {
  local name=$1 module=$2 version hash
  version=$(awk -v m="$module" '$1 == m { print $2; exit }' "$here/$name/go.mod")
  hash=$(cd "$here/$name" && { echo "$version"; cat go.mod go.sum; } | sha256sum | cut -d' ' -f1)
  if [ -f "$out/.hash-$name" ] && [ "$(cat "$out/.hash-$name")" = "$hash" ] && [ -x "$out/$name" ]; then
    echo "testenv: $name up to date ($version, ${hash:0:12})"
  else
    echo "testenv: building $name $version"
    (cd "$here/$name" && "build_$name" "$version")
    echo "$hash" > "$out/.hash-$name"
    echo "testenv: $name built into $out"
  fi
}

# helm, for the chart tests: its own module, because it pins a newer Kubernetes than ../go.mod.
build_helm() {
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$1 -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    -o "$out/helm" helm.sh/helm/v3/cmd/helm
}
own_module helm helm.sh/helm/v3

# KWOK, the fake nodes of `switchyard-testenv --nodes N`: its own module, because it pins newer
# dependencies (OpenTelemetry, gRPC, …) than ../go.mod.
build_kwok() {
  go build -trimpath -ldflags "-s -w" -o "$out/kwok" sigs.k8s.io/kwok/cmd/kwok
}
own_module kwok sigs.k8s.io/kwok
