# Switchyard. `make run` starts the whole thing locally; `make test` proves it.
SHELL := /bin/bash
CARGO ?= cargo
TESTENV_BIN := target/testenv/bin

.PHONY: run test testenv build crds lint unit integration clean

## run: a local control plane, simulated providers, the controller and sample workspaces (Ctrl-C stops all)
run: testenv build
	./target/debug/switchyard dev --testenv-bin $(TESTENV_BIN)

## test: lint-free build, unit tests and integration tests against a real kube-apiserver
test: testenv
	$(CARGO) test --all-targets -- --color never --test-threads 4

## testenv: build kube-apiserver+etcd and kubectl from tests/testenv (cached by content hash)
testenv:
	tests/testenv/build.sh $(TESTENV_BIN)

build:
	$(CARGO) build

## crds: regenerate crds/ from the Rust types
crds:
	$(CARGO) run --quiet -- crd > crds/switchyard.dev.yaml

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
