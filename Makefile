# backup-operator: the Makefile targets of the Operator-SDK guide, for a Rust workspace.
# `make help` lists them.

IMG ?= localhost/backup-operator:dev
CARGO ?= cargo
KUBECTL ?= kubectl
export CARGO_TERM_COLOR ?= never

.DEFAULT_GOAL := help

##@ General
.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_0-9-]+:.*##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development
.PHONY: build fmt lint manifests manifests-check prometheus-rules prometheus-rules-check test test-integration test-snapshots test-e2e test-e2e-cluster test-e2e-unverified test-all
build: ## Build every crate (debug).
	$(CARGO) build --workspace --all-targets

fmt: ## Format the code.
	$(CARGO) fmt --all

lint: ## cargo fmt --check, clippy -D warnings, rustdoc warnings.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p operator-framework -p operator-framework-macros -p backup-operator

manifests: ## Regenerate the CRD YAML (crds/, config/crd/bases/) from the Rust types.
	$(CARGO) run -q -p backup-operator -- manifests crds config/crd/bases

manifests-check: ## Fail if the committed CRD YAML is stale.
	@tmp=$$(mktemp -d) && $(CARGO) run -q -p backup-operator -- manifests $$tmp && \
	  for f in $$tmp/*.yaml; do \
	    cmp -s $$f crds/$$(basename $$f) && cmp -s $$f config/crd/bases/$$(basename $$f) || \
	      { echo "stale CRD $$(basename $$f): run 'make manifests' and commit"; rm -rf $$tmp; exit 1; }; \
	  done; rm -rf $$tmp; echo "CRDs are current"

prometheus-rules: ## Regenerate config/prometheus/prometheusrule.yaml from rules.yaml.
	hack/prometheus-rules.sh generate

prometheus-rules-check: ## promtool: alert rule syntax and the alert unit tests (config/prometheus/rules_test.yaml).
	hack/prometheus-rules.sh check

test: ## Unit tests and the framework's doc examples (compiled; no cluster needed).
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test --doc -p operator-framework

test-integration: cluster-up ## Integration tests against the local cluster (framework, example operator, mover with moto + restic 0.18.1).
	RESTIC_BIN=$$(hack/build-restic.sh) KUBECONFIG=$(KUBECONFIG_LOCAL) $(CARGO) test -p operator-framework -p configmap-sync -p backup-mover --tests -- --test-threads=2

test-snapshots: cluster-up csi-up image-load ## CSI snapshot tests: the snapshot module, then the operator's Snapshot/SnapshotThenCopy e2e (builds the CSI sidecars once, ~10 min).
	KUBECONFIG=$(KUBECONFIG_LOCAL) $(CARGO) test -p backup-operator --test snapshots
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(CARGO) test -p e2e --test snapshots -- --test-threads=3

test-e2e-cluster: cluster-up ## The local cluster's own e2e checks (PVCs, CronJob->Job, GC, S3 from pods).
	KUBECONFIG=$(KUBECONFIG_LOCAL) $(CARGO) test -p e2e --test cluster

test-e2e: cluster-up image-load ## End-to-end tests on the local cluster (or $$KUBECONFIG / kind).
	$(CARGO) build -q -p backup-mover -p backup-operator
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(CARGO) test -p e2e --lib --bins --test cluster --test backup --test local_operator --test admission -- --test-threads=4

test-e2e-unverified: cluster-up image-load ## Catalog/DR and production-Jobs e2e scenarios written this round but not yet run green (not in test-all).
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(CARGO) test -p e2e --test catalog --test jobs -- --test-threads=2

test-all: lint manifests-check prometheus-rules-check test test-integration test-e2e test-snapshots ## What CI runs: lint, CRDs, unit, integration, the e2e suite, then CSI snapshots.

##@ Cluster
.PHONY: install uninstall run deploy undeploy deploy-local demo
install: ## Install the CRDs into the cluster in ~/.kube/config or $$KUBECONFIG.
	$(KUBECTL) apply -f crds/

uninstall: ## Remove the CRDs (and with them every BackupPolicy and Restore).
	$(KUBECTL) delete --ignore-not-found -f crds/

run: ## Run the operator against the current cluster as a local process.
	$(CARGO) run -p backup-operator -- run --mover-image $(IMG) $(ARGS)

deploy: ## Deploy CRDs, RBAC and the operator from config/default with image IMG.
	$(KUBECTL) kustomize config/default | sed 's|controller:latest|$(IMG)|g' | $(KUBECTL) apply -f -

deploy-local: ## Deploy onto the local cluster (host network to reach the 127.0.0.1 API server).
	$(KUBECTL) kustomize config/local | sed 's|controller:latest|$(IMG)|g' | $(KUBECTL) apply -f -
	@# The tag stays the same between image-loads: roll the pod when the image's content changed.
	@tar=$${KB_CACHE:-$$HOME/.cache/kube-backup}/images/$$(echo '$(IMG)' | tr '/:' '__').tar; \
	  if [ -f "$$tar" ]; then \
	    sum=$$(sha256sum "$$tar" | cut -c1-16); \
	    $(KUBECTL) -n backup-operator-system patch deployment backup-operator-controller-manager --type merge \
	      -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"kube-backup/image-content\":\"$$sum\"}}}}}"; \
	  fi

undeploy: ## Remove what deploy installed.
	$(KUBECTL) kustomize config/default | $(KUBECTL) delete --ignore-not-found -f -

demo: ## Local cluster, image, operator, moto S3, sample PVC + policy, one backup, show it.
	./hack/demo.sh

##@ Image
.PHONY: docker-build docker-push
docker-build: ## Build the image IMG with Docker.
	docker build -t $(IMG) .

docker-push: ## Push the image IMG.
	docker push $(IMG)

##@ Benchmarks (print key=value lines)
.PHONY: bench-framework bench-operator bench-mover
bench-framework: cluster-up ## N objects (default 1000) with a trivial create handler.
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(CARGO) run --release -q -p operator-framework --example bench-framework -- $(or $(N),1000)

bench-operator: cluster-up ## One policy over 100 PVCs, then 1,000 policies over 10,000 PVCs (operator as a child process).
	$(CARGO) build -q --release -p backup-operator --bin backup-operator
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(CARGO) run -q --release -p e2e --bin bench-operator -- $(BENCH_ARGS)
bench-mover: ## Data mover vs restic 0.18.1 (built once): 1 GiB random, 1% changed, 20k small files; local repo + moto S3 (BENCH_ARGS=--no-s3 --many-files 1000000 ...).
	$(CARGO) build --release -p backup-mover
	RESTIC_BIN=$$(hack/build-restic.sh) $(CARGO) run --release -q -p backup-mover --bin bench-mover -- $(BENCH_ARGS)

include e2e/cluster/cluster.mk
include e2e/csi/csi.mk
