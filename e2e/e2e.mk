# e2e cluster harness targets; the top-level Makefile includes this file.
#
#   make k8s-binaries        build (or find cached) kube-* / kubeadm / kubectl / etcd
#   make cluster-up          3 control planes + 2 workers, left running
#   make cluster-status
#   make cluster-down        remove everything the cluster created
#   make test-e2e-cluster    the harness's own e2e tests (root, ~2 min)
#
# Override E2E_CLUSTER_NAME / E2E_SUBNET / E2E_CONTROL_PLANES / E2E_WORKERS
# on the command line; more than one cluster can run with distinct names and
# subnets.

E2E_SCRIPTS        := e2e/scripts
E2E_CLUSTER_NAME   ?= e2e
E2E_CLUSTER_DIR    ?= /var/lib/rotate-e2e/$(E2E_CLUSTER_NAME)
E2E_SUBNET         ?= 10.213.47.0/24
E2E_CONTROL_PLANES ?= 3
E2E_WORKERS        ?= 2
E2E_TEST_TIMEOUT   ?= 20m

# Directory holding the Kubernetes binaries and etcd. Deferred: evaluated
# only by recipes that use it, after k8s-binaries has run (the script is
# instant once the cache is warm; it prints the bin dir on its last line).
K8S_BIN_DIR ?= $(shell $(E2E_SCRIPTS)/build-binaries.sh 2>/dev/null | tail -n 1)

E2E_CLUSTER := go run ./e2e/cmd/e2e-cluster

.PHONY: e2e-deps k8s-binaries cluster-up cluster-down cluster-status test-e2e-cluster

e2e-deps:
	$(E2E_SCRIPTS)/ensure-deps.sh

k8s-binaries:
	$(E2E_SCRIPTS)/build-binaries.sh

cluster-up: e2e-deps k8s-binaries
	$(E2E_CLUSTER) up --name $(E2E_CLUSTER_NAME) --dir $(E2E_CLUSTER_DIR) \
	  --control-planes $(E2E_CONTROL_PLANES) --workers $(E2E_WORKERS) \
	  --subnet $(E2E_SUBNET) --bin-dir $(K8S_BIN_DIR)

cluster-status:
	$(E2E_CLUSTER) status --dir $(E2E_CLUSTER_DIR)

cluster-down:
	$(E2E_CLUSTER) down --dir $(E2E_CLUSTER_DIR)

test-e2e-cluster: e2e-deps k8s-binaries
	ROTATE_E2E_BIN_DIR=$(K8S_BIN_DIR) go test -tags e2e ./e2e/cluster/... -timeout $(E2E_TEST_TIMEOUT) -v -count=1
