# One image holds both binaries: /manager (control plane) and /dispatcher
# (data plane). Static, CGO-free, on distroless nonroot.
FROM golang:1.26 AS builder
ARG TARGETOS
ARG TARGETARCH
WORKDIR /workspace

COPY go.mod go.sum ./
RUN go mod download

COPY api/ api/
COPY controllers/ controllers/
COPY dispatcher/ dispatcher/
COPY internal/ internal/
COPY cmd/ cmd/

ENV CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH}
RUN go build -trimpath -ldflags="-s -w" -o /out/manager ./cmd/manager && \
    go build -trimpath -ldflags="-s -w" -o /out/dispatcher ./cmd/dispatcher

FROM gcr.io/distroless/static:nonroot
WORKDIR /
COPY --from=builder /out/ /
USER 65532:65532
ENTRYPOINT ["/manager"]
