//go:build heraldbench

// This file is not compiled on its own. The benchmark harness adds it to
// the dispatcher's main package at build time (go build -overlay, with the
// heraldbench build tag), so that the benchmarked binary is the product's
// cmd/dispatcher unchanged plus a pprof listener on loopback, used to take
// CPU and heap profiles of the dispatcher while it is under load, which
// also serves the dispatcher's Prometheus metrics without authentication
// (/metrics), so the harness can read them without a ServiceAccount. The
// listener starts only when HERALD_BENCH_PPROF_ADDR names a loopback
// address; the product binary never contains this file.
package main

import (
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

func init() {
	addr := os.Getenv("HERALD_BENCH_PPROF_ADDR")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		return
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return
	}
	// A finer heap sampling rate for the scenario that attributes the
	// memory of idle endpoints; it costs CPU, so only that scenario asks.
	if rate, err := strconv.Atoi(os.Getenv("HERALD_BENCH_MEMPROFILERATE")); err == nil && rate > 0 {
		runtime.MemProfileRate = rate
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
}
