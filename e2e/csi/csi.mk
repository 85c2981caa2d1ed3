# CSI snapshot support of the test clusters; included by the top-level Makefile.
# Local cluster: the snapshot CRDs, snapshot-controller, csi-provisioner and
# csi-snapshotter (built once from their Go modules into ~/.cache/kube-backup/csi)
# and a small hostpath CSI driver run as host processes next to `make cluster-up`.

KB_CSI_DIR := e2e/csi

##@ CSI snapshots
.PHONY: csi-build csi-up csi-down csi-purge kind-csi

csi-build: ## Build (once) the CSI sidecars, snapshot-controller and hostpath driver.
	$(KB_CSI_DIR)/build.sh

csi-up: ## Add CSI snapshots to the running local cluster (StorageClass csi-hostpath, VolumeSnapshotClass csi-hostpath-snapclass).
	$(KB_CSI_DIR)/csi-up.sh

csi-down: ## Stop the CSI processes csi-up started (CRDs, classes and snapshots stay).
	$(KB_CSI_DIR)/csi-down.sh

csi-purge: ## Delete all VolumeSnapshots, stop the CSI processes, remove classes, CRDs and driver data.
	$(KB_CSI_DIR)/csi-down.sh --purge

kind-csi: ## On a kind cluster: snapshot CRDs + controller and csi-driver-host-path from the upstream manifests.
	$(KB_CSI_DIR)/kind-csi.sh
