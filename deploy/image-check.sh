#!/usr/bin/env bash
# The container image's runtime contract, checked on the image archive itself and without a
# container engine: `make image`'s OCI archive is unpacked with the same library registries and
# runtimes use (go-containerregistry: deploy/image), its config must run the binary as uid/gid
# 65532 ("nonroot") with no shell anywhere in its filesystem, and that filesystem, mounted
# read-only as a runtime would, must run the controller and carry a workspace through a switch
# against the local control plane. Needs root (a mount namespace and chroot) for the last part.
# Where Docker is available, the image can also be built from deploy/Dockerfile.
#
# usage: deploy/image-check.sh IMAGE_ARCHIVE [TESTENV_BIN] [IMAGE_TOOL]
set -euo pipefail

archive=$(realpath "${1:?usage: image-check.sh IMAGE_ARCHIVE [TESTENV_BIN] [IMAGE_TOOL]}")
testenv_bin=$(realpath "${2:-target/testenv/bin}")
image_tool=$(realpath "${3:-target/image/bin/switchyard-image}")
kubectl="$testenv_bin/kubectl"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "image-check: FAIL: $*" >&2; exit 1; }

# The archive as a runtime sees it: the flattened layers and the config.
root="$work/rootfs"
"$image_tool" unpack --archive "$archive" --rootfs "$root" --config "$work/config.json" >/dev/null
config() { jq -r "$1" "$work/config.json"; }
user=$(config '.config.User')
[ "$user" = "65532:65532" ] || fail "the image runs as '$user', not 65532:65532"
entrypoint=$(config '.config.Entrypoint | @json')
[ "$entrypoint" = '["/switchyard"]' ] || fail "entrypoint is $entrypoint"
for label in version revision created source licenses; do
  value=$(config ".config.Labels[\"org.opencontainers.image.$label\"] // \"\"")
  [ -n "$value" ] || fail "the image has no org.opencontainers.image.$label label"
done
sbom="$root$(config '.config.Labels["dev.switchyard.sbom"]')"
[ "$(jq -r .spdxVersion "$sbom")" = SPDX-2.3 ] || fail "no SPDX SBOM at $sbom"
jq -e '[.packages[].name] | index("kube-client") and index("switchyard")' "$sbom" >/dev/null ||
  fail "the SBOM does not list the binary's dependencies"
shells=$(find "$root" \( -name sh -o -name bash -o -name dash -o -name ash -o -name zsh -o -name busybox \) -printf '/%P\n')
[ -z "$shells" ] || fail "a shell is in the image: $shells"
executables=$(find "$root" -type f -perm /111 -printf '/%P\n')
[ "$executables" = /switchyard ] || fail "executables other than /switchyard: $executables"
echo "image-check: $archive: user $user, entrypoint $entrypoint, OCI labels, SBOM ($(jq '.packages | length' "$sbom") packages), no shell"

# A static binary needs no loader and no libc in the image.
bin="$root/switchyard"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  fail "/switchyard is dynamically linked: $(ldd "$bin" 2>&1 | head -3 | tr '\n' ' ')"
fi
echo "image-check: /switchyard is static"

# The local control plane.
"$testenv_bin/switchyard-testenv" --dir "$work/cp" >"$work/cp.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do [ -s "$work/cp/kubeconfig" ] && break; sleep 0.5; done
[ -s "$work/cp/kubeconfig" ] || fail "control plane did not start: $(tail -5 "$work/cp.log")"
export KUBECONFIG="$work/cp/kubeconfig"
"$bin" crd | "$kubectl" apply -f - >/dev/null
"$kubectl" wait --for=condition=Established crd/workspaces.switchyard.dev crd/computeproviders.switchyard.dev --timeout=60s >/dev/null

# What a runtime adds to the image's filesystem: mount points for /proc and the /dev nodes, and
# the kubeconfig standing in for the mounted ServiceAccount token.
mkdir -p "$root/proc" "$root/dev"
install -m 0444 "$KUBECONFIG" "$root/etc/kubeconfig"

"$kubectl" create namespace image-check >/dev/null
"$kubectl" apply -f - >/dev/null <<'EOF'
apiVersion: switchyard.dev/v1alpha1
kind: ComputeProvider
metadata: {name: image-a}
spec: {driver: simulated}
---
apiVersion: switchyard.dev/v1alpha1
kind: ComputeProvider
metadata: {name: image-b}
spec: {driver: simulated}
---
apiVersion: switchyard.dev/v1alpha1
kind: Workspace
metadata: {name: ws, namespace: image-check}
spec: {provider: image-a, template: {image: busybox}}
EOF

# Read-only root, proc and the /dev nodes every container runtime provides, then the image's
# entrypoint as the image's user.
unshare --mount --propagation private sh -c '
  set -e
  root="$1"; log="$2"; chroot="$3"; user="$4"; entrypoint="$5"
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  for dev in null zero full random urandom; do
    touch "$root/dev/$dev"
    mount --bind "/dev/$dev" "$root/dev/$dev"
  done
  mount -o remount,bind,ro "$root"
  exec env -i KUBECONFIG=/etc/kubeconfig HOME=/home/nonroot "$chroot" --userspec="$user" "$root" "$entrypoint" controller \
    --namespace image-check --identity image-check --metrics-addr 127.0.0.1:0 \
    >"$log" 2>&1
' sh "$root" "$work/controller.log" "$(command -v chroot)" "$user" "$(config '.config.Entrypoint[0]')" </dev/null &
pids+=($!)

wait_ready() {
  "$kubectl" wait -n image-check --for=condition=Ready workspace/ws --timeout=60s >/dev/null ||
    fail "workspace not Ready on $1; controller log: $(tail -20 "$work/controller.log")"
  on=$("$kubectl" get -n image-check workspace/ws -o jsonpath='{.status.activeProvider}')
  [ "$on" = "$1" ] || fail "workspace on '$on', expected $1"
  echo "image-check: workspace Ready on $1"
}
wait_ready image-a

# The process that answered: the controller itself (unshare, sh, env and chroot each exec'd it).
controller=${pids[-1]}
[ "$(readlink "/proc/$controller/exe")" != "" ] || fail "controller process $controller is gone"
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$controller/status")
[ "$uids" = "65532 65532 65532 65532" ] || fail "controller runs as uids '$uids', not 65532"
rootopts=$(awk '$2 == "/" {print $4}' "/proc/$controller/mounts" | tail -1)
case ",$rootopts," in *,ro,*) ;; *) fail "controller's root is mounted '$rootopts', not read-only" ;; esac
echo "image-check: controller (pid $controller) runs as 65532 with root mounted $rootopts"
"$kubectl" patch -n image-check workspace/ws --type merge -p '{"spec":{"provider":"image-b"}}' >/dev/null
for _ in $(seq 1 120); do
  on=$("$kubectl" get -n image-check workspace/ws -o jsonpath='{.status.activeProvider}')
  [ "$on" = image-b ] && break
  sleep 0.5
done
wait_ready image-b

grep -qi "read-only file system\|permission denied" "$work/controller.log" &&
  fail "the controller tried to write: $(grep -i 'read-only\|permission denied' "$work/controller.log" | head -3)"
echo "image-check: ok — the image's filesystem, mounted read-only, run as $user, completed a switch"
