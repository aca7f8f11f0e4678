# One image holds both binaries: /manager (control plane) and /dispatcher
# (data plane). Static, CGO-free, on distroless nonroot, for linux/amd64 and
# linux/arm64 (`make docker-buildx`).
#
# The build stage runs on the build machine's own platform and cross-compiles
# for the target one (BuildKit sets TARGETOS and TARGETARCH), so an arm64
# image builds at native speed on amd64, without emulation.
FROM --platform=$BUILDPLATFORM golang:1.26 AS builder
ARG TARGETOS
ARG TARGETARCH
# What `--version` prints; the Makefile passes `git describe`.
ARG VERSION=dev
WORKDIR /workspace

COPY go.mod go.sum ./
RUN go mod download

COPY api/ api/
COPY controllers/ controllers/
COPY dispatcher/ dispatcher/
COPY internal/ internal/
COPY cmd/ cmd/

# -trimpath and no VCS or build-machine data: the same sources, Go version and
# VERSION give the same binaries.
ENV CGO_ENABLED=0
RUN GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" \
    -o /out/ ./cmd/manager ./cmd/dispatcher

FROM gcr.io/distroless/static:nonroot
WORKDIR /
COPY --from=builder /out/ /
USER 65532:65532
ENTRYPOINT ["/manager"]
