package ingest

import (
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// Defaults of ServerOptions and of Options.BodyReadTimeout: bounds on how
// long a connection may hold the dispatcher's resources while sending
// nothing useful.
const (
	// DefaultReadHeaderTimeout bounds reading a request's headers, from the
	// first byte (or, on a new connection, from the accept). Publishers in
	// the cluster send theirs in one write; a client trickling them byte by
	// byte (slowloris) is disconnected.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultBodyReadTimeout bounds reading a request's body once the
	// handler starts to (after authentication): 1 MiB in 10s is 100 KiB/s,
	// far below any in-cluster link, so only a stalling client is cut off
	// (408), and it holds a request slot no longer than this.
	DefaultBodyReadTimeout = 10 * time.Second
	// DefaultIdleTimeout is how long a keep-alive connection may wait for
	// its next request. It is longer than the 90s after which Go's (and most)
	// HTTP clients close idle connections themselves, so a client never
	// sends a POST on a connection the server is closing.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxConnections bounds the connections served at once; more
	// wait in the kernel's accept queue. An idle connection costs about
	// 20 KiB (goroutine, read and write buffers), so 1024 bound that memory
	// to about 20 MiB; the benchmark's publisher uses 16.
	DefaultMaxConnections = 1024
	// maxHeaderBytes bounds a request's headers (Go's default is 1 MiB per
	// connection). A bearer token is about 1 KiB; binary-mode attributes
	// are short.
	maxHeaderBytes = 64 << 10
	// readTimeoutBackstop bounds reading a whole request until the handler
	// sets its own body deadline: headers, then authentication.
	readTimeoutBackstop = time.Minute
)

// ServerOptions configure the ingest HTTP server. Zero fields take the
// defaults.
type ServerOptions struct {
	// ReadHeaderTimeout bounds reading a request's headers; default 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout bounds how long a keep-alive connection waits for the
	// next request; default 2m.
	IdleTimeout time.Duration
	// MaxConnections bounds the connections served at once; default 1024.
	MaxConnections int
	// ConnState, when set, is the server's ConnState hook (tests).
	ConnState func(net.Conn, http.ConnState)
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	return o
}

// NewServer returns the HTTP server for h with the header, read and idle
// deadlines of opts. The per-request body deadline is the Handler's
// (Options.BodyReadTimeout).
func NewServer(h http.Handler, opts ServerOptions) *http.Server {
	opts = opts.withDefaults()
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       max(readTimeoutBackstop, opts.ReadHeaderTimeout),
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         opts.ConnState,
	}
}

// LimitConnections returns a listener that accepts at most opts'
// MaxConnections connections at once: the next is accepted when one of
// those closes.
func LimitConnections(l net.Listener, opts ServerOptions) net.Listener {
	return netutil.LimitListener(l, opts.withDefaults().MaxConnections)
}
