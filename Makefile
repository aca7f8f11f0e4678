# Herald's Makefile. `make help` lists the targets by section.

# Tools are pinned here and built into bin/ (git-ignored) from the Go module
# proxy; nothing is downloaded from anywhere else.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
HELM_VERSION ?= v3.22.0
PROMETHEUS_VERSION ?= v0.316.0

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
# openapi-gen at the kube-openapi version go.mod pins (the delivery API's
# OpenAPI definitions must match the apiserver library that serves them).
KUBE_OPENAPI_VERSION ?= $(shell go list -m -f '{{.Version}}' k8s.io/kube-openapi)
OPENAPI_GEN ?= $(LOCALBIN)/openapi-gen-$(KUBE_OPENAPI_VERSION)
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)
PROMTOOL ?= $(LOCALBIN)/promtool-$(PROMETHEUS_VERSION)
# etcd, kube-apiserver and kubectl for envtest, the e2e test and the demo.
ENVTEST_ASSETS ?= $(LOCALBIN)/k8s
KUBECTL ?= $(ENVTEST_ASSETS)/kubectl

IMG ?= ghcr.io/herald-dev/herald:latest
CONTAINER_TOOL ?= docker
# Platforms of the multi-arch image (docker-buildx).
PLATFORMS ?= linux/amd64,linux/arm64
# What the binaries' --version prints.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_TEST_FLAGS ?= -race -count=1 -timeout=30m

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate CRDs and RBAC (manager and dispatcher) from the API types and kubebuilder markers; copy them into the chart.
	$(CONTROLLER_GEN) rbac:roleName=herald-manager crd paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=herald-dispatcher paths="./dispatcher/rbac/..." \
		output:rbac:artifacts:config=config/rbac/dispatcher
	@hack/sync-chart-files.sh

.PHONY: generate
generate: controller-gen openapi-gen ## Generate DeepCopy methods and the delivery API's OpenAPI definitions.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."
	$(OPENAPI_GEN) --output-file zz_generated.openapi.go --output-dir dispatcher/deliveryapi/openapi \
		--output-pkg github.com/herald-dev/herald/dispatcher/deliveryapi/openapi \
		--go-header-file hack/boilerplate.go.txt --report-filename /dev/null \
		github.com/herald-dev/herald/api/delivery/v1alpha1 k8s.io/apimachinery/pkg/apis/meta/v1 \
		k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version

.PHONY: verify-generated
verify-generated: ## Fail when committed CRDs, RBAC or deepcopy are stale (they are regenerated in place).
	@hack/verify-generated.sh

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -l -w $$(git ls-files '*.go' | grep -v '^hack/tools/')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: golangci-lint ## Run the pinned golangci-lint.
	@# Download the modules first: on a fresh machine, loading the packages
	@# would otherwise spend the linter's timeout on downloads.
	go mod download
	$(GOLANGCI_LINT) run ./...

.PHONY: envtest
envtest: ## Put etcd, kube-apiserver and kubectl into bin/k8s, once: the checksum-pinned setup-envtest download, else a source build (about 6 minutes).
	@ENVTEST_ASSETS_DIR=$(ENVTEST_ASSETS) hack/envtest.sh

.PHONY: test
test: verify-generated vet envtest helm promtool build ## Run all tests with the race detector, envtest, chart and alert-rule tests included.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) HELM=$(HELM) PROMTOOL=$(PROMTOOL) go test $(GO_TEST_FLAGS) ./...

.PHONY: test-chart
test-chart: envtest helm promtool ## Run only the Helm chart and monitoring-kit tests.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) HELM=$(HELM) PROMTOOL=$(PROMTOOL) go test $(GO_TEST_FLAGS) ./test/chart/...

STRESS_RUNS ?= 5

.PHONY: test-stress
test-stress: envtest helm promtool ## Run all tests STRESS_RUNS times (default 5); report how often each failed (JSON in bin/test-stress/).
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) HELM=$(HELM) PROMTOOL=$(PROMTOOL) STRESS_RUNS=$(STRESS_RUNS) GO_TEST_FLAGS="$(GO_TEST_FLAGS)" hack/test-stress.sh

SOAK_DURATION ?= 10m

.PHONY: soak
soak: envtest ## Chaos soak for SOAK_DURATION (10m): random kills, restarts, edits, rotations while publishing; prints the ledger.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) HERALD_SOAK=$(SOAK_DURATION) go test -count=1 -timeout=90m -v -run '^TestChaosSoak$$' ./test/e2e/

##@ Build

.PHONY: build
build: ## Build the manager, the dispatcher and the kubectl-herald plugin into bin/, stamped with VERSION (git describe).
	CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(LOCALBIN)/ ./cmd/manager ./cmd/dispatcher ./cmd/kubectl-herald

.PHONY: run
run: manifests generate ## Run the manager against the cluster in ~/.kube/config (or the KUBECONFIG file).
	go run ./cmd/manager --manage-dispatcher=false --metrics-secure=false --metrics-bind-address=:8080

.PHONY: install
install: ## Install the CRDs into the cluster in ~/.kube/config.
	$(KUBECTL) apply --server-side -f config/crd/bases

.PHONY: docker-build
docker-build: ## Build the container image for this machine's platform (needs a Docker engine).
	$(CONTAINER_TOOL) build --build-arg VERSION=$(VERSION) -t $(IMG) .

# A multi-platform build needs a BuildKit builder of the docker-container
# driver; it is created once and kept, with its cache, as herald-builder.
.PHONY: docker-buildx
docker-buildx: ## Build the image for PLATFORMS (linux/amd64,linux/arm64) and push it to IMG (needs Docker with buildx).
	$(CONTAINER_TOOL) buildx inspect herald-builder >/dev/null 2>&1 || \
		$(CONTAINER_TOOL) buildx create --name herald-builder --driver docker-container
	$(CONTAINER_TOOL) buildx build --builder herald-builder --platform $(PLATFORMS) \
		--build-arg VERSION=$(VERSION) --tag $(IMG) --push .

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Build the pinned controller-gen into bin/.
$(CONTROLLER_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	@mv $(LOCALBIN)/controller-gen $@

.PHONY: openapi-gen
openapi-gen: $(OPENAPI_GEN) ## Build the pinned openapi-gen into bin/.
$(OPENAPI_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install k8s.io/kube-openapi/cmd/openapi-gen@$(KUBE_OPENAPI_VERSION)
	@mv $(LOCALBIN)/openapi-gen $@

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Build the pinned golangci-lint into bin/.
$(GOLANGCI_LINT):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mv $(LOCALBIN)/golangci-lint $@

.PHONY: helm
helm: $(HELM) ## Build the pinned helm into bin/.
# Stamped as helm's own Makefile does: without the Kubernetes version, helm
# template assumes v1.20 and refuses the chart's kubeVersion.
HELM_LDFLAGS = -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37 \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37
$(HELM):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@mv $(LOCALBIN)/helm $@

.PHONY: promtool
# remove_all_sd leaves out the service-discovery plugins (cloud SDKs), which
# rule checks and rule unit tests do not use: a much smaller build.
promtool: $(PROMTOOL) ## Build the pinned promtool (Prometheus rule checks and unit tests) into bin/.
$(PROMTOOL):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)
	@mv $(LOCALBIN)/promtool $@

##@ Demo

.PHONY: demo
demo: envtest ## Run Herald end to end on a local control plane (DEMO_KEEP=1 keeps it running).
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go run ./hack/demo

##@ Benchmarks

BENCH_OUT ?= bench-results
BENCH_COUNT ?= 6
BENCH_MICRO_PKGS ?= ./dispatcher/signature ./dispatcher/ingest ./dispatcher/router ./test/bench

.PHONY: bench
bench: envtest ## Run the benchmark harness on a local control plane (BENCH_SCENARIOS=fanout1,… subset, BENCH_QUICK=1 smoke run); results in bench-results/.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go run ./test/bench/cmd/bench -out $(BENCH_OUT)

.PHONY: bench-micro
bench-micro: envtest ## Run the micro-benchmarks (signing, decoding, matching, fan-out path) 6 times into bench-results/micro.txt, for benchstat.
	@mkdir -p $(BENCH_OUT)
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) $(BENCH_MICRO_PKGS) | tee $(BENCH_OUT)/micro.txt

##@ Fuzzing

FUZZ_TIME ?= 30s
FUZZ_MATCH ?= .

.PHONY: fuzz
fuzz: envtest ## Run every Go fuzz target for FUZZ_TIME (default 30s) each and summarise; FUZZ_MATCH=<regexp> selects targets.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) FUZZ_TIME=$(FUZZ_TIME) FUZZ_MATCH='$(FUZZ_MATCH)' hack/fuzz.sh
