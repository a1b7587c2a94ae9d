# rotate — see README.md. `make test` runs everything CI runs; `make demo`
# rotates the CAs of a local HA cluster end to end.
GO       ?= go
BIN      := $(CURDIR)/bin
K8S_BIN   = $(shell e2e/scripts/build-binaries.sh | tail -n 1)
E2E_TIMEOUT ?= 80m

export GOFLAGS := -buildvcs=false
SHELL := /bin/bash

.PHONY: all build deps k8s-binaries unit e2e test demo bench bench-scale cluster-up cluster-down vet clean

all: build

build:
	$(GO) build -o $(BIN)/rotate ./cmd/rotate
	$(GO) build -o $(BIN)/e2e-cluster ./e2e/cmd/e2e-cluster
	$(GO) build -o $(BIN)/e2e-node ./e2e/cmd/e2e-node
	$(GO) build -o $(BIN)/e2e-probe ./e2e/cmd/e2e-probe
	$(GO) build -o $(BIN)/e2e-demo ./e2e/cmd/e2e-demo
	$(GO) build -o $(BIN)/e2e-bench ./e2e/cmd/e2e-bench

# Debian packages (sshd, sudo, openssl, curl, iproute2, ...), installed
# only when missing.
deps:
	bash scripts/deps.sh

# The real kube-apiserver, controller-manager, scheduler, kubeadm, kubectl
# and etcd, built from source once per version into /var/cache/rotate-e2e.
k8s-binaries:
	e2e/scripts/build-binaries.sh

vet:
	$(GO) vet ./...
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"

# Unit tests, the real-sshd tests and the tests on files made by the real
# kubeadm.
unit: deps k8s-binaries
	ROTATE_K8S_BIN=$(K8S_BIN) $(GO) test -count=1 ./...

# The end-to-end suite on a real HA control plane in network namespaces.
# The harness's own tests (e2e/cluster, their own clusters) run next to
# the rotation suite (-p 2): clusters have their own names, subnets and
# namespaces, and the host-level checks allow for another cluster.
e2e: deps k8s-binaries build
	@echo "e2e: full log in e2e.log, the rotation's probe report in e2e-probes.json"
	@{ ROTATE_K8S_BIN=$(K8S_BIN) ROTATE_BIN_DIR=$(BIN) ROTATE_E2E_REPORT=$(CURDIR)/e2e-probes.json $(GO) test -p 2 -count=1 -tags e2e -timeout $(E2E_TIMEOUT) -v ./e2e/... 2>&1; echo $$? > e2e.rc; } \
	  | tee e2e.log | grep --line-buffered -E '^(=== RUN|\s*--- |PASS|FAIL|ok |panic)|e2e:' || true
	@rc=$$(cat e2e.rc); rm -f e2e.rc; if [ "$$rc" != 0 ]; then echo "e2e failed (exit $$rc); last lines of e2e.log:"; tail -n 150 e2e.log; exit $$rc; fi

test: vet unit e2e

demo: deps k8s-binaries build
	ROTATE_K8S_BIN=$(K8S_BIN) ROTATE_BIN_DIR=$(BIN) $(BIN)/e2e-demo

bench: deps
	sh nodes/testdata/ratio.sh
	$(GO) test -run '^$$' -bench Commit ./state/

# How a rotation grows with the number of workers and with network
# latency: one cluster (name bench, 10.213.70.0/24) grown to each N, a
# rotation and its rollback per N and network mode; a table on stdout and
# bench-scale.json. BENCH_FLAGS passes flags, e.g.
#   make bench-scale BENCH_FLAGS='--workers 2,3 --wan none,50ms --rotate-bin /tmp/old-rotate'
BENCH_FLAGS ?=
bench-scale: deps k8s-binaries build
	ROTATE_K8S_BIN=$(K8S_BIN) ROTATE_BIN_DIR=$(BIN) $(BIN)/e2e-bench $(BENCH_FLAGS)

cluster-up: deps k8s-binaries build
	$(BIN)/e2e-cluster up --bin-dir $(K8S_BIN)

cluster-down:
	$(GO) run ./e2e/cmd/e2e-cluster down

clean:
	rm -rf $(BIN) e2e.log e2e-probes.json
