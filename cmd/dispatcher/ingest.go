package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/herald-dev/herald/dispatcher/ingest"
)

// ingestTLSFiles are the --ingest-tls-* and --ingest-insecure-http flags.
type ingestTLSFiles struct {
	certFile, keyFile string
	insecureHTTP      bool
}

// defaultIngestTLSDir is where the manager mounts Secret
// herald-dispatcher-tls in the dispatcher's pod.
const defaultIngestTLSDir = "/etc/herald/ingest-tls/"

func (f *ingestTLSFiles) bindFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.certFile, "ingest-tls-cert-file", defaultIngestTLSDir+"tls.crt",
		"PEM certificate (chain) ingest serves HTTPS with; re-read when it changes.")
	fs.StringVar(&f.keyFile, "ingest-tls-key-file", defaultIngestTLSDir+"tls.key",
		"PEM private key of --ingest-tls-cert-file; re-read when it changes.")
	fs.BoolVar(&f.insecureHTTP, "ingest-insecure-http", false,
		"Serve ingest over plain HTTP instead of HTTPS. Only where a service mesh already encrypts "+
			"traffic between pods: publishers' tokens and events cross the network.")
}

// watcher loads the certificate and returns a watcher that keeps it
// current, or nil with --ingest-insecure-http.
func (f *ingestTLSFiles) watcher() (*certwatcher.CertWatcher, error) {
	if f.insecureHTTP {
		return nil, nil
	}
	cw, err := certwatcher.New(f.certFile, f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("ingest serves HTTPS: load --ingest-tls-cert-file and --ingest-tls-key-file "+
			"(or set --ingest-insecure-http where a service mesh encrypts): %w", err)
	}
	return cw, nil
}

// ingestTLSConfig serves certs' current certificate. HTTP/1.1 only, as
// the metrics endpoint: ingest's back-pressure bounds requests, and HTTP/2
// brings its rapid-reset class of attacks (CVE-2023-44487).
func ingestTLSConfig(certs *certwatcher.CertWatcher) *tls.Config {
	return &tls.Config{
		GetCertificate: certs.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}
}

// serveIngest serves the ingest handler on addr until ctx ends, over HTTPS
// with certs (plain HTTP when certs is nil), then lets requests in progress
// finish: an event is acknowledged (202) only after JetStream stored it, so
// a request cut short is retried by its publisher. The server's deadlines
// and connection limit (opts) keep slow and idle clients from holding
// request slots; connections are counted before the TLS handshake, so a
// client that never completes one holds a slot only until the header
// deadline.
func serveIngest(ctx context.Context, addr string, certs *certwatcher.CertWatcher, h http.Handler, opts ingest.ServerOptions) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("ingest listen on %s: %w", addr, err)
	}
	l = ingest.LimitConnections(l, opts)
	if certs != nil {
		// A plain HTTP request to this port is answered 400 ("Client sent
		// an HTTP request to an HTTPS server") and never reaches h.
		l = tls.NewListener(l, ingestTLSConfig(certs))
	}
	srv := ingest.NewServer(h, opts)
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(l) }()
	select {
	case err := <-errCh:
		return fmt.Errorf("ingest server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
