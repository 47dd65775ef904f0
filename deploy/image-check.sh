#!/usr/bin/env bash
# The container image's runtime contract, checked without a container engine: the static
# binary alone in an otherwise empty root filesystem (as in distroless/static), mounted
# read-only, run as uid/gid 65532 ("nonroot"), must run the controller and carry a workspace
# through a switch against the local control plane. Needs root (a mount namespace and chroot).
# Where Docker is available, build deploy/Dockerfile instead; `make image-check` builds a static
# glibc binary for this check (the image links against musl).
#
# usage: deploy/image-check.sh STATIC_BINARY [TESTENV_BIN]
set -euo pipefail

bin=$(realpath "${1:?usage: image-check.sh STATIC_BINARY [TESTENV_BIN]}")
testenv_bin=$(realpath "${2:-target/testenv/bin}")
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

# A static binary needs no loader and no libc in the image.
if ldd "$bin" 2>&1 | grep -q '=>'; then
  fail "$bin is dynamically linked: $(ldd "$bin" 2>&1 | head -3 | tr '\n' ' ')"
fi
echo "image-check: $bin is static"

# The local control plane.
"$testenv_bin/switchyard-testenv" --dir "$work/cp" >"$work/cp.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do [ -s "$work/cp/kubeconfig" ] && break; sleep 0.5; done
[ -s "$work/cp/kubeconfig" ] || fail "control plane did not start: $(tail -5 "$work/cp.log")"
export KUBECONFIG="$work/cp/kubeconfig"
"$bin" crd | "$kubectl" apply -f - >/dev/null
"$kubectl" wait --for=condition=Established crd/workspaces.switchyard.dev crd/computeproviders.switchyard.dev --timeout=60s >/dev/null

# The image's root filesystem: the binary, the nonroot user, and the kubeconfig standing in for
# the ServiceAccount token. Nothing else: no shell, no libc, no /tmp that can be written.
root="$work/rootfs"
mkdir -p "$root/etc" "$root/proc" "$root/dev"
cp "$bin" "$root/switchyard"
echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
echo 'nonroot:x:65532:' >"$root/etc/group"
install -m 0444 "$KUBECONFIG" "$root/etc/kubeconfig"
chmod 0444 "$root/etc/passwd" "$root/etc/group"

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

# Read-only root, proc and the /dev nodes every container runtime provides, then drop to 65532.
unshare --mount --propagation private sh -c '
  set -e
  root="$1"; log="$2"; chroot="$3"
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  for dev in null zero full random urandom; do
    touch "$root/dev/$dev"
    mount --bind "/dev/$dev" "$root/dev/$dev"
  done
  mount -o remount,bind,ro "$root"
  exec env -i KUBECONFIG=/etc/kubeconfig HOME=/home/nonroot "$chroot" --userspec=65532:65532 "$root" /switchyard controller \
    --namespace image-check --identity image-check --metrics-addr 127.0.0.1:0 \
    >"$log" 2>&1
' sh "$root" "$work/controller.log" "$(command -v chroot)" </dev/null &
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
echo "image-check: ok — static binary, empty read-only root, uid 65532, a switch completed"
