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

# helm, for the chart tests: its own module, because it pins a newer Kubernetes than ../go.mod.
helm_version=$(awk '$1 == "helm.sh/helm/v3" { print $2; exit }' "$here/helm/go.mod")
helm_hash=$(cd "$here/helm" && { echo "$helm_version"; cat go.mod go.sum; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/.hash-helm" ] && [ "$(cat "$out/.hash-helm")" = "$helm_hash" ] && [ -x "$out/helm" ]; then
  echo "testenv: helm up to date ($helm_version, ${helm_hash:0:12})"
else
  echo "testenv: building helm $helm_version"
  (cd "$here/helm" &&
    go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      -o "$out/helm" helm.sh/helm/v3/cmd/helm)
  echo "$helm_hash" > "$out/.hash-helm"
  echo "testenv: helm built into $out"
fi

# KWOK, the fake nodes of `switchyard-testenv --nodes N`: its own module, because it pins newer
# dependencies (OpenTelemetry, gRPC, …) than ../go.mod.
kwok_version=$(awk '$1 == "sigs.k8s.io/kwok" { print $2; exit }' "$here/kwok/go.mod")
kwok_hash=$(cd "$here/kwok" && { echo "$kwok_version"; cat go.mod go.sum; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/.hash-kwok" ] && [ "$(cat "$out/.hash-kwok")" = "$kwok_hash" ] && [ -x "$out/kwok" ]; then
  echo "testenv: kwok up to date ($kwok_version, ${kwok_hash:0:12})"
else
  echo "testenv: building kwok $kwok_version"
  (cd "$here/kwok" &&
    go build -trimpath -ldflags "-s -w" -o "$out/kwok" sigs.k8s.io/kwok/cmd/kwok)
  echo "$kwok_hash" > "$out/.hash-kwok"
  echo "testenv: kwok built into $out"
fi
