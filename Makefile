# Switchyard. `make run` starts the whole thing locally; `make test` proves it.
SHELL := /bin/bash
CARGO ?= cargo
TESTENV_BIN := target/testenv/bin

.PHONY: model-check
.PHONY: run test testenv krew build crds chart-files static dist image lint unit integration clean bench plugin e2e-kind image-check chaos

## run: a local cluster (NODES fake nodes, default 2), simulated providers, the controller and sample
##      workspaces, one of them a Pod on the cluster (Ctrl-C stops all). Every run starts fresh;
##      KEEP=1 starts from the data the previous KEEP=1 run kept. Logs: target/dev/switchyard.log
NODES ?= 2
run: testenv build
	"$${CARGO_TARGET_DIR:-target}/debug/switchyard" dev --testenv-bin $(TESTENV_BIN) --nodes $(NODES) $(if $(KEEP),--keep-data)

## test: unit tests and integration tests against a real kube-apiserver (with the chaos scenarios
##       and one short seeded campaign of tests/chaos.rs), then the OpenTelemetry
##       trace test on the `otel` build (lint: make lint)
##       The fuller-cluster tests (tests/provider_kubernetes.rs) mostly wait for Pods, so they run
##       beside the other test binaries, which cargo runs one after another; their output follows.
SLOW_TEST := provider_kubernetes
OTHER_TESTS := $(patsubst tests/%.rs,--test %,$(filter-out tests/$(SLOW_TEST).rs,$(wildcard tests/*.rs)))
test: testenv krew
	$(CARGO) test --all-targets --no-run
	@log="$${CARGO_TARGET_DIR:-target}/test-$(SLOW_TEST).log"; mkdir -p "$$(dirname "$$log")"; \
	$(CARGO) test --test $(SLOW_TEST) -- --color never --test-threads 4 > "$$log" 2>&1 & slow=$$!; \
	$(CARGO) test --lib --bins $(OTHER_TESTS) -- --color never --test-threads 4; rc=$$?; \
	wait $$slow; slow_rc=$$?; \
	echo "--- tests/$(SLOW_TEST).rs (ran beside the others): exit $$slow_rc"; cat "$$log"; \
	[ $$rc -eq 0 ] && [ $$slow_rc -eq 0 ]
	$(CARGO) test --features otel --test otel -- --color never

## chaos: the long seeded fault campaign over real controller and provider-sim processes, once per
##        seed (tests/chaos.rs; `make test` runs its targeted scenarios and one short campaign).
##        A failing seed replays with e.g. make chaos SEEDS="3"
SEEDS ?= 1 2 3 4 5
chaos: testenv
	$(CARGO) build --release --test chaos
	SWITCHYARD_CHAOS_SEEDS="$(SEEDS)" $(CARGO) test --release --test chaos -- --ignored --nocapture --color never campaign

## krew: build the kubectl plugin manager from tests/krew, for the release-archive test (cached by content hash)
krew:
	deploy/go-tool.sh tests/krew sigs.k8s.io/krew/cmd/krew target/krew/bin/krew

## testenv: build kube-apiserver+etcd, kube-controller-manager, kube-scheduler and kubectl from
##          tests/testenv, and KWOK and helm from their own modules (each cached by content hash)
testenv:
	tests/testenv/build.sh $(TESTENV_BIN)

build:
	$(CARGO) build

## plugin: target/plugin/kubectl-switchyard, a symlink to the built binary; with target/plugin on
##         PATH, `kubectl switchyard switch ws-1 --to gcp --wait` works (the binary acts on its name)
plugin: build
	mkdir -p target/plugin
	ln -sfn "$(abspath $(or $(CARGO_TARGET_DIR),target))/debug/switchyard" target/plugin/kubectl-switchyard
	@echo 'export PATH="$(abspath target/plugin):$$PATH"   # then: kubectl switchyard status'

## crds: regenerate crds/ from the Rust types (and the Helm chart's copy)
crds:
	$(CARGO) run --quiet -- crd > crds/switchyard.dev.yaml
	$(MAKE) --no-print-directory chart-files

## chart-files: copy the CRDs, the alerts and the dashboard into the Helm chart (a chart cannot
##              read files outside its folder; tests/helm.rs fails when a copy drifts)
CHART := deploy/helm/switchyard
chart-files:
	cp crds/switchyard.dev.yaml $(CHART)/files/crds.yaml
	cp deploy/monitoring/prometheusrule.yaml $(CHART)/files/prometheusrule.yaml
	cp deploy/monitoring/grafana-dashboard.json $(CHART)/files/grafana-dashboard.json

## bench: create and switch N workspaces on a local control plane; measure latency, API writes,
##        controller memory/CPU and the API server's ceiling (results: target/bench, docs/benchmarks.md).
##        e.g. make bench BENCH_ARGS="--workspaces 10000 --profiles zero"
BENCH_ARGS ?=
bench: testenv
	$(CARGO) build --release
	"$${CARGO_TARGET_DIR:-target}/release/switchyard" bench --testenv-bin $(TESTENV_BIN) --out target/bench $(BENCH_ARGS)

## e2e-kind: the end-to-end suites on a kind cluster, for machines with Docker (CI here uses the
##           local control plane). Needs kind on PATH; kubectl comes from `make testenv`.
KIND ?= kind
KIND_CLUSTER ?= switchyard-e2e
e2e-kind: testenv
	$(KIND) create cluster --name $(KIND_CLUSTER) --wait 120s
	$(KIND) get kubeconfig --name $(KIND_CLUSTER) > target/kind.kubeconfig
	SWITCHYARD_TEST_KUBECONFIG=$(abspath target/kind.kubeconfig) $(CARGO) test --test api --test controller \
	  --test scenarios --test provider_e2e --test ha --test gitops --test cli -- --test-threads 4; \
	  status=$$?; $(KIND) delete cluster --name $(KIND_CLUSTER); exit $$status

## static: the release binary, statically linked (glibc; the Dockerfile builds musl), for the
##         image and the release archive
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_BIN = $${CARGO_TARGET_DIR:-target}/$(STATIC_TARGET)/release/switchyard
VERSION := $(shell awk -F'"' '$$1 == "version = " { print $$2; exit }' Cargo.toml)
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(STATIC_TARGET)

## dist: target/dist/switchyard_vVERSION_linux_amd64.tar.gz (kubectl-switchyard, LICENSE, README,
##       completions, man pages) and target/dist/plugins/switchyard.yaml, its krew manifest
dist: static
	deploy/dist.sh "$(STATIC_BIN)" target/dist "v$(VERSION)"

## image: target/image/switchyard-VERSION.oci.tar, an OCI image archive of the static binary built
##        without a container engine (deploy/image, go-containerregistry): nonroot (65532), no
##        shell, OCI labels, an SPDX SBOM of the Rust dependencies inside and beside it. Load it
##        with `skopeo copy oci-archive:…`, `podman load` or `docker load` (25+)
IMAGE_TOOL := target/image/bin/switchyard-image
IMAGE := target/image/switchyard-$(VERSION).oci.tar
image: static
	deploy/go-tool.sh deploy/image . $(IMAGE_TOOL)
	$(CARGO) metadata --format-version 1 --locked --filter-platform $(STATIC_TARGET) > target/image/metadata.json
	$(IMAGE_TOOL) build --binary "$(STATIC_BIN)" --metadata target/image/metadata.json --lock Cargo.lock \
	  --license LICENSE --version $(VERSION) --revision "$$(git rev-parse HEAD)" \
	  --created "$$(date -u -d "@$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct)}" +%Y-%m-%dT%H:%M:%SZ)" \
	  --out $(IMAGE) --sbom-out target/image/switchyard-$(VERSION).spdx.json

## image-check: the image's contract, on the archive `make image` wrote (needs root): unpacked as a
##              runtime would, its config runs /switchyard as 65532 with no shell in the filesystem,
##              and that filesystem, mounted read-only, carries a workspace through a switch
##              (deploy/image-check.sh); the image builder's own tests first
image-check: testenv image
	cd deploy/image && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly go test ./...
	deploy/image-check.sh $(IMAGE) $(TESTENV_BIN) $(IMAGE_TOOL)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features otel -- -D warnings

clean:
	$(CARGO) clean

## model-check: the explicit-state model check of the switch protocol over the real decide and
##              status transitions, every scope (tests/model_check.rs, docs/model-check.md; release
##              build): per check the scope, states, depth, time and verdict. The widest scope is
##              bounded by time: MODEL_CHECK_SECS (default 300)
model-check:
	$(CARGO) test --release --test model_check -- --include-ignored --nocapture --color never --test-threads 1
