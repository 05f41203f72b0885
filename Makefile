# svid-csi: `make test` runs every test; `make up` runs the control plane locally.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# The version a tools module pins for a module path (in or out of a require block).
pinned = $(shell awk '{for (i = 1; i < NF; i++) if ($$i == "$(1)") {print $$(i+1); exit}}' $(2))
KUBE_VERSION := $(call pinned,k8s.io/kubernetes,hack/tools/kube/go.mod)
KUBE_MINOR := $(word 2,$(subst ., ,$(KUBE_VERSION)))
KUBE_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(KUBE_MINOR) -X $(p).gitTreeState=clean)
CM_VERSION := $(call pinned,github.com/cert-manager/cert-manager,hack/tools/certmanager/go.mod)
CM_LDFLAGS := -s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$(CM_VERSION)

KUBE_BINS := kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
UPSTREAM := $(addprefix $(BIN)/,$(KUBE_BINS)) $(BIN)/cert-manager-controller $(BIN)/cert-manager-webhook
INTEGRATION_PKGS := ./internal/testbed/... ./test/...
OURS := $(BIN)/svid-csi-approver $(BIN)/svid-csi-driver

.PHONY: all test test-unit test-integration verify bin deps up clean bench images
all: bin

## test: everything CI runs (checks, unit tests, integration tests on the test bed)
test: verify test-unit test-integration

## test-unit: the fast tests, no control plane, under the race detector (cgo: gcc)
test-unit:
	CGO_ENABLED=1 $(GO) test -count=1 -race ./...

## test-integration: the real control plane, the real node and our binaries (as root)
test-integration: deps bin
	$(GO) test -count=1 -tags integration -timeout 40m -p 1 $(INTEGRATION_PKGS)

verify:
	@test -n "$(KUBE_VERSION)" -a -n "$(CM_VERSION)" || { echo "cannot read pinned versions from hack/tools/*/go.mod"; exit 1; }
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./...

bin: $(UPSTREAM) $(OURS)

# Upstream binaries are rebuilt only when their pinned versions change.
$(addprefix $(BIN)/,$(KUBE_BINS)) &: hack/tools/kube/go.mod hack/tools/kube/go.sum
	@echo "building $(KUBE_BINS) $(KUBE_VERSION) from the Go module proxy (the first build takes minutes)"
	cd hack/tools/kube && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/ \
		$(addprefix k8s.io/kubernetes/cmd/,$(KUBE_BINS))

$(BIN)/cert-manager-controller $(BIN)/cert-manager-webhook &: hack/tools/certmanager/go.mod hack/tools/certmanager/go.sum $(wildcard hack/tools/certmanager/*/*.go)
	cd hack/tools/certmanager && for c in controller webhook; do \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(CM_LDFLAGS)' -o $(BIN)/cert-manager-$$c ./$$c || exit 1; done

# Ours are always handed to go build, whose cache makes a no-op cheap.
.PHONY: $(OURS)
$(BIN)/svid-csi-approver:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $@ ./approver
$(BIN)/svid-csi-driver:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $@ ./driver

## deps: what a fresh Debian machine lacks: etcd for the control plane;
## containerd, runc and a static busybox (the pods' tools image) for the node
DEBS := etcd-server containerd runc busybox-static
deps:
	@missing=; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (Debian)"; apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

## up: the product on a local node until Ctrl-C: the control plane and a real
## node on loopback, overlays/example applied, an example app, each pod's SVID
## printed (as root)
up: deps bin
	@echo "building the demo (hack/bed)"
	CGO_ENABLED=0 $(GO) build -o $(BIN)/svid-csi-bed ./hack/bed
	$(BIN)/svid-csi-bed

clean:
	rm -rf $(BIN)

## bench: the benchmarks on the test bed (each prints a table row per case)
bench: deps bin
	$(GO) test -count=1 -tags integration -run XXX -bench . -benchtime=1x -timeout 60m -p 1 $(INTEGRATION_PKGS)

## images: both images as OCI tarballs in bin/images (no Docker: internal/ociimage)
images: $(OURS)
	$(GO) run ./hack/images -bin $(BIN) -out $(BIN)/images -tag $(VERSION)
