# Local test cluster, images and kind targets; included by the top-level Makefile.
# Everything lives in ~/.cache/kube-backup (override with KB_CACHE / KB_STATE).

KB_CLUSTER_DIR := e2e/cluster
KB_CACHE ?= $(HOME)/.cache/kube-backup
KB_STATE ?= $(KB_CACHE)/cluster
KUBECONFIG_LOCAL ?= $(KB_STATE)/kubeconfig
S3_ENDPOINT_FILE ?= $(KB_STATE)/s3-endpoint
IMG ?= localhost/backup-operator:dev
KIND ?= kind
KIND_CLUSTER ?= kube-backup
KIND_NODE_IMAGE ?=
export KB_CACHE KB_STATE

##@ Local cluster
.PHONY: cluster-up cluster-down cluster-purge cluster-status k8s-binaries moto-up moto-down image image-load images-base kind-up kind-down

cluster-up: ## Start the local single-node cluster (builds Kubernetes once; prints KUBECONFIG).
	$(KB_CLUSTER_DIR)/cluster-up.sh

cluster-down: ## Stop the local cluster (exactly the processes it started) and clean up.
	$(KB_CLUSTER_DIR)/cluster-down.sh

cluster-purge: ## cluster-down, and also drop certificates and the node's image store.
	$(KB_CLUSTER_DIR)/cluster-down.sh --purge

cluster-status: ## Show the local cluster's components and nodes.
	$(KB_CLUSTER_DIR)/cluster-status.sh

k8s-binaries: ## Build (once) and cache the Kubernetes and etcd binaries of the local cluster.
	$(KB_CLUSTER_DIR)/build-binaries.sh all

moto-up: ## Start the moto S3 server on the node address (cluster-up does this).
	$(KB_CLUSTER_DIR)/moto-up.sh

moto-down: ## Stop the moto S3 server.
	$(KB_CLUSTER_DIR)/moto-down.sh

image: ## Build the operator image IMG without Docker (static binaries, OCI archive).
	$(KB_CLUSTER_DIR)/images.sh operator $(IMG) --no-load

image-load: ## Build the operator image IMG and load it into the local cluster's node.
	$(KB_CLUSTER_DIR)/images.sh operator $(IMG)

images-base: ## Build and load the pause and busybox images (cluster-up does this).
	$(KB_CLUSTER_DIR)/images.sh base

##@ kind (machines with Docker)
kind-up: ## Create the kind cluster from kind-config.yaml, build IMG with Docker and load it.
	$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE))
	docker build -t $(IMG) .
	$(KIND) load docker-image $(IMG) --name $(KIND_CLUSTER)

kind-down: ## Delete the kind cluster.
	$(KIND) delete cluster --name $(KIND_CLUSTER)
