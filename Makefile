# mesh: the two commands a newcomer needs are `make run` and `make test`.
# Everything else here is a step of those two.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
MESH := target/debug/mesh
CLUSTER := e2e/scripts/cluster.sh

.PHONY: fuzz bench-ca bench-dataplane bench-identity bench-webhook bench-xds help tools build crds cluster-up cluster-down up down pod-exec env run test test-unit test-e2e lint fmt clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

tools: ## Install the pinned cluster tools, Envoy and helm into the cache (~/.cache/mesh)
	@e2e/scripts/tools.sh

build: ## Build the mesh binary
	$(CARGO) build --workspace

crds: build ## Regenerate crds/ and docs/api.md from the Rust types
	$(MESH) crds > crds/istio.yaml
	cp crds/istio.yaml charts/mesh/crds/istio.yaml
	$(MESH) crds --format markdown > docs/api.md

cluster-up: tools build ## Start the local control plane (idempotent); writes .cluster/kubeconfig
	@$(CLUSTER) up

cluster-down: ## Stop the local control plane and remove its state
	@$(CLUSTER) down

up: cluster-up ## Cluster + node + CRDs + controller, all in the background
	@$(CLUSTER) mesh-up

down: cluster-down ## Stop everything `make up` started and remove its state

# POD and CMD reach the recipe through the environment, as written: make
# would expand `$` in them, and pasting them into the recipe's text would
# let a quote in CMD end the shell's string.
pod-exec: export MESH_POD = $(value POD)
pod-exec: export MESH_POD_CMD = $(value CMD)
pod-exec: ## Run CMD in a pod: make pod-exec POD=default/productpage CMD='curl -s productpage:9080/productpage'
	@test -n "$$MESH_POD" || { echo "usage: make pod-exec POD=<namespace>/<pod> CMD='...'" >&2; exit 2; }
	@"$${CARGO_TARGET_DIR:-target}/debug/localnode" enter --state-dir "$${MESH_CLUSTER_DIR:-.cluster}/node" \
	  "$$MESH_POD" -- sh -c "$${MESH_POD_CMD:-exec sh}"

env: ## Print export lines: eval "$$(make -s env)"
	@$(CLUSTER) env

run: tools build ## Local cluster + Bookinfo + the controller in the foreground; Ctrl-C stops all
	@e2e/scripts/run.sh

test: tools lint test-unit fuzz test-e2e ## Everything: format, lints, unit tests, a short fuzz run, end-to-end tests

lint: ## The layer check (imports flow one way), cargo fmt --check and clippy with warnings as errors
	python3 scripts/layers.py
	python3 scripts/layers.py --self-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features mesh/e2e -- -D warnings
	$(CARGO) clippy --lib --features fuzzing -- -D warnings

test-unit: ## Unit and in-process tests (no cluster; the iptables test needs root)
	$(CARGO) test --workspace
	$(CARGO) test --lib iptables -- --ignored

fuzz: ## Every fuzz target for 20 s each; FUZZ_RUNS=10000000 make fuzz for the long run (fuzz/README.md)
	@scripts/fuzz.sh

test-e2e: tools build ## End-to-end tests on a cluster of their own, removed afterwards
	@e2e/scripts/e2e.sh

bench-webhook: tools ## Both webhooks' latency at 200 req/s (docs/perf.md)
	$(CARGO) build --release -p mesh
	@$(MAKE) -s build
	@e2e/scripts/bench-webhook.sh

bench-xds: tools ## The xDS server at scale: 1000 Services, 2000 simulated proxies; COMPARE=istiod: istiod beside it (docs/perf.md)
	$(CARGO) build --release -p mesh -p xds-load
	@$(MAKE) -s build
	@e2e/scripts/bench-xds.sh

bench-ca: ## Workload certificates issued per second, on one thread and on every core (docs/perf.md)
	$(CARGO) test --release --lib xds::issuance -- --ignored --nocapture

bench-identity: tools ## Pod creation to its Envoy's first ACKed secret, 20 injected pods (docs/perf.md)
	$(CARGO) build --release -p mesh
	@$(MAKE) -s build
	@e2e/scripts/bench-identity.sh

bench-dataplane: tools ## Latency two sidecars add (1 kB at 1000 req/s, mutual TLS) beside two hand-written Envoys (docs/perf.md)
	@$(MAKE) -s build
	@e2e/scripts/bench-dataplane.sh

fmt: ## Format the code
	$(CARGO) fmt --all

clean: cluster-down ## Remove build output and local state
	$(CARGO) clean
